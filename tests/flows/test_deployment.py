"""Deployments against a real Prefect server on 127.0.0.1 with a temporary database: the README's
prefect.yaml + work pool + worker commands exactly as written, and `tokencompose serve`."""
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

from tests.support import prefect_processes
from tokencompose.data import demo_settings
from tokencompose.schemas.reports import Manifest

pytestmark = pytest.mark.server

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
README_PORT = "4200"
DEPLOYMENTS = ("build-grounded-coco/local", "train-tokencompose/local", "retrain-tokencompose/weekly",
               "build-grounded-coco-on-runner/dask")


def readme_deployment_commands() -> str:
    """The shell block between the deployment-commands markers of the README."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- deployment-commands")[1].split("<!-- end deployment-commands -->")[0]
    return block.split("```sh\n")[1].split("```")[0]


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _started_with(prefect_home: Path) -> list:
    """The live processes whose environment names ``prefect_home`` (the block's server, worker and runs:
    with job control on, they are in process groups of their own)."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("PREFECT_HOME") == str(prefect_home) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


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
    env = prefect_processes.server_env(tmp_path / "prefect-home", port)
    log = open(tmp_path / "server.log", "wb")
    server = prefect_processes.start_server(port, env, log)
    processes = [server]
    try:
        _wait(lambda: httpx.get(f"{env['PREFECT_API_URL']}/health").status_code == 200, 180, "the server", server)
        yield env, processes
    finally:
        prefect_processes.stop(processes)
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
    _a_failing_run_says_why_in_its_state(env, tmp_path)
    assert manifest.samples == 8 and [s.name for s in manifest.shards] == ["shard-000000.tar", "shard-000001.tar"]
    serve_log.close()


def test_readme_deployment_commands_work_as_written(tmp_path):
    """The block runs in a workspace that looks like the repository root (prefect.yaml, flows/, data/
    and .venv/); only the port is changed to a free one."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "prefect.yaml").write_bytes((REPO / "prefect.yaml").read_bytes())
    for name in ("flows", "data"):
        (workspace / name).symlink_to(REPO / name)
    (workspace / ".venv").symlink_to(BIN.parent)
    port = str(_free_port())
    commands = readme_deployment_commands()
    assert commands.count(README_PORT) == 2
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_UI_ENABLED": "false",
           "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)
    # SIGINT as in a terminal: a pytest-xdist worker ignores it, and a shell started with SIGINT ignored
    # passes that on to its jobs, so the worker could not take the graceful stop the block sends it
    shell = subprocess.Popen(["bash", "-e", "-c", commands.replace(README_PORT, port)], cwd=workspace, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
                             preexec_fn=_sigint_as_in_a_terminal)
    try:
        # the block's last lines stop the worker and the server: run as a script, it ends by itself
        output, _ = shell.communicate(timeout=600)
        assert shell.returncode == 0, output[-4000:]
        assert "Completed" in output
        manifest = Manifest.model_validate_json((workspace / "out" / "deployment" / "manifest.json").read_bytes())
        # prefect.yaml's default parameters are the whole demo (COCO, LVIS and COCO-Stuff annotations)
        assert manifest.samples == 8
        _wait(lambda: not _started_with(env["PREFECT_HOME"]), 60, "the server and worker the block started to stop")

        for name in DEPLOYMENTS:        # `prefect deploy --all` made each of them
            assert f"Deployment '{name}' successfully created" in " ".join(output.split()), name
    finally:
        if shell.poll() is None:
            shell.kill()
        for process in _started_with(env["PREFECT_HOME"]):
            process.kill()


def test_serve_refuses_without_a_server_url(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    started = time.monotonic()
    run = subprocess.run([str(BIN / "tokencompose"), "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "PREFECT_API_URL" in run.stderr and len(run.stderr.splitlines()) == 1
    assert time.monotonic() - started < 30


def _a_failing_run_says_why_in_its_state(env: dict, tmp_path: Path) -> None:
    """A failing run's reason is in the flow run's state message (what `prefect flow-run inspect` shows, read
    through the API: the CLI wraps long lines at the terminal width)."""
    bad = {"config": {"source": {"images_dir": str(tmp_path / "no-such-folder"),
                                 "captions_json": "data/sample/captions.json"},
                      "output": {"out_dir": str(tmp_path / "bad")}}}
    run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "build-grounded-coco/local",
                          "--params", json.dumps(bad), "--watch", "--watch-timeout", "300"],
                         env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode != 0 and "Failed" in run.stdout + run.stderr
    flow_run_id = run.stdout.split("UUID:")[1].split()[0]
    state = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}").json()["state"]
    assert state["type"] == "FAILED"
    assert "ConfigurationError" in state["message"] and "no-such-folder" in state["message"], state["message"]
