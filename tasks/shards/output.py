"""The output folder of a build: one writer at a time, what it may hold, and the shards on it.

``output_lock`` lets one build write a folder at a time; ``check_output`` refuses to mix two
configurations in one folder and ``start_output`` marks it with this run's configuration before the
first shard; ``shard_is_intact`` tells whether a shard is on disk as its summary records.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tokencompose import __version__
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import (BUILD_CONFIG_FILE, CARD_FILE, INCOMPLETE_FILE, INDEX_DIR, LOCK_FILE,
                                          MANIFEST_FILE, REJECTS_FILE, SHARDS_DIR, SIZES_FILE, STATS_FILE,
                                          ShardSummary, canonical_json, write_atomic)
from tokencompose.tasks.shards.shard_io import file_sha256


class ConfigurationError(ValueError):
    """The run cannot start: what is wrong and where, for every problem found."""


class OutputBusy(ConfigurationError):
    """Another build holds the output folder's lock."""


# ---- one writer per output folder ------------------------------------------------------------------


def read_lock(out_dir: Path) -> dict[str, Any] | None:
    """Who holds (or last held) the output folder's lock: pid, host, started; None if nobody wrote one."""
    try:
        data = json.loads((Path(out_dir) / LOCK_FILE).read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextmanager
def output_lock(out_dir: Path) -> Iterator[Path]:
    """Hold the output folder for this process: one build writes a folder at a time.

    The lock is ``OUT/.tokencompose.lock``, taken with ``flock`` (atomic; the kernel drops it when
    the holding process dies, so a killed run never blocks the next one) and holding the holder's
    pid, host and start time for the message another run gets. A second run does not wait: it
    raises :class:`OutputBusy` (the CLI exits 2). A file left by a dead run is simply taken over.
    When the folder did not exist and the run stops with a :class:`ConfigurationError`, the folder
    is removed again (a wrong configuration writes nothing).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigurationError(f"output.out_dir {out_dir} exists and is not a folder")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fd = _take_lock(out_dir, path)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)  # details a killed run left here are stale: ours replace them
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        yield path
    except ConfigurationError:
        if created and [p.name for p in out_dir.iterdir()] == [LOCK_FILE]:
            path.unlink()
            out_dir.rmdir()
        raise
    finally:
        try:
            if path.exists():
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock


def _take_lock(out_dir: Path, path: Path) -> int:
    """The open, flock-ed lock file (retried when the file was replaced while we waited for it)."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(_busy_message(out_dir)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the file we locked was removed (a failed first run cleaning up): lock the new one
    raise OutputBusy(f"cannot take the lock {path}: it keeps being replaced")


def _busy_message(out_dir: Path) -> str:
    holder = read_lock(out_dir) or {}
    who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
           if holder else "a process that has not yet written its details")
    return f"{out_dir} is being written by another build ({who}); wait for it to finish, or choose another output.out_dir"


def busy_problem(out_dir: Path) -> str | None:
    """What a build would be told while another process holds the folder's lock, found without taking the
    lock (a preflight, before this process holds it); None when nobody holds it. A folder another build is
    writing holds that build's partial files: checked first, its contents say nothing about the dataset."""
    try:
        fd = os.open(Path(out_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _busy_message(Path(out_dir))
    finally:
        os.close(fd)  # closing drops the shared lock this probe may have taken
    return None


# ---- what the folder holds --------------------------------------------------------------------------


def check_output(config: BuildConfig, config_hash: str) -> None:
    """Refuse to mix two configurations in one output folder (unless overwrite is asked for)."""
    out = config.output.out_dir
    previous = out / BUILD_CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"output.out_dir {out} exists and is not a folder")
    if previous.is_file():
        try:
            recorded = json.loads(previous.read_text())
            old_hash = recorded["config_hash"]
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigurationError(f"{previous} is unreadable ({error}); remove it or choose another out_dir") from None
        if old_hash != config_hash and not config.output.overwrite:
            changed = setting_changes(recorded.get("content"), config.content_dict())
            raise ConfigurationError(
                f"{out} holds a dataset built with other settings ({'; '.join(changed) or f'configuration {old_hash}'}"
                f"): build into another folder (--out), or add --overwrite (output.overwrite) to replace it")
    elif out.is_dir() and any(p.name not in (".cache", LOCK_FILE) for p in out.iterdir()):
        raise ConfigurationError(f"output.out_dir {out} is not empty and holds no tokencompose dataset")


def setting_changes(before: object, now: dict, prefix: str = "") -> list[str]:
    """``section.field: old -> new`` for each setting that decides the bytes and differs (nested sections walked)."""
    if not isinstance(before, dict):
        return []
    changes = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += setting_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {json.dumps(old)} -> {json.dumps(new)}")
    return changes


def clear_previous(config: BuildConfig) -> None:
    """With overwrite: remove the files of a dataset of another configuration (and stale temporaries)."""
    out = config.output.out_dir
    for folder in (SHARDS_DIR, INDEX_DIR):
        for path in (out / folder).glob("*") if (out / folder).is_dir() else ():
            if path.is_file():
                path.unlink()
    for name in (MANIFEST_FILE, STATS_FILE, SIZES_FILE, REJECTS_FILE, CARD_FILE, INCOMPLETE_FILE):
        (out / name).unlink(missing_ok=True)


def start_output(config: BuildConfig, config_hash: str) -> None:
    """Mark the output folder with this configuration before the first shard is written."""
    out = config.output.out_dir
    previous = out / BUILD_CONFIG_FILE
    if previous.is_file() and json.loads(previous.read_text())["config_hash"] != config_hash:
        clear_previous(config)
    # Temporaries of a run that died (this run holds the output lock, so no other run owns them).
    for folder in (out, out / SHARDS_DIR, out / INDEX_DIR):
        for stale in folder.glob(".*.tmp") if folder.is_dir() else ():
            if stale.is_file():
                stale.unlink()
    record = {"config_hash": config_hash, "tokencompose": __version__,
              "config": config.model_dump(mode="json"), "content": config.content_dict()}
    write_atomic(previous, canonical_json(record))


def index_path(config: BuildConfig, shard: str) -> Path:
    """Where the index of ``shard`` (a shard file name) is."""
    return config.output.out_dir / INDEX_DIR / shard.replace(".tar", ".json")


def shard_is_intact(config: BuildConfig, summary: ShardSummary) -> bool:
    """Whether the shard a (cached) summary describes is on disk with the recorded hash (read in chunks)."""
    path = config.output.out_dir / SHARDS_DIR / summary.shard
    index = index_path(config, summary.shard)
    if not path.is_file() or not index.is_file() or path.stat().st_size != summary.bytes:
        return False
    return file_sha256(path) == summary.sha256
