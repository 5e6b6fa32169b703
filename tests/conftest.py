"""Offline settings for every test, and the fixtures that tests of several folders share. None of them
imports torch when collected: the training fixtures (tests/support/training_fixtures.py) load it when a test
uses them; fixtures of one folder live in that folder's conftest."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make check` and `make test` run two pytest-xdist workers on the two cores: one intra-op thread in each
    # (and in the programs they start), or the thread pools oversubscribe the machine
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import sys

import pytest

from tests.support.testkit import SourceBuilder, demo_config

pytest_plugins = [
    "tests.support.scheduling",
    "tests.support.training_fixtures",
    "tests.support.evaluation_fixtures",
    "pytester",
]


@pytest.fixture
def make_demo_config(tmp_path):
    def make(name: str = "out", **overrides):
        return demo_config(tmp_path / name, **overrides)
    return make


@pytest.fixture
def source_builder(tmp_path) -> SourceBuilder:
    return SourceBuilder(tmp_path / "source")


@pytest.fixture(autouse=True)
def _progress_not_silenced(monkeypatch):
    """`--quiet` silences progress through TOKENCOMPOSE_QUIET, which a CLI test run in-process leaves set
    in the worker's environment: every test starts without it."""
    monkeypatch.delenv("TOKENCOMPOSE_QUIET", raising=False)


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """Each Trainer builds its own Accelerator; accelerate keeps process-wide state between them (reset only
    once a test has loaded accelerate: importing it would load torch)."""
    yield
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(True)
        state.GradientState._reset_state()
        state.PartialState._reset_state()


@pytest.fixture
def one_thread():
    """The tiny models are far too small to gain from intra-op threads (on a shared 2-core machine the
    pool's spinning makes each step several times slower); the thread count is restored afterwards so
    no other test sees it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API on a temporary database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
