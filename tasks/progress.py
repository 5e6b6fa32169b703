"""Progress of long work: rate and ETA as a tqdm bar on a terminal, as periodic log lines elsewhere.

One :class:`Progress` per long step (training steps, generated or detected images, denoising steps).
A bar is drawn only when stderr is a terminal and the process is neither a Dask or Ray worker (their
output is collected into logs a bar would garble) nor one of several ranks; otherwise a line goes to the log when the step
starts, every ``every_s`` seconds and when it ends. Inside a Prefect flow or task run the lines go to
the run's logger, so they are in the run's logs. ``TOKENCOMPOSE_QUIET=1`` (the commands' ``--quiet``,
inherited by worker processes) silences both. :func:`timed` frames a slow single call (loading big
weights) with a line before and one after with its duration.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

QUIET_ENV = "TOKENCOMPOSE_QUIET"
DEFAULT_EVERY_S = 30.0

log = logging.getLogger("tokencompose.progress")


def set_quiet(quiet: bool = True) -> None:
    """Silence (or not) progress bars and lines in this process and the processes it starts."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def is_quiet() -> bool:
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def in_worker() -> bool:
    """True inside a Dask worker or a Ray worker process (not a Ray driver)."""
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker

            get_worker()
            return True
        except (ValueError, ImportError):
            pass
    if "ray" in sys.modules:
        try:
            import ray

            return bool(ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE)
        except (AttributeError, ImportError):
            return False
    return False


def run_logger(default: logging.Logger | logging.LoggerAdapter | None = None):
    """The Prefect run's logger inside a flow or task run, else ``default`` (this module's logger)."""
    if "prefect" in sys.modules:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
            from prefect import get_run_logger

            return get_run_logger()
    return default or log


def several_processes() -> bool:
    """One of several ranks (torchrun / accelerate launch): their bars would overwrite each other."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def bar_wanted(stream=None) -> bool:
    stream = stream if stream is not None else sys.stderr
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    return not is_quiet() and terminal and not in_worker() and not several_processes()


def duration(seconds: float) -> str:
    """``1:02:03``, ``2:03`` or ``4.2 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """``label``: ``done``/``total`` ``unit``s with rate and ETA; use as a context manager.

    ``initial``: units done before this process started (a resumed run): they count toward the
    total but not the rate. ``logger``: default :func:`run_logger`. ``bar``: force (True/False) or
    decide from the terminal (None).
    """

    def __init__(self, label: str, total: int | None, unit: str = "it", *, initial: int = 0,
                 every_s: float = DEFAULT_EVERY_S, logger=None, bar: bool | None = None):
        if several_processes():
            label = f"{label} (rank {os.environ.get('RANK', '?')})"
        self.label, self.total, self.unit = label, total, unit
        self.done = self.initial = initial
        self._skipped = 0
        self.every_s = every_s
        self.quiet = is_quiet()
        self.logger = logger or run_logger()
        self.started = self.last_line = time.monotonic()
        self.postfix: str = ""
        self._bar: Any = None
        self._redirect: Any = None
        if not self.quiet and (bar if bar is not None else bar_wanted()):
            from tqdm.auto import tqdm  # type: ignore[import-untyped]
            from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(total=total, initial=initial, unit=unit, desc=label, file=sys.stderr,
                             dynamic_ncols=True, leave=True)
            self._redirect = logging_redirect_tqdm()  # the root logger's console lines print above the bar
            self._redirect.__enter__()
        elif not self.quiet:
            self.logger.info("%s: %s", label, self._counts())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(failed=kind is not None)

    def rate(self) -> float:
        """Units per second since the start (units done before it excluded)."""
        return (self.done - self.initial) / max(time.monotonic() - self.started, 1e-9)

    def eta(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate

    def _counts(self) -> str:
        return f"{self.done}/{self.total} {self.unit}" if self.total is not None else f"{self.done} {self.unit}"

    def line(self) -> str:
        """``12/100 step, 0.53 step/s, ETA 2:46`` (and the postfix)."""
        eta = self.eta()
        text = f"{self._counts()}, {self.rate():.3g} {self.unit}/s"
        if eta is not None:
            text += f", ETA {duration(eta)}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def advance(self, n: int = 1, postfix: str | None = None) -> None:
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every_s and (self.total is None or self.done < self.total):
            self.last_line = now
            self.logger.info("%s: %s", self.label, self.line())

    def set_total(self, total: int) -> None:
        """The total once it is known better (a scheduler's real number of timesteps)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total - self._skipped
            self._bar.refresh()

    def skip(self, n: int) -> None:
        """``n`` units already done (a shard intact on disk): toward the total, not the rate."""
        self.done += n
        self.initial += n
        self._skipped += n
        if self._bar is not None and self._bar.total is not None:  # the bar shows this run's work
            self._bar.total -= n
            self._bar.refresh()

    def close(self, failed: bool = False) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            if self._redirect is not None:
                self._redirect.__exit__(None, None, None)
        elif self.quiet:
            return
        elapsed = time.monotonic() - self.started
        outcome = "stopped at" if failed else "done,"
        self.logger.info("%s: %s %s in %s (%.3g %s/s)", self.label, outcome, self._counts(), duration(elapsed),
                         self.rate(), self.unit)
        self.quiet = True  # closed: nothing more


@contextmanager
def timed(activity: str, logger=None) -> Iterator[None]:
    """A line before a slow call (``<activity> ...``) and one after with its duration (none when quiet)."""
    if is_quiet():
        yield
        return
    logger = logger or run_logger()
    logger.info("%s ...", activity)
    started = time.monotonic()
    yield
    logger.info("%s: done in %s", activity, duration(time.monotonic() - started))
