"""The train-tokencompose Prefect flow and the `train` subcommand."""
from __future__ import annotations

import argparse
import json

from tokencompose.flows.train import FLOW_NAME, add_cli, train_tokencompose


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tokencompose")
    add_cli(root.add_subparsers(dest="command", required=True))
    return root


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


def test_the_flow_trains_exports_and_reports(prefect_harness, make_config):
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


def test_the_cli_runs_the_flow(prefect_harness, make_config, tmp_path, capsys):
    config_file = tmp_path / "train.json"
    config_file.write_text(make_config(max_steps=1).to_json())
    args = parser().parse_args(["train", "--config", str(config_file), "--output-dir", str(tmp_path / "cli")])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1
    assert (tmp_path / "cli" / "checkpoints" / "step-00000001" / "model.safetensors").exists()
