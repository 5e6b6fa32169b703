"""`tokencompose view DIR`: argument parsing, and the command run as a real server process."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
from tests.support.viewer_support import free_port

from tokencompose.cli import parser_for


def parse(*argv: str) -> argparse.Namespace:
    return parser_for("view").parse_args(list(argv))


def test_defaults_listen_on_loopback(tmp_path):
    args = parse("view", str(tmp_path))
    assert (args.dir, args.host, args.port) == (tmp_path, "127.0.0.1", 8765)
    args = parse("view", str(tmp_path), "--host", "0.0.0.0", "--port", "9000")
    assert (args.host, args.port) == ("0.0.0.0", 9000)


@contextmanager
def running_viewer(*args: str):
    """`tokencompose view ARGS` as a real process; yields (base url, process) once it answers."""
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tokencompose", "view", *args, "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/dataset", timeout=5)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stdout.read().decode() if server.stdout else "no output")
                time.sleep(0.2)
        yield base, server
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_command_serves_on_loopback_and_refuses_other_host_names(demo_dir):
    with running_viewer(str(demo_dir)) as (base, _):
        assert httpx.get(f"{base}/sample/000000000632").status_code == 200
        assert "Rejected images" in httpx.get(f"{base}/dataset").text
        # bound to loopback: only loopback Host headers are answered (DNS rebinding)
        assert httpx.get(f"{base}/", headers={"Host": "rebound.example"}).status_code == 400


def test_command_refuses_a_missing_or_empty_folder(tmp_path):
    for folder, message in ((tmp_path / "nope", "not a folder"), (tmp_path, "holds no shards")):
        run = subprocess.run([sys.executable, "-m", "tokencompose", "view", str(folder)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and message in run.stderr


def test_other_hosts_warn(demo_dir):
    with running_viewer(str(demo_dir), "--host", "127.0.0.2") as (base, server):
        assert httpx.get(f"{base}/sample/000000000632").status_code == 200
        server.terminate()
        output = server.communicate(timeout=10)[0].decode()
    assert "warning" in output.lower()
