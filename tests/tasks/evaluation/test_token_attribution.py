"""Token attribution (docs/world.md, protocol v3): the neighbour tokens of a noun, the IoU of one token's map
with a mask, the guarantee that capturing the neighbours leaves every noun's map (and so every existing IoU)
unchanged, and the neighbours' figures end to end on a tiny random SD and the training kit's photo shards."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def test_neighbours_are_the_tokens_right_after_and_before_the_noun_inside_the_window():
    from tokencompose.tasks.evaluation.grounding_miou import neighbour_positions

    assert neighbour_positions([3], 77) == (4, 2)
    assert neighbour_positions([5, 6], 77) == (7, 4)             # a two-token noun: after its last, before its first
    assert neighbour_positions([1], 77) == (2, None)             # position 0 is the start token, not a neighbour
    assert neighbour_positions([76], 77) == (None, 75)           # nothing after the window's last token


def test_one_tokens_iou_binarises_its_own_map_at_the_masks_size():
    from tokencompose.tasks.evaluation.grounding_miou import token_iou

    truth = torch.zeros(8, 8, dtype=torch.bool)
    truth[:4] = True
    maps = torch.zeros(2, 8, 8)
    maps[0, 4:] = 1.0                                            # column 0: the other half
    maps[1, :4] = 1.0                                            # column 1: exactly the mask
    column_of = {9: 0, 10: 1}
    assert token_iou(maps, column_of, 10, truth, 0.4) == pytest.approx(1.0, abs=1e-6)
    assert token_iou(maps, column_of, 9, truth, 0.4) == 0.0
    assert token_iou(maps, column_of, None, truth, 0.4) is None


def test_a_tokens_map_is_the_same_whatever_other_columns_are_captured(tiny_pipe):
    from tests.support.training_kit import RESOLUTION
    from tokencompose.tasks.evaluation.grounding_miou import fast_token_maps

    ids = tiny_pipe.tokenizer("a cat, a cup and a spoon", padding="max_length", max_length=77,
                              return_tensors="pt").input_ids[0]
    pixels = torch.rand(3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = dict(key="k", seed=0, timesteps=(100, 400))
    alone = fast_token_maps(tiny_pipe, pixels, ids, [2], **settings)
    together = fast_token_maps(tiny_pipe, pixels, ids, [1, 2, 3, 5], **settings)
    assert torch.equal(alone[0], together[1])


def test_each_noun_records_its_neighbours_iou_with_its_own_mask(tiny_pipe, shard_dir):
    from tests.support.training_kit import RESOLUTION
    from tokencompose.tasks.evaluation.grounding_miou import evaluate_shards

    result = evaluate_shards(tiny_pipe, [str(shard_dir / "shard-*.tar")], resolution=RESOLUTION, timesteps=(100, 400),
                             seed=0)
    assert result.nouns == 8
    for noun in result.per_noun:
        assert (noun.next_iou is None) == (max(noun.tokens) + 1 >= 77), noun
        assert (noun.previous_iou is None) == (min(noun.tokens) == 1), noun
        assert all(0.0 <= v <= 1.0 for v in (noun.next_iou, noun.previous_iou) if v is not None), noun
    # a random model's maps differ from token to token: the neighbours are not the noun's own map again
    assert [n.next_iou for n in result.per_noun] != [n.iou for n in result.per_noun]
