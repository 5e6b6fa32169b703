"""The train-tokencompose Prefect flow and the `train` subcommand."""
from __future__ import annotations

import argparse
import json

import pytest

from tests.support.prefect_processes import flow_run_logs
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


@pytest.mark.server
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


@pytest.mark.server
def test_the_cli_runs_the_flow(prefect_api, make_config, tmp_path, capsys):
    config_file = tmp_path / "train.json"
    config_file.write_text(make_config(max_steps=1).to_json())
    args = parser().parse_args(["train", "--config", str(config_file), "--output-dir", str(tmp_path / "cli")])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1
    assert (tmp_path / "cli" / "checkpoints" / "step-00000001" / "model.safetensors").exists()


@pytest.mark.slow
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


def one_bad_shard(tmp_path, reason: str = "json_not_object"):
    """100 good samples and, first, one bad one: under the default 1% ceiling."""
    from tests.support.hostile_shards import MAKERS, members, small_photo_samples, write_samples

    good = small_photo_samples(101)
    samples = [MAKERS[reason](*good[0])] + [members(*s) for s in good[1:]]
    return write_samples(tmp_path / "bad" / "shard-000000.tar", samples), good[0][0].key


def markdown_artifact(flow_run_id) -> str:
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}, "type": {"any_": ["markdown"]}},
            "sort": "CREATED_DESC", "limit": 5, "offset": 0}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body)
    response.raise_for_status()
    return response.json()[0]["data"]


@pytest.mark.server
def test_the_flow_trains_past_a_bad_sample_and_reports_it(prefect_api, make_config, tmp_path):
    """Issue 20: one bad sample ended the flow with a DataError; now it is skipped and reported."""
    shard, key = one_bad_shard(tmp_path)
    config = make_config(shards=[str(shard)], shuffle_buffer=0, max_steps=2)
    state = train_tokencompose(config=config, return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["steps"] == 2 and summary["data_quality"]["by_reason"] == {"json_not_object": 1}
    assert summary["data_quality"]["first"]["json_not_object"] == [f"shard-000000.tar:{key}"]
    assert f"| unusable: json_not_object | 1 (first: shard-000000.tar:{key}) |" in markdown_artifact(
        state.state_details.flow_run_id)


@pytest.mark.server
def test_too_much_bad_data_stops_the_flow_and_the_cli_in_one_line(prefect_api, make_config, tmp_path, capsys):
    from tokencompose.tasks.training.samples import TooMuchBadData

    shard, _ = one_bad_shard(tmp_path)
    config = make_config(shards=[str(shard)], max_bad_sample_fraction=0.0)
    state = train_tokencompose(config=config, return_state=True)
    assert state.is_failed()
    with pytest.raises(TooMuchBadData, match="1 of 101 samples unusable"):
        state.result()
    assert "**training stopped**: too much bad training data" in markdown_artifact(state.state_details.flow_run_id)
    config_file = tmp_path / "train.json"
    config_file.write_text(config.to_json())
    args = parser().parse_args(["train", "--config", str(config_file), "--no-prefect"])
    assert args.handler(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("training failed: too much bad training data: 1 of 101 samples unusable") and "\n" not in err
    assert "shard-000000.tar (1 unusable: json_not_object 1)" in err


@pytest.mark.server
def test_the_flow_logs_progress_and_makes_a_validation_artifact(prefect_api, make_config):
    config = make_config(max_steps=2, validation_prompts=["a cat to the left of a cup"], validation_nouns=["cat"],
                         validation_every=2, validation_inference_steps=1)
    state = train_tokencompose(config=config, return_state=True)
    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id
    messages = flow_run_logs(flow_run_id, "training: done, 2/2 step in")
    assert "training: 0/2 step" in messages
    assert any(m.startswith("training: done, 2/2 step in") and "step/s" in m for m in messages), messages
    assert any(m.startswith("loading the model to train from") for m in messages)
    image = config.output_dir / "validation" / "step-000002" / "00.png"
    assert image.exists()
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"key": {"any_": ["train-tokencompose-validation"]}, "flow_run_id": {"any_": [str(flow_run_id)]}},
            "sort": "CREATED_DESC", "limit": 5, "offset": 0}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body)
    response.raise_for_status()
    (artifact,) = response.json()
    assert "validation at step 2" in artifact["data"] and f"`{image}`" in artifact["data"]


def test_quiet_flag_silences_progress_for_the_run(make_config, tmp_path, capsys, monkeypatch):
    from tokencompose.tasks.progress import QUIET_ENV, is_quiet

    monkeypatch.delenv(QUIET_ENV, raising=False)
    config_file = tmp_path / "train.json"
    config_file.write_text(make_config().to_json())
    args = parser().parse_args(["train", "--config", str(config_file), "--quiet", "--print-config"])
    assert args.handler(args) == 0 and is_quiet()
    capsys.readouterr()
    args = parser().parse_args(["train", "--config", str(config_file), "--report-to", "tensorboard",
                                "--validation-prompts", '["a cat, sitting", "a cup"]', "--print-config"])
    assert args.handler(args) == 0
    printed = json.loads(capsys.readouterr().out)
    # a prompt with a comma: the JSON list form (a bare comma separates list items on the command line)
    assert printed["report_to"] == "tensorboard" and printed["validation_prompts"] == ["a cat, sitting", "a cup"]
