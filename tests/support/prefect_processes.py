"""A real `prefect server start` (and workers) in subprocesses for the tests that need one: the
environment pointing at it, CLI calls against it, and a stop that never leaves a process behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def server_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of every process talking to a server on 127.0.0.1:``port`` with its own home
    and SQLite database."""
    return {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db", **extra}


def start(argv: list[str], env: dict[str, str], log, cwd: Path | None = None) -> subprocess.Popen:
    """A long-running program of the venv (server, worker, serve) in its own process group."""
    return subprocess.Popen([str(BIN / argv[0]), *argv[1:]], env=env, cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def start_server(port: int, env: dict[str, str], log) -> subprocess.Popen:
    return start(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)


def run_ok(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> None:
    """A program of the venv run to the end; it must succeed (its output's tail is the failure message)."""
    done = subprocess.run([str(BIN / argv[0]), *argv[1:]], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def stop(processes: list[subprocess.Popen]) -> None:
    """Stop each process group, the last started first: SIGTERM, then SIGKILL after 30 s."""
    for process in reversed(processes):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def flow_run_logs(flow_run_id, wanted: str, timeout_s: float = 60.0) -> list[str]:
    """The run's log messages read back through the Prefect client, once one contains ``wanted``
    (the API handler ships them in the background: polled with a deadline)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        messages = [entry.message for entry in logs]
        if any(wanted in m for m in messages) or time.monotonic() > deadline:
            return messages
        APILogWorker.drain_all(timeout=5)
