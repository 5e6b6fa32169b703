"""The trainer's fp16 path on the CPU.

accelerate (1.15 here) accepts ``mixed_precision="fp16"`` on the CPU but creates no GradScaler there
(``Accelerator.scaler`` is None, ``native_amp`` False): the loss-scaling path only runs with a GPU.
So: (1) an fp16 run on the CPU as accelerate sets it up (frozen models in fp16, no scaler) trains to
the end; (2) the scaler path itself runs with torch's CPU GradScaler given to the Accelerator before
the trainer prepares its optimizer: an overflowing first step is skipped (weights unchanged) and the
scale halves; at a scale whose gradients fit, the next step updates the weights.
"""
import pytest
import torch
from accelerate import Accelerator

from tokencompose.tasks.training.trainer import Trainer


def test_fp16_on_the_cpu_trains_without_a_scaler(make_config, one_thread):
    trainer = Trainer(make_config(mixed_precision="fp16", max_steps=2))
    assert trainer.accelerator.scaler is None, "accelerate makes no GradScaler on the CPU"
    assert trainer.weight_dtype == torch.float16
    result = trainer.train()
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.last_metrics["loss"]))


def test_the_grad_scaler_skips_an_overflowing_step_and_lowers_its_scale(make_config, one_thread):
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("this torch has no device-generic GradScaler")
    accelerator = Accelerator(mixed_precision="fp16", cpu=True)
    huge = 2.0 ** 60  # gradients scaled by this overflow (fp16 activations): the first step must be skipped
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=huge, growth_interval=1000)
    accelerator.native_amp = True  # so that clip_grad_norm_ unscales first, as on a GPU
    trainer = Trainer(make_config(mixed_precision="fp16", max_steps=1, max_grad_norm=1.0, log_every=1),
                      accelerator=accelerator)
    before = {n: p.detach().clone() for n, p in trainer.unet.named_parameters() if p.requires_grad}
    batches = iter(trainer.loader())
    logs = trainer.train_step(batches)
    assert torch.isfinite(logs["loss"])
    assert accelerator.scaler.get_scale() == huge / 2, "an overflow halves the scale"
    after = dict(trainer.unet.named_parameters())
    assert all(torch.equal(before[n], after[n].detach()) for n in before), "the overflowing step was skipped"
    accelerator.scaler.update(new_scale=1.0)  # a scale whose gradients fit: the next step is taken
    trainer.train_step(batches)
    assert any(not torch.equal(before[n], after[n].detach()) for n in before), "a step within range updates"
    assert accelerator.scaler.get_scale() == 1.0
