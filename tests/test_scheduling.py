"""The run order of test modules (tests/support/scheduling.py), in real inner pytest runs."""
from __future__ import annotations

import json

import pytest

PLUGIN = ("-p", "tests.support.scheduling")


@pytest.fixture(autouse=True)
def only_the_plugin_under_test(monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def make_modules(pytester):
    pytester.makepyfile(
        test_alpha="def test_a1(): pass\ndef test_a2(): pass\ndef test_a3(): pass\n",
        test_beta="def test_b1(): pass\n",
        test_gamma="import pytest\n@pytest.mark.slow\ndef test_g1(): pass\n",
    )
    pytester.makeini("[pytest]\nmarkers =\n    slow: long\n")


def collected_order(pytester, *args) -> list[str]:
    result = pytester.runpytest(*PLUGIN, "--collect-only", "-q", *args)
    return [line for line in result.outlines if "::" in line]


def test_longest_measured_module_first_and_modules_stay_together(pytester):
    make_modules(pytester)
    table = pytester.path / "durations.json"
    table.write_text(json.dumps({"test_alpha.py": 2.0, "test_beta.py": 300.0, "test_gamma.py": 0.5}))
    order = collected_order(pytester, f"--durations-file={table}")
    assert order == ["test_beta.py::test_b1", "test_alpha.py::test_a1", "test_alpha.py::test_a2",
                     "test_alpha.py::test_a3", "test_gamma.py::test_g1"]


def test_unmeasured_module_with_a_long_mark_goes_before_unmeasured_ones(pytester):
    make_modules(pytester)
    order = collected_order(pytester, f"--durations-file={pytester.path / 'absent.json'}")
    assert order[0] == "test_gamma.py::test_g1"
    assert order[1:] == ["test_alpha.py::test_a1", "test_alpha.py::test_a2", "test_alpha.py::test_a3",
                         "test_beta.py::test_b1"]


def test_recording_replaces_run_modules_keeps_others_and_drops_deleted_ones(pytester):
    make_modules(pytester)
    table = pytester.path / "durations.json"
    table.write_text(json.dumps({"test_alpha.py": 99.0, "test_gamma.py": 7.0, "test_deleted.py": 5.0}))
    result = pytester.runpytest(*PLUGIN, f"--durations-file={table}", "--record-durations",
                                "test_alpha.py", "test_beta.py")
    result.assert_outcomes(passed=4)
    recorded = json.loads(table.read_text())
    assert set(recorded) == {"test_alpha.py", "test_beta.py", "test_gamma.py"}
    assert recorded["test_alpha.py"] < 99.0 and recorded["test_gamma.py"] == 7.0
