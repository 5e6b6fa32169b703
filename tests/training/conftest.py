"""Fixtures: a tiny but real Stable Diffusion folder and tiny build-grounded-coco shards, all offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tokencompose.schemas.sample import SampleRecord  # noqa: E402
from tokencompose.tasks.shards import write_shard  # noqa: E402
from tokencompose.training.config import TrainConfig  # noqa: E402
from tokencompose.training.toy import box_mask, make_record, save_random_pipeline  # noqa: E402,F401

# The tiny models are far too small to gain from intra-op threads; on a shared 2-core machine the
# thread pool's spinning makes each step several times slower.
torch.set_num_threads(1)

RESOLUTION = 64  # VAE factor 4 -> latent 16 -> maps 4x4 (mid), 8x8 and 16x16 (decoder)
TINY_LAYERS = ("mid_block.attentions.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
               "up_blocks.2.attentions.0", "up_blocks.2.attentions.1")


def build_tiny_sd(path: Path) -> Path:
    return save_random_pipeline(path, "tiny")


def photo_samples() -> list[tuple[SampleRecord, bytes]]:
    from skimage import data

    cat, astronaut, coffee, rocket = data.chelsea(), data.astronaut(), data.coffee(), data.rocket()
    h, w = cat.shape[:2]
    samples = [
        make_record(1, cat, "a cat to the left of a cup", [("cat", box_mask(h, w, 0.05, 0.1, 0.55, 0.95)),
                                                          ("cup", box_mask(h, w, 0.6, 0.5, 0.9, 0.9))]),
    ]
    h, w = astronaut.shape[:2]
    samples.append(make_record(2, astronaut, "an astronaut above a flag and a rocket", [
        ("astronaut", box_mask(h, w, 0.1, 0.0, 0.8, 0.6)), ("flag", None),
        ("rocket", box_mask(h, w, 0.0, 0.7, 0.3, 1.0))]))
    h, w = coffee.shape[:2]
    samples.append(make_record(3, coffee, "a coffee cup on a saucer next to a spoon", [
        ("coffee cup", box_mask(h, w, 0.25, 0.1, 0.8, 0.7)), ("saucer", box_mask(h, w, 0.1, 0.3, 0.95, 0.95)),
        ("spoon", box_mask(h, w, 0.0, 0.6, 0.3, 0.9))]))
    h, w = rocket.shape[:2]
    long_caption = "a rocket " + "very " * 80 + "close to a tower"  # "tower" falls past the 77-token window
    samples.append(make_record(4, rocket, long_caption, [("rocket", box_mask(h, w, 0.4, 0.2, 0.6, 0.9)),
                                                       ("tower", box_mask(h, w, 0.7, 0.1, 0.9, 0.9))]))
    return samples


def write_shards(out_dir: Path, samples: list[tuple[SampleRecord, bytes]], per_shard: int) -> Path:
    for index, start in enumerate(range(0, len(samples), per_shard)):
        write_shard(out_dir, index, samples[start:start + per_shard], "jpg")
    return out_dir / "shards"


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


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
