"""Shared pieces of the training tests: the tiny model's layout and photo shards (offline)."""
from __future__ import annotations

from pathlib import Path

from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.shards.build import write_shard
from tokencompose.tasks.training.toy import box_mask, make_record, save_random_pipeline

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
