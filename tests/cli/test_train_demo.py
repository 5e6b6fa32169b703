"""`tokencompose train --demo`: the whole training loop on a tiny random-weight model and the bundled
sample, with nothing downloaded."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from tokencompose.cli import main

pytestmark = pytest.mark.server


def test_train_demo_writes_every_artifact(prefect_api, one_thread, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["train", "--demo", "--output-dir", str(out), "--max-steps", "6", "--checkpoint-every", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 6 and summary["last_metrics"]["count/nouns_used"] > 0
    assert "token/8x8" in summary["last_metrics"]            # the tiny UNet's own layers, no --train-layers
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records][-1] == 6
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    pipeline = out / "pipeline"
    assert (pipeline / "model_index.json").is_file()
    assert load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    assert (out / "demo-data" / "manifest.json").is_file() and (out / "tiny-sd" / "model_index.json").is_file()
