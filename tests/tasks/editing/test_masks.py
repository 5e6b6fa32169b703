"""Edit masks from a file, a grounded shard's noun and a word's cross-attention; their bad inputs."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from tokencompose.schemas.editing import SamplerConfig
from tokencompose.tasks.editing.attention_over_time import aggregate, word_tokens
from tokencompose.tasks.editing.masks import (mask_from_file, shard_noun_mask, shard_sample, word_mask)
from tests.tasks.editing.conftest import SIDE


def save(tmp_path, array, mode=None, name="mask.png"):
    path = tmp_path / name
    Image.fromarray(array, mode).save(path)
    return path


def test_a_mask_file_of_another_size_is_resized_with_a_warning(tmp_path, caplog):
    small = np.zeros((8, 8), np.uint8)
    small[2:6, 2:6] = 255
    with caplog.at_level(logging.WARNING):
        mask = mask_from_file(save(tmp_path, small), (32, 32))
    assert mask.shape == (32, 32) and mask[8:24, 8:24].all() and mask.sum() == 16 * 16
    assert "resized" in caplog.text


def test_mask_modes_colour_is_read_as_grey_and_alpha_wins(tmp_path, caplog):
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[:4] = 255
    with caplog.at_level(logging.WARNING):
        assert mask_from_file(save(tmp_path, colour), (8, 8)).sum() == 32
    assert "read as grey levels" in caplog.text
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :2, 3] = 255                      # opaque = edit, whatever the colour
    assert mask_from_file(save(tmp_path, rgba, name="alpha.png"), (8, 8)).sum() == 16


def test_empty_mask_is_refused_and_full_mask_warns(tmp_path, caplog):
    with pytest.raises(ValueError, match="is empty: nothing to edit"):
        mask_from_file(save(tmp_path, np.zeros((8, 8), np.uint8)), (8, 8))
    with caplog.at_level(logging.WARNING):
        assert mask_from_file(save(tmp_path, np.full((8, 8), 255, np.uint8)), (8, 8)).all()
    assert "keeps no background" in caplog.text
    with pytest.raises(ValueError, match="cannot read the mask file"):
        mask_from_file(tmp_path / "none.png", (8, 8))


def test_a_grounded_shard_nouns_mask(shard_dir):
    from tokencompose.tasks.training.samples import read_shard

    shard = sorted(shard_dir.glob("shard-*.tar"))[0]
    key = next(read_shard(str(shard)))["__key__"]
    image, record = shard_sample(shard, key)
    mask = shard_noun_mask(record, "CAT", "here")
    assert mask.shape == image.shape[:2] and 0 < mask.mean() < 1
    with pytest.raises(ValueError, match="no noun 'dog'"):
        shard_noun_mask(record, "dog", "here")
    with pytest.raises(ValueError, match="no sample 'nope'"):
        shard_sample(shard, "nope")


def test_word_tokens_whole_words_only_and_split_words(tiny_pipe):
    assert word_tokens(tiny_pipe.tokenizer, "a cat and a dog", ["dog"]) == [[5]]
    assert word_tokens(tiny_pipe.tokenizer, "a hippopotamus", ["hippopotamus"]) == [[2, 3, 4]]
    with pytest.raises(ValueError, match="word 'ca' is not in the prompt"):
        word_tokens(tiny_pipe.tokenizer, "a cat", ["ca"])
    with pytest.raises(ValueError, match="token window"):
        word_tokens(tiny_pipe.tokenizer, "a " + "very " * 90 + "dog", ["dog"])


def test_word_mask_thresholds_the_aggregated_attention(tiny_pipe, photo):
    sampler = SamplerConfig(steps=2, strength=1.0, resolution=SIDE, background="none")
    mask, heat, tokens = word_mask(tiny_pipe, photo, "a hippopotamus on grass", "hippopotamus", sampler, 0.5)
    assert tokens == [2, 3, 4] and heat.shape == mask.shape == (SIDE, SIDE)
    assert 0 <= heat.min() < heat.max() <= 1          # scaled to [0, 1], then upsampled bilinearly
    np.testing.assert_array_equal(mask, heat >= 0.5)
    with pytest.raises(ValueError, match="strength 0"):
        word_mask(tiny_pipe, photo, "a dog", "dog", sampler.model_copy(update={"strength": 0.0}), 0.5)


def test_aggregate_resizes_to_the_largest_side_and_averages():
    steps = [{"a": np.ones((1, 2, 2), np.float32), "b": np.zeros((1, 4, 4), np.float32)},
             {"a": np.full((1, 2, 2), 3, np.float32), "b": np.zeros((1, 4, 4), np.float32)}]
    np.testing.assert_allclose(aggregate(steps), np.ones((1, 4, 4)))          # (1 + 0 + 3 + 0) / 4
    np.testing.assert_allclose(aggregate(steps, [1], [2]), np.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match="side"):
        aggregate(steps, sides=[8])
