"""tasks/progress.py: periodic lines with rate and ETA where no bar is drawn, a tqdm bar on a terminal,
nothing when quiet, no bar inside a Dask worker."""
from __future__ import annotations

import io
import logging

import pytest

from tokencompose.tasks.progress import QUIET_ENV, Progress, bar_wanted, duration, in_worker, timed


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="tokencompose.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "tokencompose.progress"]


def test_lines_at_start_every_interval_and_end_with_rate_and_eta(lines, monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    with Progress("work", 4, "image", every_s=0.0, bar=False) as progress:
        progress.skip(1)            # already on disk: counts toward the total, not the rate
        progress.advance(1)
        progress.advance(1, postfix="loss 0.5")
        progress.advance(1)          # the last: the closing line says it
    found = lines()
    assert found[0] == "work: 0/4 image"
    assert found[1].startswith("work: 2/4 image, ") and "image/s, ETA " in found[1]
    assert found[2].startswith("work: 3/4 image, ") and found[2].endswith(", loss 0.5")
    assert found[3].startswith("work: done, 4/4 image in ") and len(found) == 4
    assert 0 < progress.rate() and progress.eta() == 0


def test_no_periodic_line_before_the_interval(lines, monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    with Progress("work", 100, every_s=3600, bar=False) as progress:
        for _ in range(50):
            progress.advance()
    assert len(lines()) == 2  # start and end only


def test_a_failure_is_reported_as_stopped(lines, monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    with pytest.raises(RuntimeError):
        with Progress("work", 3, bar=False) as progress:
            progress.advance()
            raise RuntimeError("boom")
    assert lines()[-1].startswith("work: stopped at 1/3 it in ")


def test_quiet_silences_lines_bars_and_timings(lines, monkeypatch):
    monkeypatch.setenv(QUIET_ENV, "1")
    with Progress("work", 2, every_s=0.0) as progress:
        progress.advance(2)
    with timed("loading nothing"):
        pass
    assert lines() == [] and not bar_wanted(Terminal())


def test_a_bar_on_a_terminal_and_none_elsewhere(monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert bar_wanted(Terminal()) and not bar_wanted(io.StringIO())
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not bar_wanted(Terminal())


def test_timed_says_how_long(lines, monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    with timed("loading the weights"):
        pass
    before, after = lines()
    assert before == "loading the weights ..." and after.startswith("loading the weights: done in ")


def test_durations():
    assert duration(4.24) == "4.2 s" and duration(123) == "2:03" and duration(3723) == "1:02:03"


def test_no_bar_inside_a_dask_worker():
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        assert client.submit(in_worker).result() is True
    assert in_worker() is False


def test_the_bar_is_tqdms_and_the_end_is_still_logged(lines, capsys, monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    with Progress("work", 3, "image", bar=True) as progress:
        progress.advance(3, postfix="loss 0.5")
    drawn = capsys.readouterr().err
    assert "work: 100%" in drawn and "3/3" in drawn and "loss 0.5" in drawn
    assert lines() == [lines()[-1]] and lines()[-1].startswith("work: done, 3/3 image in ")


def test_a_total_known_better_later_and_skipped_units_on_the_bar(lines, capsys, monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    with Progress("denoising", 3, "step", bar=False) as progress:
        progress.set_total(4)
        progress.advance(4)
    assert lines()[-1].startswith("denoising: done, 4/4 step in ")
    with Progress("generation", 10, "image", bar=True) as progress:
        progress.skip(4)
        progress.set_total(12)
        progress.advance(8)
    assert "8/8" in capsys.readouterr().err and lines()[-1].startswith("generation: done, 12/12 image in ")
