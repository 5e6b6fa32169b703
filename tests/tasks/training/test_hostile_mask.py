"""A shard whose mask RLE runs past the image (hostile or corrupt) must not reach pycocotools in the
training data pipeline: the noun is skipped and counted (nouns_bad_mask), the batch goes on."""
from __future__ import annotations

import numpy as np
import pytest
from transformers import CLIPTokenizerFast

from tokencompose.schemas.sample import CocoRLE
from tokencompose.tasks.grounding import masks
from tokencompose.tasks.shards.patterns import expand_shards
from tokencompose.tasks.training.data import STAT_KEYS, Preprocessor, make_loader
from tokencompose.tasks.training.trainer import format_record
from tests.support.training_kit import photo_samples, write_shards


def over_long_rle(height: int, width: int) -> dict:
    """Counts of a mask eight times the image's size under the image's size: pycocotools' decode
    would write 7 x height x width bytes past its buffer."""
    big = masks.encode(np.ones((height * 8, width), dtype=bool))
    return {"size": [height, width], "counts": big["counts"]}


def test_validate_rle_names_the_over_long_run():
    rle = over_long_rle(30, 20)
    assert "runs cover 4800 pixels, the size says 600" in masks.validate_rle(rle)
    with pytest.raises(masks.SegmentationProblem):
        masks.decode(rle)


def test_hostile_mask_in_a_shard_is_skipped_and_counted(tiny_sd, tmp_path):
    samples = photo_samples()
    record, image = samples[0]  # "a cat to the left of a cup": two nouns with masks
    nouns = list(record.nouns)
    nouns[0] = nouns[0].model_copy(update={"mask": CocoRLE(**over_long_rle(record.height, record.width))})
    samples[0] = (record.model_copy(update={"nouns": nouns}), image)
    shards = write_shards(tmp_path, samples, per_shard=4)
    tokenizer = CLIPTokenizerFast.from_pretrained(tiny_sd / "tokenizer")
    preprocess = Preprocessor(tokenizer, resolution=64, mask_resolutions=(4, 8, 16))
    loader = make_loader(expand_shards([str(shards / "*.tar")]), preprocess, batch_size=4, num_workers=0, seed=0,
                         shuffle_buffer=0)
    batch = next(iter(loader))
    assert batch.size == 4
    assert batch.stats["nouns_bad_mask"] == 1, "the hostile mask is counted"
    assert batch.stats["nouns_used"] == 7  # 9 masked nouns, one past the token window, one hostile
    row = batch.keys.index(record.key)
    assert batch.noun_valid[row].sum() == 1, "the cat is skipped, the cup kept"
    assert "nouns_bad_mask" in STAT_KEYS
    assert "skipped 3" in format_record({"step": 1, **{f"count/{k}": v for k, v in batch.stats.items()}})
