"""Watching a run: TensorBoard event files read back with tensorboard's reader, validation images and
attention maps at the right steps, progress lines with rate and ETA."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from tokencompose.tasks.multigen.attention_maps import GRID_FILE, INFO_FILE
from tokencompose.tasks.training.trainer import Trainer
from tokencompose.tasks.training.watch import TRACKER_DIR, tracker_values, trackers

PROMPTS = ["a cat to the left of a cup", "an astronaut above a rocket"]


def event_accumulator(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / TRACKER_DIR).rglob("events.out.tfevents.*"))
    assert files, f"no event file under {run_dir / TRACKER_DIR}"
    readers = [EventAccumulator(str(f.parent), size_guidance={"images": 0, "scalars": 0}) for f in files]
    for reader in readers:
        reader.Reload()
    return readers


def test_tensorboard_gets_the_losses_rate_counts_and_validation_images(make_config):
    config = make_config(max_steps=3, report_to="tensorboard", validation_prompts=PROMPTS,
                         validation_nouns=["cat", "cup"], validation_every=2, validation_inference_steps=2)
    result = Trainer(config).train()
    assert result.steps == 3
    readers = event_accumulator(config.output_dir)
    scalars = {tag for r in readers for tag in r.Tags()["scalars"]}
    expected = {"loss/total", "loss/ldm", "loss/token", "loss/pixel", "loss/token/16x16", "loss/pixel/16x16", "lr",
                "throughput/samples_per_s", "count/samples", "count/nouns_no_mask", "bad/unusable"}
    assert expected <= scalars, expected - scalars
    steps = {e.step for r in readers if "loss/total" in r.Tags()["scalars"] for e in r.Scalars("loss/total")}
    assert steps == {1, 2, 3}
    images = {(tag, e.step): e for r in readers for tag in r.Tags()["images"] for e in r.Images(tag)}
    assert {("validation", 2), ("validation", 3), ("validation_attention", 2), ("validation_attention", 3)} <= images.keys()
    assert images["validation", 2].width >= len(PROMPTS) * config.resolution  # one panel per prompt

    folders = sorted(p.name for p in (config.output_dir / "validation").iterdir())
    assert folders == ["step-000002", "step-000003"]
    for folder in folders:
        step_dir = config.output_dir / "validation" / folder
        for index in range(len(PROMPTS)):
            assert Image.open(step_dir / f"{index:02d}.png").size == (config.resolution, config.resolution)
        info = json.loads((step_dir / "attention" / INFO_FILE).read_text())
        assert info["nouns"] == ["cat", "cup"] and (step_dir / "attention" / GRID_FILE).stat().st_size > 1000
    # the training maps came back: the grounding losses were still computed after the validation
    assert result.last_metrics["token"] > 0


def test_the_same_noise_gives_each_validation_comparable_images(make_config):
    """At learning rate ~0 the weights barely move: two validations give the same image, but for a pixel's
    rounding (a weight near 0 still moves by ~1e-12, which can carry a value across a quantization step; seen on
    an Intel Xeon). Other noise would change every pixel."""
    config = make_config(max_steps=2, learning_rate=1e-12, validation_prompts=PROMPTS[:1], validation_nouns=["cat"],
                         validation_every=1, validation_inference_steps=2)
    Trainer(config).train()
    first, second = (Image.open(config.output_dir / "validation" / f"step-00000{s}" / "00.png") for s in (1, 2))
    difference = np.abs(np.asarray(first, dtype=np.int16) - np.asarray(second, dtype=np.int16))
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_progress_lines_have_rate_and_eta_and_quiet_silences_them(make_config, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    Trainer(make_config(max_steps=2)).train()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training: ")]
    assert lines[0] == "training: 0/2 step" and "done, 2/2 step in" in lines[-1] and "step/s" in lines[-1]
    assert any(r.getMessage().startswith("loading the model to train from") for r in caplog.records)
    caplog.clear()
    monkeypatch.setenv("TOKENCOMPOSE_QUIET", "1")
    Trainer(make_config(max_steps=1, output_dir=make_config().output_dir.parent / "quiet")).train()
    assert not [r for r in caplog.records if r.getMessage().startswith(("training: ", "loading the model"))]


def test_tracker_names_and_tags():
    assert trackers("none") == [] and trackers("all") == ["tensorboard", "wandb", "mlflow"]
    values = tracker_values({"step": 3, "loss": 0.5, "ldm": 0.4, "token/8x8": 0.1, "lr": 1e-5, "samples_per_s": 2.0,
                             "count/samples": 4, "bad/unusable": 0})
    assert values == {"loss/total": 0.5, "loss/ldm": 0.4, "loss/token/8x8": 0.1, "lr": 1e-5,
                      "throughput/samples_per_s": 2.0, "count/samples": 4, "bad/unusable": 0}


def test_a_tracker_that_is_not_installed_stops_before_the_model_loads(make_config):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(ModuleNotFoundError, match="report_to 'wandb' needs wandb: pip install wandb"):
        Trainer(make_config(report_to="wandb"))
