"""The training loop on the tiny model: learning, batch/accumulation equivalence, resume, export, precision."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tokencompose.tasks.training.data import collate
from tokencompose.tasks.training.trainer import CHECKPOINTS_DIR, METRICS_FILE, Trainer, latest_checkpoint


def unet_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.unet).state_dict().items()}


def first_moments(trainer: Trainer) -> list[torch.Tensor]:
    """AdamW's exp_avg after one step is (1 - beta1) * gradient: it exposes the gradient itself."""
    return [trainer.optimizer.state[p]["exp_avg"].clone() for p in trainer.accelerator.unwrap_model(trainer.unet).parameters()]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tolerance) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=lambda m: f"{name}: {m}", **tolerance)


def fixed_token_loss(trainer: Trainer, batch) -> float:
    """Token loss on a fixed batch with fixed noise (the draws depend only on the sample counter)."""
    samples = trainer.state.samples
    trainer.state.samples = 10_000
    with torch.no_grad():
        _, logs = trainer.compute_loss(batch)
    trainer.state.samples = samples
    return logs["token"].item()


@pytest.mark.slow
def test_a_few_dozen_steps_lower_the_token_loss(make_config):
    config = make_config(max_steps=30, learning_rate=1e-3, token_weight=1.0, pixel_weight=0.0, log_every=10)
    trainer = Trainer(config)
    stream = iter(trainer.loader().dataset)
    batch = collate([next(stream) for _ in range(4)])
    before = fixed_token_loss(trainer, batch)
    result = trainer.train()
    after = fixed_token_loss(trainer, batch)
    print(f"token loss on a fixed batch: {before:.4f} -> {after:.4f}")
    assert after < 0.7 * before, (before, after)
    assert result.steps == 30 and result.stats["nouns_no_token"] >= 1 and result.stats["nouns_no_mask"] >= 1
    records = [json.loads(line) for line in (config.output_dir / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30]
    assert {"token/4x4", "token/8x8", "token/16x16", "pixel/16x16", "ldm", "lr", "samples_per_s",
            "data_wait_fraction"} <= records[-1].keys()
    assert result.loss_curve is not None and result.loss_curve.stat().st_size > 1000


def test_batch_of_two_equals_two_accumulated_batches_of_one(make_config, tmp_path):
    # AdamW's first update is lr * g / (|g| + eps): with the default eps a gradient of ~1e-8 turns float
    # rounding into visible update differences; eps 1e-6 keeps the update smooth in g
    weights = dict(learning_rate=1e-4, token_weight=1.0, pixel_weight=0.1, max_grad_norm=None, max_steps=1,
                   adam_epsilon=1e-6)
    batched = Trainer(make_config(train_batch_size=2, gradient_accumulation_steps=1, output_dir=tmp_path / "b2", **weights))
    accumulated = Trainer(make_config(train_batch_size=1, gradient_accumulation_steps=2, output_dir=tmp_path / "a2",
                                      **weights))
    logs_b = batched.train_step(iter(batched.loader()))
    logs_a = accumulated.train_step(iter(accumulated.loader()))
    for key in ("ldm", "token", "pixel", "loss"):
        torch.testing.assert_close(logs_b[key], logs_a[key], rtol=1e-5, atol=1e-7)
    for m_b, m_a in zip(first_moments(batched), first_moments(accumulated)):
        torch.testing.assert_close(m_b, m_a, rtol=1e-4, atol=1e-5 * float(m_a.abs().max()))
    # an update differing from the other run's would differ by about lr = 1e-4; rounding differs by ~1e-7, and
    # through AdamW's g / (|g| + eps) up to 1.5e-6 where a gradient is about eps (measured on an Intel Xeon)
    assert_same(unet_state(batched), unet_state(accumulated), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(make_config, tmp_path):
    # two DataLoader workers and a checkpoint after an odd number of batches: the worker rotation matters
    common = dict(num_workers=2, checkpoint_every=3, learning_rate=1e-4, token_weight=1.0, pixel_weight=0.1)
    straight = Trainer(make_config(max_steps=4, output_dir=tmp_path / "straight", **common))
    straight.train()
    interrupted = Trainer(make_config(max_steps=3, output_dir=tmp_path / "resumed", **common))
    interrupted.train()
    assert latest_checkpoint(tmp_path / "resumed").name == "step-00000003"
    saved = load_file(latest_checkpoint(tmp_path / "resumed") / "model.safetensors")
    assert_same(saved, unet_state(interrupted), rtol=0, atol=0)
    resumed = Trainer(make_config(max_steps=4, output_dir=tmp_path / "resumed", **common))
    assert resumed.state.step == 3 and resumed.state.samples == 3
    resumed.train()
    assert_same(unet_state(resumed), unet_state(straight), rtol=0, atol=0)
    for m_r, m_s in zip(first_moments(resumed), first_moments(straight)):
        torch.testing.assert_close(m_r, m_s, rtol=0, atol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "resumed" / CHECKPOINTS_DIR).iterdir()) == ["step-00000003", "step-00000004"]


def test_the_exported_pipeline_loads_and_generates(make_config):
    from diffusers import StableDiffusionPipeline

    config = make_config(max_steps=1, export=True, gradient_checkpointing=True)
    trainer = Trainer(config)
    result = trainer.train()
    pipe = StableDiffusionPipeline.from_pretrained(result.pipeline_dir, local_files_only=True)
    assert_same(dict(pipe.unet.state_dict()), unet_state(trainer), rtol=0, atol=0)
    assert (result.pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    image = pipe("a cat to the left of a cup", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(torch.from_numpy(image)).all()


@pytest.mark.parametrize("precision", ["bf16"])
def test_mixed_precision_step_runs_on_cpu(make_config, precision):
    trainer = Trainer(make_config(mixed_precision=precision, gradient_checkpointing=True, train_batch_size=2,
                                  spatial_weight=1.0, aggregation="normalized"))
    before = unet_state(trainer)
    logs = trainer.train_step(iter(trainer.loader()))
    assert all(torch.isfinite(v) for v in logs.values()) and "spatial/16x16" in logs
    after = unet_state(trainer)
    assert all(v.dtype == torch.float32 for v in after.values())          # fp32 master weights
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_batch_without_any_usable_noun_trains_l_ldm_only(make_config):
    from PIL import Image
    from skimage import data

    from tokencompose.tasks.training.toy import make_record

    trainer = Trainer(make_config())
    image = data.coffee()
    record, _ = make_record(9, image, "a cup of coffee", [("cup", None), ("coffee", None)])
    batch = collate([trainer.preprocess.from_record(record, Image.fromarray(image))])
    assert batch.token_index.shape == (1, 0) and batch.stats["nouns_no_mask"] == 2
    loss, logs = trainer.compute_loss(batch)
    loss.backward()
    assert logs["token/16x16"] == 0 and logs["pixel"] == 0 and torch.isclose(loss, logs["ldm"])


def test_a_diverged_run_stops_without_exporting(make_config, tiny_sd, tmp_path):
    """NaN in the UNet's output: the first step's loss is NaN, the run raises and exports nothing."""
    from tokencompose.tasks.multigen.toy import perturbed_copy
    from tokencompose.tasks.training.trainer import TrainingDiverged

    broken = perturbed_copy(tiny_sd, tmp_path / "nan-sd", nan=True)
    config = make_config(pretrained_model=broken, max_steps=3, export=True, output_dir=tmp_path / "run")
    with pytest.raises(TrainingDiverged, match="step 1"):
        Trainer(config).train()
    assert not (tmp_path / "run" / "pipeline").exists()
