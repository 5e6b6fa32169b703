"""Training tests run single-threaded (restored after each test): see the one_thread fixture."""
import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield
