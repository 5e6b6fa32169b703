"""Fixtures for the viewer tests: the demo dataset built once, damaged copies, a live uvicorn server."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.support.viewer_support import LiveServer, build_demo  # noqa: E402


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The bundled sample built as shards (one shard, eight samples); never modified by tests."""
    return build_demo(tmp_path_factory.mktemp("demo") / "demo-shards")


@pytest.fixture
def demo_copy(demo_dir, tmp_path) -> Path:
    """A private copy of the demo dataset for a test to damage."""
    return Path(shutil.copytree(demo_dir, tmp_path / "copy"))


@pytest.fixture(scope="session")
def demo_app(demo_dir):
    from tokencompose.viewer.app import create_app

    return create_app(demo_dir)


@pytest.fixture(scope="session")
def client(demo_app):
    from fastapi.testclient import TestClient

    with TestClient(demo_app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def live_server(demo_app):
    with LiveServer(demo_app) as server:
        yield server
