"""Evaluation fixtures shared by tests/tasks/multigen and tests/tasks/evaluation (registered in
tests/conftest.py): tiny random Stable Diffusion folders (the training tests' tiny_sd and variants), a tiny
random OWLv2 folder, all built offline, and the quick EvaluateConfig they run with."""
from __future__ import annotations

from pathlib import Path

import pytest

from tokencompose.schemas.evaluation import EvaluateConfig
from tokencompose.tasks.multigen.toy import perturbed_copy, save_random_owlv2

FAST = dict(generation={"images_per_prompt": 2, "steps": 2, "resolution": 32, "batch_size": 4,
                        "prompts_per_shard": 2},
            detection={"batch_size": 4},
            report={"bootstrap_samples": 200, "attention_prompts": 1, "grid_prompts": 2, "grid_images": 2})


@pytest.fixture(scope="session")
def tiny_owl(tiny_sd, tmp_path_factory) -> Path:
    return save_random_owlv2(tmp_path_factory.mktemp("owl") / "tiny-owlv2", tokenizer_dir=tiny_sd / "tokenizer")


@pytest.fixture(scope="session")
def tuned_sd(tiny_sd, tmp_path_factory) -> Path:
    return perturbed_copy(tiny_sd, tmp_path_factory.mktemp("tuned") / "tuned-sd", seed=1, scale=0.05)


@pytest.fixture(scope="session")
def nan_sd(tiny_sd, tmp_path_factory) -> Path:
    return perturbed_copy(tiny_sd, tmp_path_factory.mktemp("nan") / "nan-sd", nan=True)


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture
def make_eval_config(tiny_sd, tiny_owl, tmp_path):
    """EvaluateConfig for the tiny models: 4 prompts x 2 images, 2 steps at 32 px; keyword overrides."""
    def make(pipelines=None, prompts: int = 4, **overrides) -> EvaluateConfig:
        values = merge(FAST, {"pipelines": [str(p) for p in (pipelines or [tiny_sd])], "out_dir": str(tmp_path / "eval"),
                              "benchmark": {"limit": prompts}, "detection": {"detector": str(tiny_owl)},
                              "models": {"device": "cpu"}})
        return EvaluateConfig.model_validate(merge(values, overrides))
    return make
