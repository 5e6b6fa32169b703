"""`prefect deployment run build-grounded-coco/local` against a real Prefect server on 127.0.0.1."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tokencompose.data import demo_settings
from tokencompose.schemas.reports import Manifest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: process exited with {process.returncode}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db"}
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    processes = [server]
    try:
        _wait(lambda: httpx.get(f"{env['PREFECT_API_URL']}/health").status_code == 200, 180, "the server", server)
        yield env, processes
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_deployment_run_builds_a_dataset(prefect_server, tmp_path):
    env, processes = prefect_server
    serve_log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen([str(BIN / "tokencompose"), "serve", "--out", str(tmp_path / "default-out")], env=env,
                             stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    processes.append(serve)
    url = f"{env['PREFECT_API_URL']}/deployments/name/build-grounded-coco/local"
    _wait(lambda: httpx.get(url).status_code == 200, 120, "the deployment", serve)

    out = tmp_path / "from-deployment"
    params = {"config": {**demo_settings(), "output": {"out_dir": str(out), "shard_size": 4}}}
    run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "build-grounded-coco/local",
                          "--params", json.dumps(params), "--watch", "--watch-timeout", "300"],
                         env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Completed" in run.stdout + run.stderr
    manifest = Manifest.model_validate_json((out / "manifest.json").read_bytes())
    assert manifest.samples == 7 and [s.name for s in manifest.shards] == ["shard-000000.tar", "shard-000001.tar"]
    serve_log.close()
