"""retrain-tokencompose with tiny random models on the bundled sample split in two parts: nothing new,
a kill during training, the next run, and a scheduled run on a real Prefect server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tokencompose.flows.retrain import retrain_tokencompose
from tokencompose.schemas.retrain import RetrainConfig
from tokencompose.tasks.registry.store import ModelRegistry

from tests.support import prefect_processes
from tests.support.retraining import BIN, REPO, VSR_LINES, free_port, settings, write_vsr
from tokencompose.data import SAMPLE_DIR

pytestmark = pytest.mark.server

def test_nothing_new_a_kill_during_training_and_the_next_run(prefect_api, one_thread, tiny_sd, tiny_owl, tmp_path):
    vsr = write_vsr(tmp_path / "vsr_train.jsonl", 4)
    data = settings(tmp_path, tiny_sd, tiny_owl, vsr)
    first = retrain_tokencompose(config=RetrainConfig.model_validate(data))
    registry = ModelRegistry(tmp_path / "registry")
    assert first["status"] == "rejected" and first["dataset_version"] == 1
    entry = registry.entry(first["entry"])
    assert entry.multigen.metric == "MG1" and entry.dataset_version == 1 and entry.parent is None
    gain = entry.gate.criteria[0]       # FID and CLIP score are not judged in this configuration
    assert [c.name for c in entry.gate.criteria] == ["composition_MG1"] and not entry.gate.promote
    assert gain.threshold == 1000.0 and not gain.passed and entry.reason.startswith("gate failed: composition_MG1")
    assert (Path(entry.pipeline_dir) / "model_index.json").is_file()
    registry.promote(entry.id, reason="promoted by the test")

    assert retrain_tokencompose(config=RetrainConfig.model_validate(data))["status"] == "nothing new"
    assert len(registry.entries()) == 1

    # The source grows; a run is killed while it trains: the promoted model stays.
    write_vsr(vsr, len(VSR_LINES))
    config_file = tmp_path / "retrain.json"
    config_file.write_text(json.dumps(data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(tmp_path / "ph")}
    env.pop("PREFECT_API_URL", None)
    killed = subprocess.Popen([str(BIN / "tokencompose"), "retrain", "--config", str(config_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    while not [p for p in (tmp_path / "runs").glob("*/train/train_config.json") if p.parts[-3] != entry.id]:
        assert killed.poll() is None, "the run ended before training started"
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    after_kill = ModelRegistry(tmp_path / "registry")
    assert after_kill.promoted().id == entry.id and len(after_kill.entries()) == 1

    killed_runs = [p.name for p in (tmp_path / "runs").iterdir() if p.name != entry.id]
    nxt = retrain_tokencompose(config=RetrainConfig.model_validate(data))
    assert nxt["status"] in ("promoted", "rejected") and nxt["dataset_version"] == 2
    assert len(killed_runs) == 1
    interrupted = ModelRegistry(tmp_path / "registry").entry(killed_runs[0])     # registered by the next run
    assert interrupted.status == "failed" and interrupted.reason.startswith("interrupted: ")
    assert interrupted.dataset_version is None and ModelRegistry(tmp_path / "registry").check() == []
    second = ModelRegistry(tmp_path / "registry").entry(nxt["entry"])
    assert second.parent == entry.id and Path(second.base_model) == Path(entry.pipeline_dir)
    assert len(second.dataset_shards) > len(entry.dataset_shards)
    assert ModelRegistry(tmp_path / "registry").promoted().id == entry.id   # rejected: margin 1000


def test_a_diverged_candidate_is_recorded_as_failed_and_not_evaluated(prefect_api, one_thread, tiny_sd, tiny_owl,
                                                                        tmp_path):
    from tokencompose.tasks.multigen.toy import perturbed_copy

    broken = perturbed_copy(tiny_sd, tmp_path / "nan-sd", nan=True)
    data = settings(tmp_path, broken, tiny_owl, write_vsr(tmp_path / "vsr_train.jsonl", 2))
    result = retrain_tokencompose(config=RetrainConfig.model_validate(data))
    assert result["status"] == "failed" and "diverged" in result["reason"]
    entry = ModelRegistry(tmp_path / "registry").entry(result["entry"])
    assert entry.status == "failed" and entry.pipeline_dir is None and entry.multigen is None
    assert not list((tmp_path / "runs").glob("*/multigen"))
    assert ModelRegistry(tmp_path / "registry").promoted() is None


def test_the_gate_judges_fid_and_clip_score_measured_on_the_same_run(prefect_api, one_thread, tiny_sd, tiny_owl,
                                                                      tmp_path):
    """FID (random-weight Inception) against four real sample photos and CLIP score (random-weight ViT-S-32) of
    both models' generations of their captions: the entry's criteria are the report's figures."""
    from tokencompose.tasks.evaluation.toy import save_random_clip, save_random_inception
    from tokencompose.tasks.registry.promotion import read_report

    photos = sorted((SAMPLE_DIR / "images").glob("*.jpg"))[:4]
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"image": p.name, "caption": f"a photo number {i}"}) + "\n"
                                for i, p in enumerate(photos)))
    data = settings(tmp_path, tiny_sd, tiny_owl, write_vsr(tmp_path / "vsr_train.jsonl", 2))
    data["gate"] = {"level": 1, "margin": 0.0, "bootstrap_samples": 200, "fid_tolerance": 1e6, "clip_tolerance": 0.0}
    data["evaluation"]["metrics"] = {
        "fid": {"real": [{"name": "coco", "images": str(SAMPLE_DIR / "images"), "captions": str(captions),
                          "limit": 4}],
                "inception": str(save_random_inception(tmp_path / "weights" / "inception.pth")),
                "cache_dir": str(tmp_path / "fid-cache")},
        "clip_score": {"enabled": True, "model": "ViT-S-32",
                       "pretrained": str(save_random_clip(tmp_path / "weights" / "clip-vit-s-32.pt"))}}
    result = retrain_tokencompose(config=RetrainConfig.model_validate(data))
    entry = ModelRegistry(tmp_path / "registry").entry(result["entry"])
    gain, fid, clip = entry.gate.criteria
    assert (gain.name, fid.name, clip.name) == ("composition_MG1", "fid", "clip_score")
    report = read_report(tmp_path / "runs" / entry.id / "multigen" / "report.json")
    base, candidate = (next(m for m in report.models if m.label == label) for label in ("base", "candidate"))
    assert (fid.baseline, fid.candidate) == (base.metrics.fid["coco"]["fid"], candidate.metrics.fid["coco"]["fid"])
    assert fid.value == pytest.approx(fid.candidate - fid.baseline) and fid.passed      # tolerance 1e6
    per_prompt = [m.metrics.clip_score["coco"]["per_prompt"] for m in (base, candidate)]
    assert len(per_prompt[0]) == len(per_prompt[1]) == 4
    assert clip.baseline == pytest.approx(sum(per_prompt[0].values()) / 4)
    assert clip.candidate == pytest.approx(sum(per_prompt[1].values()) / 4)
    assert clip.low <= clip.value <= clip.high and clip.passed == (clip.value >= 0.0)
    assert entry.gate.promote == all(c.passed for c in entry.gate.criteria)
    assert entry.status == ("promoted" if entry.gate.promote else "rejected") == result["status"]


def test_missing_real_images_stop_the_run_before_any_work(prefect_api, one_thread, tiny_sd, tiny_owl, tmp_path):
    data = settings(tmp_path, tiny_sd, tiny_owl, write_vsr(tmp_path / "vsr_train.jsonl", 2))
    data["gate"]["fid_tolerance"] = 0.5
    data["evaluation"]["metrics"] = {"fid": {"real": [{"name": "coco", "images": str(tmp_path / "val2017"),
                                                       "captions": str(tmp_path / "captions.json")}],
                                             "inception": str(tmp_path / "inception.pth")}}
    with pytest.raises(ValueError, match="cannot start the retraining") as error:
        retrain_tokencompose(config=RetrainConfig.model_validate(data))
    assert f"evaluation.metrics: fid set coco: {tmp_path / 'val2017'}: the real-image folder" in str(error.value)
    assert f"evaluation.metrics: fid inception: {tmp_path / 'inception.pth'} does not exist" in str(error.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "registry").exists()      # nothing built, no entry


def test_a_scheduled_run_on_a_real_server_adds_a_registry_entry(tiny_sd, tiny_owl, tmp_path):
    """prefect server start, the retrain deployment with an interval schedule of a few seconds, a worker:
    a run the scheduler created (not a manual one) completes and the registry shows its entry."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    for name in ("flows", "data"):
        (workspace / name).symlink_to(REPO / name)
    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    weekly = next(d for d in project["deployments"] if d["name"] == "weekly")
    assert weekly["schedules"][0]["cron"] and weekly["concurrency_limit"]["limit"] == 1
    data = settings(tmp_path, tiny_sd, tiny_owl, write_vsr(tmp_path / "vsr_train.jsonl", 2))
    weekly = {**weekly, "schedules": [{"interval": 5, "active": True}], "parameters": {"config": data}}
    (workspace / "prefect.yaml").write_text(yaml.safe_dump({**project, "deployments": [weekly]}))

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_processes.server_env(tmp_path / "prefect-home", port, OMP_NUM_THREADS="1")
    logs = open(tmp_path / "processes.log", "wb")
    processes = [prefect_processes.start_server(port, env, logs)]
    try:
        prefect_processes.run_ok(["tokencompose", "wait-for-server", "--timeout", "180"], env, workspace)
        prefect_processes.run_ok(["prefect", "work-pool", "create", "--type", "process", "tokencompose-gpu",
                                  "--overwrite"], env, workspace)
        prefect_processes.run_ok(["prefect", "--no-prompt", "deploy", "--all"], env, workspace)
        processes.append(prefect_processes.start(["prefect", "worker", "start", "--pool", "tokencompose-gpu"], env,
                                                 logs, cwd=workspace))
        registry_dir = tmp_path / "registry"
        deadline = time.monotonic() + 600
        completed = []
        while not completed:
            assert time.monotonic() < deadline, (tmp_path / "processes.log").read_text()[-3000:]
            body = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}, "limit": 10, "offset": 0}
            runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30).json()
            completed = [r for r in runs if r["auto_scheduled"]]
            time.sleep(1)
        entries = ModelRegistry(registry_dir).entries()
        assert entries and entries[0].status in ("promoted", "rejected") and entries[0].dataset_version == 1
        assert completed[0]["created_by"] is None or completed[0]["created_by"].get("type") != "USER"
    finally:
        prefect_processes.stop(processes)
        logs.close()
