"""MultiGen tests run single-threaded like the training tests; their models and configuration come from
tests/support/evaluation_fixtures.py (shared with tests/tasks/evaluation)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield
