"""A pytest plugin that runs the longest test modules first, from the seconds each module took when last
measured (`make durations` writes tests/durations.json).

Under `pytest -n 2 --dist loadscope --no-loadscope-reorder` a module stays on one worker and the modules
are handed out in collection order: longest first (longest-processing-time order) lets the many short
modules fill the end, so neither worker is left alone with a long module while the other one idles.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

LONG_TEST_MARKS = ("server", "cluster", "paper_size", "browser", "slow")
UNMEASURED_MARKED_SECONDS = 60.0  # a module not measured yet with a long-test mark: among the long ones
UNMEASURED_SECONDS = 1.0


def module_of(nodeid: str) -> str:
    """The test module of a node id, as a path relative to the root folder."""
    return nodeid.split("::", 1)[0]


def read_durations(path: Path) -> dict[str, float]:
    """Module -> seconds; empty when the file is absent (every module unmeasured)."""
    if not path.exists():
        return {}
    table = json.loads(path.read_text())
    if not isinstance(table, dict):
        raise pytest.UsageError(f"{path}: expected a JSON object of test module -> seconds")
    return {str(module): float(seconds) for module, seconds in table.items()}


def expected_seconds(items: list[pytest.Item], measured: dict[str, float]) -> dict[str, float]:
    """Each collected module's expected seconds: as measured, or a default by its tests' marks."""
    expected: dict[str, float] = {}
    for item in items:
        module = module_of(item.nodeid)
        if module in measured:
            expected[module] = measured[module]
        else:
            marked = any(item.get_closest_marker(mark) for mark in LONG_TEST_MARKS)
            default = UNMEASURED_MARKED_SECONDS if marked else UNMEASURED_SECONDS
            expected[module] = max(expected.get(module, 0.0), default)
    return expected


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("scheduling", "order of test modules")
    group.addoption("--durations-file", metavar="PATH", default=None,
                    help="seconds per test module, longest run first (default: tests/durations.json)")
    group.addoption("--record-durations", action="store_true", default=False,
                    help="write this run's seconds per module into the durations file")


def durations_path(config: pytest.Config) -> Path:
    given = config.getoption("--durations-file")
    return Path(given) if given else Path(str(config.rootpath)) / "tests" / "durations.json"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cost = expected_seconds(items, read_durations(durations_path(config)))
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(module_of(item.nodeid), index)
    items.sort(key=lambda item: (-cost[module_of(item.nodeid)], first_seen[module_of(item.nodeid)]))


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--record-durations") and not hasattr(config, "workerinput"):
        # on the controlling process, which receives every worker's reports
        config.pluginmanager.register(DurationRecorder(durations_path(config)), "duration-recorder")


class DurationRecorder:
    """Adds up setup, call and teardown of every report by module; at the end of the session writes the
    table (sorted, rounded: a diff shows what changed). Modules of this run replace their figures; the
    others (a partial run) keep theirs unless their file is gone."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[module_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        root = Path(str(session.config.rootpath))
        table = {module: seconds for module, seconds in read_durations(self.path).items()
                 if (root / module).exists()}
        table.update({module: round(seconds, 1) for module, seconds in self.seconds.items()})
        self.path.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
