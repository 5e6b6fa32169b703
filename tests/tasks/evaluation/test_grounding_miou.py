"""Grounding mIoU: IoU and binarisation against hand-computed cases, the aggregation against DAAM's rules
written out loop by loop on crafted maps, and the fast variant end to end on a tiny random SD and the
training kit's photo shards (finite values in [0, 1] per noun, the same for the same seed)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokencompose.tasks.evaluation.grounding_miou import (DAAM_THRESHOLD, HeatMapAccumulator, binarise, iou,
                                                          mean_iou, word_map)


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def test_iou_and_mean_iou_equal_hand_computed_values():
    prediction = torch.zeros(4, 4, dtype=torch.bool)
    prediction[0:2, 0:3] = True                      # 6 pixels
    truth = torch.zeros(4, 4, dtype=torch.bool)
    truth[1:3, 1:3] = True                           # 4 pixels, 2 shared with the prediction
    assert iou(prediction, truth) == pytest.approx(2 / 8, abs=1e-7)
    assert iou(truth, truth) == pytest.approx(1.0, abs=1e-7)
    assert iou(torch.zeros(4, 4), truth) == 0.0
    assert iou(torch.zeros(4, 4), torch.zeros(4, 4)) == 0.0      # nothing predicted, nothing to find: 0 (DAAM)
    assert mean_iou([0.25, 1.0, 0.0]) == pytest.approx(1.25 / 3)
    assert math.isnan(mean_iou([]))
    with pytest.raises(ValueError, match="different shapes"):
        iou(torch.zeros(4, 4), torch.zeros(2, 2))


def test_binarise_normalises_by_min_and_max_and_thresholds_strictly():
    # at its own size the bicubic resize is the identity, so the mask follows from the values by hand:
    # (v - 1) / (11 - 1) > 0.4  <=>  v > 5
    heat = torch.tensor([[1.0, 5.0, 5.5], [11.0, 3.0, 9.0], [4.0, 6.0, 2.0]])
    expected = torch.tensor([[False, False, True], [True, False, True], [False, True, False]])
    assert torch.equal(binarise(heat, 3), expected)
    assert torch.equal(binarise(heat * 7 + 3, 3), expected)          # any positive scale and shift: the same mask
    assert torch.equal(binarise(heat, 3, threshold=0.8), heat > 9)
    assert DAAM_THRESHOLD == 0.4
    assert binarise(heat, 12).shape == (12, 12)


def daam_reference(steps: list[dict[str, torch.Tensor]], latent: int, columns: list[list[int]], out: int,
                   tau: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """DAAM's code's path written out: per step, per layer, the conditional half's maps are unravelled per
    head and added to a (factor, layer, head) collection unless the factor is 8; each collected map is
    upsampled bicubically to the latent and clamped at 0; the mean over the collection; a word is the mean
    of its tokens; expand: bicubic to the output size, min-max with 1e-8, strictly above tau."""
    collection: dict[tuple[int, str, int], torch.Tensor] = {}
    for captured in steps:
        for layer, probs in captured.items():
            probs = probs[probs.shape[0] // 2:]                         # the conditional half
            side = int(math.sqrt(probs.shape[2]))
            factor = int(math.sqrt(latent * latent // probs.shape[2]))
            if factor == 8:
                continue
            for row in probs:
                for head in range(row.shape[0]):
                    heat = row[head].T.reshape(-1, side, side)          # tokens x side x side
                    key = (factor, layer, head)
                    collection[key] = collection.get(key, 0) + heat
    merged = [F.interpolate(heat.unsqueeze(1), size=(latent, latent), mode="bicubic").clamp_(min=0)
              for heat in collection.values()]
    maps = torch.stack(merged, 0).mean(0)[:, 0]
    masks = []
    for word in columns:
        im = F.interpolate(maps[word].mean(0)[None, None], size=(out, out), mode="bicubic")
        im = (im - im.min()) / (im.max() - im.min() + 1e-8)
        masks.append((im > tau).squeeze())
    return maps, masks


def crafted_step(generator: torch.Generator, batch: int, heads: int, tokens: int) -> dict[str, torch.Tensor]:
    """Captured maps of one guided step: layers at latent/1 (16x16), latent/2 (8x8) and a 2x2 one
    (factor 8 of a 16 latent, which DAAM leaves out), softmax-like positive values."""
    def probs(side: int) -> torch.Tensor:
        return torch.rand(batch, heads, side * side, tokens, generator=generator) ** 3
    return {"down_blocks.0.attentions.0.transformer_blocks.0.attn2": probs(16),
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2": probs(8),
            "up_blocks.1.attentions.1.transformer_blocks.0.attn2": probs(8),
            "mid_block.attentions.0.transformer_blocks.0.attn2": probs(2)}


def test_aggregation_equals_daams_rules_written_out():
    generator = torch.Generator().manual_seed(3)
    steps = [crafted_step(generator, batch=2, heads=3, tokens=4) for _ in range(3)]
    words = [[0], [1, 3], [2]]
    expected_maps, expected = daam_reference(steps, latent=16, columns=words, out=32, tau=DAAM_THRESHOLD)
    accumulator = HeatMapAccumulator(16)
    for captured in steps:
        accumulator.add(captured, rows=slice(1, None))                  # the conditional half of [uncond, cond]
    maps = accumulator.token_maps()
    assert maps.shape == (4, 16, 16) and accumulator.steps == 3
    assert "mid_block.attentions.0.transformer_blocks.0.attn2" not in accumulator.sums
    for columns, reference in zip(words, expected):
        assert torch.equal(binarise(word_map(maps, columns), 32), reference)
    assert torch.allclose(maps, expected_maps, rtol=1e-6, atol=1e-7)    # the maps themselves, not only the masks
    assert any(0 < m.sum() < m.numel() for m in expected)              # masks with both values: a real comparison
    # keeping the factor-8 maps changes the result (they are really left out above)
    kept = HeatMapAccumulator(16, skipped_factors=())
    for captured in steps:
        kept.add(captured, rows=slice(1, None))
    assert not torch.allclose(kept.token_maps(), maps)


def test_accumulator_rejects_what_it_cannot_place():
    with pytest.raises(ValueError, match="no attention maps"):
        HeatMapAccumulator(16).token_maps()
    with pytest.raises(ValueError, match="not a square"):
        HeatMapAccumulator(16).add({"a": torch.rand(1, 1, 12, 2)})
    with pytest.raises(ValueError, match="does not divide"):
        HeatMapAccumulator(16).add({"a": torch.rand(1, 1, 36, 2)})
    with pytest.raises(ValueError, match="at least one token"):
        word_map(torch.rand(2, 4, 4), [])


@pytest.fixture(scope="module")
def tiny_pipe(tiny_sd):
    from tokencompose.tasks.multigen.generation import load_pipeline

    return load_pipeline(tiny_sd, "cpu", torch.float32)


def test_fast_variant_end_to_end_on_a_tiny_random_sd(tiny_pipe, shard_dir):
    from tests.support.training_kit import RESOLUTION
    from tokencompose.tasks.evaluation.grounding_miou import evaluate_shards

    shards = [str(shard_dir / "shard-*.tar")]
    processors = dict(tiny_pipe.unet.attn_processors)
    first = evaluate_shards(tiny_pipe, shards, resolution=RESOLUTION, timesteps=(100, 400), seed=0)
    # the kit's 4 photos: 2 + 2 + 3 + 1 nouns with a mask and a token ("flag" has no mask, "tower" is past
    # the 77-token window)
    assert first.images == 4 and first.nouns == 8
    assert (first.nouns_without_mask, first.nouns_without_token) == (1, 1)
    assert [n.noun for n in first.per_noun] == ["cat", "cup", "astronaut", "rocket", "coffee cup", "saucer", "spoon",
                                                "rocket"]
    for noun in first.per_noun:
        assert math.isfinite(noun.iou) and 0.0 <= noun.iou <= 1.0
        assert 0 < noun.predicted_pixels < RESOLUTION ** 2 and noun.mask_pixels > 0
    assert first.miou == pytest.approx(sum(n.iou for n in first.per_noun) / 8)
    assert 0.0 <= first.miou <= 1.0
    # "coffee cup" has two tokens: both columns are the noun's
    assert len(first.per_noun[4].tokens) == 2
    # specificity: every noun but the last photo's lone "rocket" has another noun (with its own mask) to compare with
    assert [n.other_iou is None for n in first.per_noun] == [False] * 7 + [True]
    assert all(0.0 <= n.other_iou <= 1.0 for n in first.per_noun[:7])
    assert first.specific_nouns == 7
    assert first.specificity == pytest.approx(sum(n.iou - n.other_iou for n in first.per_noun[:7]) / 7)
    # the UNet's processors are restored
    assert {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()} == {k: type(v) for k, v in processors.items()}
    again = evaluate_shards(tiny_pipe, shards, resolution=RESOLUTION, timesteps=(100, 400), seed=0)
    assert again.model_dump() == first.model_dump()
    other = evaluate_shards(tiny_pipe, shards, resolution=RESOLUTION, timesteps=(100, 400), seed=1, max_samples=2)
    assert other.images == 2 and other.nouns == 4          # cat, cup; astronaut, rocket
    assert [n.iou for n in other.per_noun] != [n.iou for n in first.per_noun[:4]]     # other noise, other maps


def test_bad_timesteps_are_refused_before_work(tiny_pipe, shard_dir):
    from tokencompose.tasks.evaluation.grounding_miou import evaluate_shards

    with pytest.raises(ValueError, match="outside the scheduler"):
        evaluate_shards(tiny_pipe, [str(shard_dir / "shard-*.tar")], resolution=64, timesteps=(1000,))
    with pytest.raises(ValueError, match="at least one timestep"):
        evaluate_shards(tiny_pipe, [str(shard_dir / "shard-*.tar")], resolution=64, timesteps=())


def test_broken_samples_and_shards_are_counted_not_evaluated(tiny_pipe, tmp_path):
    from tests.support.hostile_shards import MAKERS, members, small_photo_samples, truncate, write_samples
    from tokencompose.tasks.evaluation.grounding_miou import evaluate_shards

    samples = small_photo_samples(4)
    write_samples(tmp_path / "a.tar", [members(*samples[0]), MAKERS["json_invalid"](*samples[1]),
                                       members(*samples[2])])
    truncate(write_samples(tmp_path / "b.tar", [members(*samples[3])] * 1), keep=0.3)
    result = evaluate_shards(tiny_pipe, [str(tmp_path / "*.tar")], resolution=64, timesteps=(200,))
    assert result.images == 2 and result.nouns == 4
    assert result.skipped_samples == {"json_invalid": 1, "unreadable_shard": 1}
    assert all(0.0 <= n.iou <= 1.0 for n in result.per_noun)


def _reconstruction_error(pipe, latent, cond, nulls, scheduler, guidance):
    """|z_0 - the guided DDIM reconstruction from z_T with the given null embeddings|, mean absolute."""
    from tokencompose.tasks.evaluation.grounding_miou import _ddim_move, _stride

    current, stride = latent[1], _stride(scheduler)
    with torch.no_grad():
        for t, null in zip(scheduler.timesteps.tolist(), nulls):
            eps_u = pipe.unet(current, t, encoder_hidden_states=null).sample
            eps_c = pipe.unet(current, t, encoder_hidden_states=cond).sample
            current = _ddim_move(scheduler, eps_u + guidance * (eps_c - eps_u), t, t - stride, current)
    return float((current - latent[0]).abs().mean())


def test_null_text_inversion_reconstructs_the_real_latent_better_than_the_plain_null_text(tiny_pipe):
    """Null-text inversion's defining property: with the optimised null embeddings the guided DDIM
    reconstruction from z_T lands nearer the real latent than with the plain null-text embedding."""
    from tokencompose.tasks.evaluation.grounding_miou import null_text_inversion

    torch.manual_seed(0)
    latent = torch.randn(1, 4, 16, 16)
    tokens = tiny_pipe.tokenizer(["a cat and a dog", ""], padding="max_length", max_length=77,
                                 return_tensors="pt").input_ids
    with torch.no_grad():
        cond, uncond = (tiny_pipe.text_encoder(ids[None])[0] for ids in tokens)
    end, nulls, scheduler = null_text_inversion(tiny_pipe, latent, cond, uncond, steps=5, guidance=7.5,
                                                inner_steps=20, learning_rate=5e-2)
    assert len(nulls) == 5 and all(n.shape == uncond.shape for n in nulls)
    optimised = _reconstruction_error(tiny_pipe, (latent, end), cond, nulls, scheduler, 7.5)
    plain = _reconstruction_error(tiny_pipe, (latent, end), cond, [uncond] * 5, scheduler, 7.5)
    assert optimised < 0.5 * plain, (optimised, plain)


def test_daam_protocol_end_to_end_on_a_tiny_random_sd(tiny_pipe, shard_dir):
    from tests.support.training_kit import RESOLUTION
    from tokencompose.tasks.evaluation.grounding_miou import evaluate_shards

    processors = dict(tiny_pipe.unet.attn_processors)
    result = evaluate_shards(tiny_pipe, [str(shard_dir / "shard-*.tar")], resolution=RESOLUTION, protocol="daam",
                             daam_steps=3, inner_steps=2, max_samples=2)
    assert result.protocol == "daam" and result.daam_steps == 3 and result.timesteps == []
    assert result.images == 2 and result.nouns > 0 and 0 <= result.miou <= 1
    assert "Table 4" in result.note
    assert {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()} == {k: type(v) for k, v in processors.items()}
    with pytest.raises(ValueError, match="fast or daam"):
        evaluate_shards(tiny_pipe, [str(shard_dir / "shard-*.tar")], resolution=RESOLUTION, protocol="exact")
