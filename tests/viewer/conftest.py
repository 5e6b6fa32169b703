"""Fixtures for the viewer tests: the demo dataset built once, damaged copies, a live uvicorn server."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEMO_KEYS = ("000000000632", "000000000139", "000000000885", "000000000285", "000000000776", "000000000785",
             "000000000872")


def build_demo(out: Path, **output) -> Path:
    from tokencompose.data import demo_settings
    from tokencompose.schemas.config import BuildConfig
    from tokencompose.tasks.dataset import build_directly

    settings = demo_settings()
    settings["output"] = {"out_dir": str(out), **output}
    build_directly(BuildConfig.model_validate(settings))
    return out


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The bundled sample built as shards (one shard, seven samples); never modified by tests."""
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The real viewer under uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, app, **config):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    **config))
        self.thread = threading.Thread(target=self.server.run, name="viewer-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the viewer server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(demo_app):
    with LiveServer(demo_app) as server:
        yield server
