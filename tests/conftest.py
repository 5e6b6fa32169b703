"""Offline settings for every test, and fixtures over tests/testkit.py."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from pathlib import Path

import pytest
import torch
from tests.support.testkit import SourceBuilder, demo_config
from tests.support.training_kit import RESOLUTION, TINY_LAYERS, build_tiny_sd, photo_samples, write_shards

from tokencompose.schemas.training import TrainConfig


@pytest.fixture
def make_demo_config(tmp_path):
    def make(name: str = "out", **overrides):
        return demo_config(tmp_path / name, **overrides)
    return make


@pytest.fixture
def source_builder(tmp_path) -> SourceBuilder:
    return SourceBuilder(tmp_path / "source")


# Training fixtures: a tiny but real Stable Diffusion folder and tiny build-grounded-coco shards, all offline.
@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("data"), photo_samples(), per_shard=2)


@pytest.fixture
def make_config(tiny_sd, shard_dir, tmp_path):
    """TrainConfig for the tiny model and shards, fast settings; keyword overrides."""
    def make(**overrides) -> TrainConfig:
        values = dict(pretrained_model=tiny_sd, shards=[str(shard_dir / "shard-*.tar")], output_dir=tmp_path / "run",
                      resolution=RESOLUTION, train_layers=TINY_LAYERS, max_steps=2, train_batch_size=1,
                      gradient_accumulation_steps=1, num_workers=0, shuffle_buffer=4, gradient_checkpointing=False,
                      checkpoint_every=1000, log_every=1, export=False, seed=0)
        values.update(overrides)
        return TrainConfig(**values)
    return make


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """Each Trainer builds its own Accelerator; accelerate keeps process-wide state between them."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def one_thread():
    """The tiny models are far too small to gain from intra-op threads (on a shared 2-core machine the
    pool's spinning makes each step several times slower); the thread count is restored afterwards so
    no other test sees it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API on a temporary database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
