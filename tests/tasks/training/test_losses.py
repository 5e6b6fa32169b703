"""The grounding losses against hand-computed values and a direct loop over reference.md's formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokencompose.tasks.training.losses import Targets, grounding_losses
from tokencompose.tasks.training.spatial import ABOVE, BELOW, LEFT, RIGHT, parse_relations, spatial_loss


def one_noun_targets(mask: torch.Tensor, tokens: int = 1) -> Targets:
    """One sample, one noun covering ``tokens`` slots, mask (r, r)."""
    r = mask.shape[-1]
    return Targets(slot_noun=torch.ones(1, 1, tokens), noun_valid=torch.ones(1, 1, dtype=torch.bool),
                   masks={r: mask.reshape(1, 1, r, r).float()})


def test_attention_inside_the_mask_gives_zero_token_loss():
    r = 4
    mask = torch.zeros(r, r)
    mask[:2, :2] = 1
    attn = torch.zeros(1, 2, r * r, 1)                     # B, heads, U, K
    attn[0, 0, mask.flatten() > 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    attn[0, 1, mask.flatten() > 0, 0] = 0.25
    for aggregation in ("reference", "normalized"):
        out = grounding_losses({"a": attn}, {"a": r}, one_noun_targets(mask), aggregation)
        assert out["token"].item() == pytest.approx(0.0, abs=1e-7)


def test_uniform_attention_gives_the_expected_values():
    r, heads, value = 4, 2, 0.1
    mask = torch.zeros(r, r)
    mask[:, :1] = 1                                           # 4 of 16 positions
    attn = torch.full((1, heads, r * r, 2), value)          # one noun with two tokens
    targets = one_noun_targets(mask, tokens=2)
    expected_token = (1 - 4 / 16) ** 2
    # reference: the token terms of the two maps of the group are summed
    out = grounding_losses({"a": attn, "b": attn.clone()}, {"a": r, "b": r}, targets, "reference")
    assert out["token/4x4"].item() == pytest.approx(2 * expected_token)
    p = 2 * value                                            # summed over the noun's two tokens
    expected_pixel = -(4 / 16 * math.log(p) + 12 / 16 * math.log(1 - p))
    assert out["pixel/4x4"].item() == pytest.approx(expected_pixel, rel=1e-6)
    # normalized: mean over maps, and the pixel loss per token
    out = grounding_losses({"a": attn, "b": attn.clone()}, {"a": r, "b": r}, targets, "normalized")
    assert out["token"].item() == pytest.approx(expected_token)
    assert out["pixel"].item() == pytest.approx(-(4 / 16 * math.log(value) + 12 / 16 * math.log(1 - value)), rel=1e-6)


def random_case(seed: int = 0):
    """Two samples (3 nouns with 1-2 tokens, 1 noun), two groups: 4x4 (1 map) and 8x8 (2 maps)."""
    g = torch.Generator().manual_seed(seed)
    heads, k = 3, 4
    noun_tokens = [[[0], [1, 2], [3]], [[0]]]
    resolutions = {"mid": 4, "up.0": 8, "up.1": 8}
    maps = {name: torch.rand(2, heads, r * r, k, generator=g) * 0.3 for name, r in resolutions.items()}
    slot_noun = torch.zeros(2, 3, k)
    noun_valid = torch.zeros(2, 3, dtype=torch.bool)
    for b, nouns in enumerate(noun_tokens):
        for n, slots in enumerate(nouns):
            noun_valid[b, n] = True
            slot_noun[b, n, slots] = 1
    masks = {r: (torch.rand(2, 3, r, r, generator=g) > 0.6).float() * noun_valid[..., None, None] for r in (4, 8)}
    return maps, resolutions, Targets(slot_noun, noun_valid, masks), noun_tokens


def loop_reference(maps, resolutions, targets, noun_tokens):
    """reference.md section 2, term by term with Python loops (no vectorisation)."""
    token, pixel = [], []
    for b, nouns in enumerate(noun_tokens):
        tok_total, pix_total = 0.0, 0.0
        for r in sorted(set(resolutions.values())):
            group = [maps[name][b] for name, res in resolutions.items() if res == r]  # heads x U x K
            mask = targets.masks[r][b].flatten(1)
            tok = 0.0
            for i, slots in enumerate(nouns):
                for attn in group:
                    per_token = 0.0
                    for t in slots:
                        ratios = [float((attn[h, :, t] * mask[i]).sum() / attn[h, :, t].sum())
                                  for h in range(attn.shape[0])]
                        per_token += (1 - sum(ratios) / len(ratios)) ** 2
                    tok += per_token / len(slots)
            tok_total += tok / len(nouns)
            abar = sum(attn.mean(0) for attn in group) / len(group)   # U x K
            pix = 0.0
            for i, slots in enumerate(nouns):
                p = sum(abar[:, t] for t in slots)
                pix += float(F.binary_cross_entropy(p, mask[i]))
            pix_total += pix / len(nouns)
        token.append(tok_total)
        pixel.append(pix_total)
    return torch.tensor(token), torch.tensor(pixel)


def loop_normalized(maps, resolutions, targets, noun_tokens):
    token, pixel = [], []
    for b, nouns in enumerate(noun_tokens):
        tok_maps, pix_maps = [], []
        for name, r in resolutions.items():
            abar = maps[name][b].mean(0)
            mask = targets.masks[r][b].flatten(1)
            tok_n, pix_n = [], []
            for i, slots in enumerate(nouns):
                tok_n.append(sum(float(1 - (abar[:, t] * mask[i]).sum() / abar[:, t].sum()) ** 2 for t in slots)
                             / len(slots))
                pix_n.append(sum(float(F.binary_cross_entropy(abar[:, t], mask[i])) for t in slots) / len(slots))
            tok_maps.append(sum(tok_n) / len(tok_n))
            pix_maps.append(sum(pix_n) / len(pix_n))
        token.append(sum(tok_maps) / len(tok_maps))
        pixel.append(sum(pix_maps) / len(pix_maps))
    return torch.tensor(token), torch.tensor(pixel)


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_aggregation_matches_a_direct_loop(seed):
    maps, resolutions, targets, noun_tokens = random_case(seed)
    out = grounding_losses(maps, resolutions, targets, "reference")
    token, pixel = loop_reference(maps, resolutions, targets, noun_tokens)
    torch.testing.assert_close(out["token"], token, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["pixel"], pixel, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["token"], out["token/4x4"] + out["token/8x8"])


def test_normalized_aggregation_matches_a_direct_loop():
    maps, resolutions, targets, noun_tokens = random_case(2)
    out = grounding_losses(maps, resolutions, targets, "normalized")
    token, pixel = loop_normalized(maps, resolutions, targets, noun_tokens)
    torch.testing.assert_close(out["token"], token, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["pixel"], pixel, rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_a_sample_and_gradients_flow():
    maps, resolutions, targets, _ = random_case(3)
    maps = {k: v.requires_grad_() for k, v in maps.items()}
    both = grounding_losses(maps, resolutions, targets, "reference")
    # the second sample alone, without the padding its batch-mate forced on it
    alone_maps = {k: v[1:2, :, :, :1] for k, v in maps.items()}
    alone = Targets(targets.slot_noun[1:2, :1, :1], targets.noun_valid[1:2, :1],
                    {r: m[1:2, :1] for r, m in targets.masks.items()})
    single = grounding_losses(alone_maps, resolutions, alone, "reference")
    for term in ("token", "pixel"):
        torch.testing.assert_close(both[term][1:], single[term])
    (both["token"].sum() + both["pixel"].sum()).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in maps.values())


def test_a_sample_without_nouns_has_zero_grounding_loss():
    maps = {"a": torch.rand(1, 2, 16, 1)}
    targets = Targets(torch.zeros(1, 0, 1), torch.zeros(1, 0, dtype=torch.bool), {4: torch.zeros(1, 0, 4, 4)})
    out = grounding_losses(maps, {"a": 4}, targets)
    assert out["token"].item() == 0 and out["pixel"].item() == 0


def test_spatial_loss_keeps_the_direction():
    r = 4
    left = torch.zeros(r, r)
    left[:, 0] = 1
    right = torch.zeros(r, r)
    right[:, -1] = 1
    noun_maps = torch.stack([left, right]).reshape(1, 2, r * r)   # noun 0 on the left, noun 1 on the right
    valid = torch.ones(1, 1, dtype=torch.bool)
    loss = lambda a, b, d: spatial_loss(noun_maps, torch.tensor([[[a, b, d]]]), valid, r).item()  # noqa: E731
    assert loss(0, 1, LEFT) == pytest.approx(0.0)       # correct: centroids at the two borders
    assert loss(0, 1, RIGHT) == pytest.approx(2.0)      # reversed relation is penalised, not ignored
    assert loss(1, 0, LEFT) == pytest.approx(2.0)
    assert loss(0, 1, ABOVE) == pytest.approx(1.0)      # no vertical separation: neutral
    top = torch.zeros(r, r)
    top[0] = 1
    bottom = torch.zeros(r, r)
    bottom[-1] = 1
    vertical = torch.stack([top, bottom]).reshape(1, 2, r * r)
    assert spatial_loss(vertical, torch.tensor([[[0, 1, ABOVE]]]), valid, r).item() == pytest.approx(0.0)
    assert spatial_loss(vertical, torch.tensor([[[0, 1, BELOW]]]), valid, r).item() == pytest.approx(2.0)
    none = spatial_loss(vertical, torch.zeros(1, 0, 3, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool), r)
    assert none.item() == 0.0


@pytest.mark.parametrize("caption, nouns, expected", [
    ("a cat to the left of a dog", ["cat", "dog"], [(0, 1, LEFT)]),
    ("A dog on the right side of a tree", ["dog", "tree"], [(0, 1, RIGHT)]),
    ("a lamp on top of a desk beside a bed", ["lamp", "desk", "bed"], [(0, 1, ABOVE)]),
    ("a cat sleeping under a chair", ["cat", "chair"], [(0, 1, BELOW)]),
    ("a bird above a man below a cloud", ["bird", "man", "cloud"], [(0, 1, ABOVE), (1, 2, BELOW)]),
    ("a cat and a dog", ["cat", "dog"], []),
    ("a dog to the left", ["dog"], []),
])
def test_relations_are_parsed_from_caption_patterns(caption, nouns, expected):
    spans = []
    for noun in nouns:
        start = caption.index(noun)
        spans.append((start, start + len(noun)))
    assert parse_relations(caption, spans) == expected
