"""Fixtures of the training, MultiGen and flow tests: a tiny but real Stable Diffusion folder and tiny
build-grounded-coco shards, all offline. The root conftest registers this module as a plugin (pytest's way
to share fixtures across folders: one definition, so a session fixture is built once); torch and the
training kit are imported only when a test asks for a fixture, so collecting other tests does not load them."""
from __future__ import annotations

from pathlib import Path

import pytest


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """``build(folder)``'s result, made once for the whole run: under pytest-xdist the workers share one copy
    (the first builds it under a lock, into a temporary folder renamed when complete; as xdist's docs show)."""
    if worker_id == "master":
        return build(tmp_path_factory.mktemp(name) / name)
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent
    done = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_dir():
            partial = shared / f".{name}.partial"
            built = build(partial / name)
            built.rename(done)
    return done


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory, worker_id) -> Path:
    from tests.support.training_kit import build_tiny_sd

    return built_once(tmp_path_factory, worker_id, "tiny-sd", build_tiny_sd)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    from tests.support.training_kit import photo_samples, write_shards

    return write_shards(tmp_path_factory.mktemp("data"), photo_samples(), per_shard=2)


@pytest.fixture
def make_config(tiny_sd, shard_dir, tmp_path):
    """TrainConfig for the tiny model and shards, fast settings; keyword overrides."""
    from tests.support.training_kit import RESOLUTION, TINY_LAYERS
    from tokencompose.schemas.training import TrainConfig

    def make(**overrides) -> TrainConfig:
        values = dict(pretrained_model=tiny_sd, shards=[str(shard_dir / "shard-*.tar")], output_dir=tmp_path / "run",
                      resolution=RESOLUTION, train_layers=TINY_LAYERS, max_steps=2, train_batch_size=1,
                      gradient_accumulation_steps=1, num_workers=0, shuffle_buffer=4, gradient_checkpointing=False,
                      checkpoint_every=1000, log_every=1, export=False, seed=0)
        values.update(overrides)
        return TrainConfig(**values)
    return make
