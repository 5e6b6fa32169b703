"""The train-tokencompose Prefect flow and the `train` subcommand."""
from __future__ import annotations

import argparse
import json

from tokencompose.cli import parser_for
from tokencompose.flows.train import FLOW_NAME, train_tokencompose


def parser() -> argparse.ArgumentParser:
    return parser_for("train")


def test_cli_flags_override_the_config_file(tmp_path, make_config, capsys):
    config_file = tmp_path / "train.json"
    config_file.write_text(make_config().to_json())
    args = parser().parse_args(["train", "--config", str(config_file), "--max-steps", "7", "--aggregation",
                                "normalized", "--no-gradient-checkpointing", "--print-config"])
    assert args.handler(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["max_steps"] == 7 and printed["aggregation"] == "normalized"
    assert printed["gradient_checkpointing"] is False and printed["resolution"] == 64


def test_cli_rejects_an_invalid_configuration(capsys):
    args = parser().parse_args(["train", "--shards", "x.tar", "--output-dir", "out", "--max-steps", "0"])
    assert args.handler(args) == 2
    assert "pretrained_model" in capsys.readouterr().err


def test_the_flow_trains_exports_and_reports(prefect_api, make_config, one_thread):
    config = make_config(max_steps=2, export=True, num_workers=1)
    state = train_tokencompose(config=config, return_state=True)
    assert state.is_completed() and train_tokencompose.name == FLOW_NAME
    summary = state.result()
    assert summary["steps"] == 2 and summary["stats"]["samples"] == 2
    assert (config.output_dir / "pipeline" / "model_index.json").exists()
    assert (config.output_dir / "loss_curve.png").exists()
    assert {"token", "pixel", "ldm", "lr", "samples_per_s"} <= summary["last_metrics"].keys()
    import httpx
    from prefect.settings import PREFECT_API_URL

    # over the REST API: prefect 3.8.8's client sends null fields that its own server rejects here
    body = {"artifacts": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}},
            "sort": "CREATED_DESC", "limit": 50, "offset": 0}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body)
    response.raise_for_status()
    artifacts = response.json()
    kinds = {a["type"]: a for a in artifacts}
    assert float(kinds["progress"]["data"]) == 100.0 and "token" in kinds["markdown"]["data"]


def test_the_cli_runs_the_flow(prefect_api, make_config, tmp_path, capsys):
    config_file = tmp_path / "train.json"
    config_file.write_text(make_config(max_steps=1).to_json())
    args = parser().parse_args(["train", "--config", str(config_file), "--output-dir", str(tmp_path / "cli")])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1
    assert (tmp_path / "cli" / "checkpoints" / "step-00000001" / "model.safetensors").exists()


def test_two_processes_train_with_ddp_on_the_cpu(make_config, tmp_path):
    """Two CPU processes with DDP (gloo): logged counts are summed over ranks, both ranks checkpoint."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    config_file = tmp_path / "train.json"
    config_file.write_text(make_config(max_steps=2, gradient_accumulation_steps=2, num_workers=0, export=True,
                                       output_dir=tmp_path / "ddp").to_json())
    # torchrun starts the ranks; accelerate then builds a gloo process group (ACCELERATE_USE_CPU)
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
               "-m", "tokencompose", "train", "--config", str(config_file), "--no-prefect"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and records[-1]["count/samples"] == 8   # 2 ranks x 2 steps x 2 micro-batches
    checkpoint = tmp_path / "ddp" / "checkpoints" / "step-00000002"
    assert (checkpoint / "rank-0.json").exists() and (checkpoint / "rank-1.json").exists()
    assert load_file(checkpoint / "model.safetensors").keys() == load_file(
        tmp_path / "ddp" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").keys()
