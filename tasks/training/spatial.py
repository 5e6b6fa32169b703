"""Seed 000's spatial loss, with the direction kept, and where its relations come from.

Relations are parsed from the caption text: a relation phrase ("left of", "to the right of",
"above", "on top of", "below", "under", "beneath", "underneath") between two grounded nouns relates
the nearest noun ending before the phrase (``a``) to the nearest noun starting after it (``b``):
"a cat to the left of a dog" gives (cat, dog, LEFT), read "cat is left of dog".

The seed's loss, 1 - MSE((A_u - A_u') * (2 * 1[M_u > M_u'] - 1)), squares a +-1 sign away, so it
cannot tell "left of" from "right of". Here the sign comes from the relation and survives: with
P_a, P_b the two nouns' attention maps normalised to sum 1 and c(x) the coordinate along the
relation's axis in [-1, 1], positive on the side where ``a`` belongs (LEFT: c = -x, RIGHT: c = x,
ABOVE: c = -y, BELOW: c = y),

    S = sum_x c(x) * (P_a(x) - P_b(x))       (the signed distance between the two centroids)
    L_spatial = 1 - S / 2                    (0 best, 1 when the centroids coincide, up to 2 when reversed)

Swapping the direction (or the two nouns) turns S into -S.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

LEFT, RIGHT, ABOVE, BELOW = 0, 1, 2, 3
DIRECTIONS = {"left": LEFT, "right": RIGHT, "above": ABOVE, "below": BELOW}

_PATTERNS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"\b(?:(?:to|on) the )?left (?:side |hand side )?of\b"), LEFT),
    (re.compile(r"\b(?:(?:to|on) the )?right (?:side |hand side )?of\b"), RIGHT),
    (re.compile(r"\b(?:above|on top of)\b"), ABOVE),
    (re.compile(r"\b(?:below|underneath|under|beneath)\b"), BELOW),
)


def parse_relations(caption: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(a, b, direction) triples between the nouns at ``spans`` (indices into ``spans``)."""
    text = caption.lower()
    found = []
    for pattern, direction in _PATTERNS:
        for match in pattern.finditer(text):
            before = [i for i, (_, end) in enumerate(spans) if end <= match.start()]
            after = [i for i, (start, _) in enumerate(spans) if start >= match.end()]
            if not before or not after:
                continue
            a = max(before, key=lambda i: spans[i][1])
            b = min(after, key=lambda i: spans[i][0])
            if a != b:
                found.append((match.start(), (a, b, direction)))
    return [relation for _, relation in sorted(found)]


def axis_fields(size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """4 x size*size: the coordinate c(x) of each direction, flattened row-major like the attention maps."""
    coords = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype) if size > 1 else torch.zeros(1, device=device, dtype=dtype)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    fields = torch.stack([-x, x, -y, y])  # LEFT, RIGHT, ABOVE, BELOW
    return fields.reshape(4, size * size)


def spatial_loss(noun_maps: torch.Tensor, relations: torch.Tensor, relation_valid: torch.Tensor,
                 size: int) -> torch.Tensor:
    """Per-sample loss (B,) from noun maps (B, N, size*size), relations (B, R, 3), validity (B, R).

    Samples with no relation get 0.
    """
    batch, rel = relations.shape[:2]
    if rel == 0 or noun_maps.shape[1] == 0:
        return noun_maps.new_zeros(batch)
    probs = noun_maps / noun_maps.sum(-1, keepdim=True).clamp_min(1e-12)
    gather = lambda index: probs.gather(1, index[..., None].expand(batch, rel, probs.shape[-1]))  # noqa: E731
    diff = gather(relations[..., 0]) - gather(relations[..., 1])                       # B x R x HW
    field = axis_fields(size, probs.device, probs.dtype)[relations[..., 2]]             # B x R x HW
    score = (field * diff).sum(-1)
    valid = relation_valid.to(probs.dtype)
    return ((1.0 - score / 2.0) * valid).sum(-1) / valid.sum(-1).clamp_min(1.0)
