"""Fault injection over the whole retraining loop (issue 20, item 5): the scheduled retrain deployment on a real
`prefect server start` and a process worker runs five times in a row while the test, between runs, corrupts a
training sample inside a shard (the manifest resealed, so that training, not the build, meets it), truncates
another shard (the build rebuilds it byte for byte), makes a prompt of the evaluation's prompt file far longer
than any text window, damages a registry entry file, and SIGKILLs one run in the middle of training. The
registry ends consistent (`registry check` passes), the promoted model's files are byte-identical to what was
promoted, and the last, clean run trains and decides normally.

Runs are let through one at a time by pausing the work pool: the scheduler keeps creating runs every
few seconds, the worker takes one only while the pool is resumed."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support import prefect_processes
from tests.support.retraining import BIN, REPO, free_port, settings, write_vsr
from tokencompose.tasks.multigen.prompts import bundled, write_prompts
from tokencompose.tasks.registry.store import ModelRegistry

pytestmark = pytest.mark.server
POOL = "tokencompose-gpu"
RUN_DEADLINE = 900


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def reseal(data_dir: Path, shard: Path, old: str) -> None:
    """Put the shard's new sha256 wherever the old one is recorded: the dataset looks intact to the
    build, and only training meets the damage (a build rebuilds a shard whose sha256 disagrees)."""
    new = hashlib.sha256(shard.read_bytes()).hexdigest()
    for record in [data_dir / "manifest.json", *sorted((data_dir / "index").glob("*.json"))]:
        text = record.read_text()
        if old in text:
            record.write_text(text.replace(old, new))


def corrupt_a_sample(data_dir: Path, shard: Path) -> None:
    """Overwrite one sample's JSON in place, at the same size, with a JSON array (a sample record that
    is not an object), and reseal."""
    old = hashlib.sha256(shard.read_bytes()).hexdigest()
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
    with open(shard, "r+b") as handle:
        handle.seek(member.offset_data)
        handle.write(b"[1]".ljust(member.size, b" "))
    reseal(data_dir, shard, old)


class Deployment:
    """The scheduled retrain deployment on a real server; runs are let through one at a time."""

    def __init__(self, api: str):
        self.api = api
        self.seen: set[str] = set()

    def call(self, method: str, path: str, body: dict | None = None):
        """One API call; a busy server's 5xx or dropped connection (SQLite locked under load) is retried
        until a deadline: the server's own hiccups are not what this test is about."""
        deadline = time.monotonic() + 180
        while True:
            try:
                response = httpx.request(method, f"{self.api}{path}", json=body, timeout=30)
                if response.status_code < 500:
                    assert response.status_code < 300, response.text
                    return response.json() if response.content else None
                problem = response.text
            except httpx.TransportError as error:
                problem = repr(error)
            assert time.monotonic() < deadline, f"{method} {path}: {problem}"
            time.sleep(1)

    def set_paused(self, paused: bool) -> None:
        self.call("PATCH", f"/work_pools/{POOL}", {"is_paused": paused})

    def runs(self) -> list[dict]:
        body = {"limit": 200, "offset": 0, "sort": "EXPECTED_START_TIME_ASC"}
        return [r for r in self.call("POST", "/flow_runs/filter", body) if r["auto_scheduled"]]

    def run(self, run_id: str) -> dict:
        return self.call("GET", f"/flow_runs/{run_id}")

    def next_run(self, log: Path) -> str:
        """Resume the pool until the worker starts a scheduled run not seen before, pause it again."""
        self.set_paused(False)
        deadline = time.monotonic() + RUN_DEADLINE
        while True:
            assert time.monotonic() < deadline, "no scheduled run started\n" + log.read_text()[-3000:]
            started = [r for r in self.runs() if r["id"] not in self.seen and r["state_type"] in ("RUNNING", "PENDING")]
            if started:
                self.set_paused(True)
                self.seen.add(started[0]["id"])
                return started[0]["id"]
            time.sleep(0.5)

    def wait_final(self, run_id: str, log: Path) -> dict:
        deadline = time.monotonic() + RUN_DEADLINE
        while True:
            run = self.run(run_id)
            if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            assert time.monotonic() < deadline, f"run {run_id} never ended\n" + log.read_text()[-3000:]
            time.sleep(0.5)


def registry_cli(registry: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tokencompose"), "models", "registry", "--registry", str(registry), *argv],
                          capture_output=True, text=True, timeout=300)


def newest_entry(registry: Path, known: set[str]):
    fresh = [e for e in ModelRegistry(registry).entries() if e.id not in known]
    assert len(fresh) == 1, [e.id for e in fresh]
    known.add(fresh[0].id)
    return fresh[0]


def test_scheduled_runs_survive_corrupt_data_a_damaged_registry_and_a_kill(tiny_sd, tiny_owl, tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    for name in ("flows", "data"):
        (workspace / name).symlink_to(REPO / name)
    vsr = write_vsr(tmp_path / "vsr_train.jsonl", 2)
    prompt_file = write_prompts(bundled("coco")[:2], tmp_path / "prompts.json")
    config = settings(tmp_path, tiny_sd, tiny_owl, vsr)
    config["evaluation"]["benchmark"] = {"file": str(prompt_file), "limit": 2}
    config["train"]["max_bad_sample_fraction"] = 0.6      # one bad sample of a handful is below the ceiling
    registry, data_dir, runs_dir = tmp_path / "registry", tmp_path / "data", tmp_path / "runs"
    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    weekly = next(d for d in project["deployments"] if d["name"] == "weekly")
    # CANCEL_NEW: a run the worker took before the pool was paused is cancelled, never queued behind the
    # run let through (it would start before the test's next corruption).
    weekly = {**weekly, "schedules": [{"interval": 10, "active": True}], "parameters": {"config": config},
              "concurrency_limit": {"limit": 1, "collision_strategy": "CANCEL_NEW"}}
    (workspace / "prefect.yaml").write_text(yaml.safe_dump({**project, "deployments": [weekly]}))

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_processes.server_env(tmp_path / "prefect-home", port, OMP_NUM_THREADS="1",
                                       PREFECT_SERVER_DATABASE_TIMEOUT="60", PREFECT_API_DATABASE_TIMEOUT="60")
    log = tmp_path / "processes.log"
    logs = open(log, "wb")
    processes = [prefect_processes.start_server(port, env, logs)]
    try:
        prefect_processes.run_ok(["tokencompose", "wait-for-server", "--timeout", "180"], env, workspace)
        prefect_processes.run_ok(["prefect", "work-pool", "create", "--type", "process", POOL, "--overwrite"], env,
                                 workspace)
        deployment = Deployment(api)
        deployment.set_paused(True)
        prefect_processes.run_ok(["prefect", "--no-prompt", "deploy", "--all"], env, workspace)
        processes.append(prefect_processes.start(["prefect", "worker", "start", "--pool", POOL], env, logs,
                                                 cwd=workspace))
        known: set[str] = set()

        # 1. clean: a candidate, rejected (margin 1000); promoted by hand, its files fingerprinted.
        first = deployment.wait_final(deployment.next_run(log), log)
        assert first["state_type"] == "COMPLETED"
        promoted = newest_entry(registry, known)
        assert registry_cli(registry, "promote", promoted.id).returncode == 0
        promoted_files = digests(Path(promoted.pipeline_dir))

        # 2. the source grows; a sample of the existing shard is not an object any more (manifest resealed).
        write_vsr(vsr, 4)
        corrupt_a_sample(data_dir, data_dir / "shards" / "shard-000000.tar")
        second = deployment.wait_final(deployment.next_run(log), log)
        entry = newest_entry(registry, known)
        assert second["state_type"] == "COMPLETED", entry.reason
        assert entry.status == "rejected" and entry.dataset_version == 2 and entry.parent == promoted.id
        counts = [json.loads(line) for line in (runs_dir / entry.id / "train" / "metrics.jsonl").read_text().splitlines()]
        assert any(r.get("count/samples_skipped") for r in counts), counts[-1]   # skipped and counted

        # 3. grows again; a prompt is far longer than any text window: the evaluation refuses it before
        #    generating.
        write_vsr(vsr, 6)
        good_prompts = prompt_file.read_text()
        rows = json.loads(good_prompts)
        rows[1]["text"] = "a photo of a cat and a dog " * 200
        prompt_file.write_text(json.dumps(rows))
        third = deployment.wait_final(deployment.next_run(log), log)
        entry = newest_entry(registry, known)
        assert third["state_type"] == "FAILED"
        assert entry.status == "failed" and entry.reason.startswith("evaluation failed: ") and "prompt" in entry.reason
        assert entry.dataset_version is None          # not counted: the next run trains on version 3 again
        assert json.loads((data_dir / "manifest.json").read_text())["versions"][-1]["version"] == 3

        # 4. the prompt file is mended, a registry entry damaged; the run is SIGKILLed while it trains.
        prompt_file.write_text(good_prompts)
        damaged = registry / "entries" / f"{entry.id}.json"
        damaged.write_text('{"id": "' + entry.id + '", "status": "lost"')
        assert registry_cli(registry, "check").returncode == 2
        fourth = deployment.next_run(log)
        deadline = time.monotonic() + RUN_DEADLINE
        while not list(runs_dir.glob("*/train/train_config.json"))[3:]:
            assert deployment.run(fourth)["state_type"] in ("PENDING", "RUNNING"), log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the fourth run never started training"
            time.sleep(0.2)
        pid = int(str(deployment.run(fourth)["infrastructure_pid"]).rsplit(":", 1)[-1])
        os.kill(pid, signal.SIGKILL)
        assert deployment.wait_final(fourth, log)["state_type"] in ("CRASHED", "FAILED")
        assert ModelRegistry(registry).index().promoted == promoted.id
        assert registry_cli(registry, "check").returncode == 0     # the fourth run repaired the registry
        assert list((registry / "damaged").glob(f"{entry.id}.json.*"))

        # 5. a shard of version 2 is truncated (not resealed): the build finds it damaged and rebuilds the
        #    same bytes. The killed run is registered as failed (interrupted), the candidate trains on
        #    version 3 and is judged normally.
        truncated = sorted((data_dir / "shards").glob("shard-*.tar"))[1]
        intact = truncated.read_bytes()
        truncated.write_bytes(intact[: len(intact) // 2])
        fifth = deployment.wait_final(deployment.next_run(log), log)
        assert fifth["state_type"] == "COMPLETED"
        assert truncated.read_bytes() == intact
        fresh = {e.id: e for e in ModelRegistry(registry).entries() if e.id not in known}
        interrupted = [e for e in fresh.values() if e.reason.startswith("interrupted")]
        judged = [e for e in fresh.values() if e.status in ("promoted", "rejected")]
        assert len(interrupted) == 1 and len(judged) == 1 and len(fresh) == 2
        assert judged[0].dataset_version == 3 and judged[0].multigen is not None and judged[0].status == "rejected"
        listing = registry_cli(registry, "list").stdout
        assert "failed (interrupted)" in listing and f"{promoted.id}  PROMOTED" in listing

        check = registry_cli(registry, "check")
        assert check.returncode == 0 and check.stderr == "", check.stderr
        assert ModelRegistry(registry).promoted().id == promoted.id
        assert digests(Path(promoted.pipeline_dir)) == promoted_files
    finally:
        prefect_processes.stop(processes)
        logs.close()
