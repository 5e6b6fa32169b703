import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API on a temporary database for the whole session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield
