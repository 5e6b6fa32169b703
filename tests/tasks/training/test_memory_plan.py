"""Automatic sizing: the pure planning function on crafted memory figures, and the trainer on CPU
(no probe: the configuration's values, said in the log)."""
from __future__ import annotations

import json
import logging

import pytest

from tokencompose.tasks.training.trainer import PLAN_FILE, ActivationCost, MemoryPlan, Trainer, plan_memory

GiB = 2 ** 30
SD14 = 860_000_000                                 # UNet parameters: 16 bytes each = 12.8 GiB
PLAIN = ActivationCost(base=GiB // 2, per_sample=GiB)            # without checkpointing
CKPT = ActivationCost(base=GiB // 4, per_sample=GiB // 8)        # with checkpointing


def plan(total_gib: float, effective: int, plain=PLAIN, ckpt=CKPT, **kw) -> MemoryPlan:
    return plan_memory(int(total_gib * GiB), SD14, plain, ckpt, effective_batch=effective, other_bytes=GiB,
                       headroom=0.9, **kw)


def test_the_probe_figures_give_slope_and_intercept():
    assert ActivationCost.from_probe(1, 3 * GiB // 2, 2, 5 * GiB // 2) == PLAIN
    assert PLAIN.fits(10 * GiB) == 9 and PLAIN.fits(GiB // 4) == 0


def test_a_large_gpu_runs_the_whole_effective_batch_without_checkpointing():
    # 80 GiB: 72 - 12.8 - 1 = 58.2 GiB left, 57 samples fit
    p = plan(80, 32)
    assert (p.batch_size, p.accumulation, p.gradient_checkpointing) == (32, 1, False)
    # the paper's 1 x 4 becomes one batch of 4, exactly 4 samples per step
    p = plan(80, 4)
    assert (p.batch_size, p.accumulation, p.gradient_checkpointing) == (4, 1, False)
    # more than fits: the largest divisor of the effective batch that fits, accumulation for the rest
    p = plan(80, 96)
    assert (p.batch_size, p.accumulation, p.gradient_checkpointing) == (48, 2, False)


def test_checkpointing_only_when_the_batch_without_it_is_below_the_target():
    # 24 GiB: 21.6 - 13.8 = 7.8 GiB: 7 samples without checkpointing, below min_batch 8
    p = plan(24, 32)
    assert (p.batch_size, p.accumulation, p.gradient_checkpointing) == (32, 1, True)
    # ... but 7 is enough for an effective batch of 4: no checkpointing
    p = plan(24, 4)
    assert (p.batch_size, p.accumulation, p.gradient_checkpointing) == (4, 1, False)
    # a lower target: 7 >= 6 samples fit, batch 6 of 12, no checkpointing
    p = plan(24, 12, min_batch=6)
    assert (p.batch_size, p.accumulation, p.gradient_checkpointing) == (6, 2, False)


def test_small_gpus_checkpoint_and_accumulate_or_refuse():
    # 16 GiB: 14.4 - 13.8 = 0.6 GiB: nothing without checkpointing, 2 samples with it
    p = plan(16, 4)
    assert (p.batch_size, p.accumulation, p.gradient_checkpointing) == (2, 2, True)
    with pytest.raises(MemoryError, match="not even one sample fits"):
        plan(12, 4)
    # checkpointing that fits no larger batch is not worth its recomputation
    same = ActivationCost(base=PLAIN.base, per_sample=PLAIN.per_sample - 1)
    p = plan(24, 8, ckpt=same)
    assert (p.batch_size, p.accumulation, p.gradient_checkpointing) == (4, 2, False)


def test_on_cpu_auto_batch_keeps_the_configuration(make_config, caplog):
    config = make_config(auto_batch=True, effective_batch=16, train_batch_size=2, gradient_accumulation_steps=3)
    with caplog.at_level(logging.INFO, logger="tokencompose.tasks.training"):
        trainer = Trainer(config)
    assert (trainer.batch_size, trainer.accumulation, trainer.plan.gradient_checkpointing) == (2, 3, False)
    assert "no CUDA device, the memory probe is skipped" in caplog.text
    assert json.loads((config.output_dir / PLAN_FILE).read_text())["batch_size"] == 2
    assert not trainer.fused_optimizer            # fused AdamW is for CUDA parameters only
