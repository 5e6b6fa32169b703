"""Helpers shared by the viewer tests (a module of its own: test modules cannot import conftest safely)."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

DEMO_KEYS = ("000000000632", "000000000139", "000000000885", "000000000285", "000000000776", "000000000724",
             "000000000785", "000000000872")


def build_demo(out: Path, **output) -> Path:
    from tokencompose.data import demo_settings
    from tokencompose.schemas.config import BuildConfig
    from tokencompose.tasks.shards.dataset import build_directly

    settings = demo_settings()
    settings["output"] = {"out_dir": str(out), **output}
    build_directly(BuildConfig.model_validate(settings))
    return out


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
