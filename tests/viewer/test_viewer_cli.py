"""`tokencompose view DIR`: argument parsing and the handler (uvicorn.run replaced by a stub)."""
from __future__ import annotations

import argparse

import uvicorn
from fastapi.testclient import TestClient

from tokencompose.viewer.app import add_cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tokencompose")
    add_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_defaults_listen_on_loopback(tmp_path):
    args = parse("view", str(tmp_path))
    assert (args.dir, args.host, args.port) == (tmp_path, "127.0.0.1", 8765)
    args = parse("view", str(tmp_path), "--host", "0.0.0.0", "--port", "9000")
    assert (args.host, args.port) == ("0.0.0.0", 9000)


def test_handler_serves_the_shard_set(demo_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    args = parse("view", str(demo_dir), "--port", "8799")
    assert args.handler(args) == 0
    app, kwargs = calls[0]
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8799
    assert app.state.catalog.finished.wait(10)
    # bound to loopback: only loopback Host headers are answered (DNS rebinding)
    assert TestClient(app, base_url="http://127.0.0.1:8799").get("/sample/000000000632").status_code == 200
    assert TestClient(app, base_url="http://rebound.example:8799").get("/").status_code == 400


def test_handler_refuses_a_missing_or_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("must not serve")))
    args = parse("view", str(tmp_path / "nope"))
    assert args.handler(args) == 2 and "not a folder" in capsys.readouterr().err
    args = parse("view", str(tmp_path))
    assert args.handler(args) == 2 and "holds no shards" in capsys.readouterr().err


def test_other_hosts_warn(demo_dir, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    args = parse("view", str(demo_dir), "--host", "0.0.0.0")
    assert args.handler(args) == 0 and calls[0]["host"] == "0.0.0.0"
    assert "warning" in capsys.readouterr().err


def test_command_runs_a_real_server(demo_dir):
    """`python -m tokencompose.viewer.app DIR --port P` (what `tokencompose view` runs) answers over HTTP."""
    import subprocess
    import sys
    import time
    import urllib.request

    from viewer_support import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tokencompose.viewer.app", str(demo_dir), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/dataset", timeout=5) as response:
                    body = response.read().decode()
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stdout.read().decode() if server.stdout else "no output")
                time.sleep(0.2)
        assert "Rejected images" in body
    finally:
        server.terminate()
        server.wait(timeout=10)
