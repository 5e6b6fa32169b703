"""Token, pixel (and spatial) losses on captured cross-attention maps, in two aggregations.

Shapes: a captured map is (B, H, U, K): batch, heads, U = r*r query positions, K (noun, token)
slots; ``slot_noun`` (B, N, K) says which noun each slot belongs to; ``masks[r]`` is (B, N, r, r)
0/1; ``noun_valid`` (B, N). Every loss comes back per sample, shape (B,), so that a batch of B
averages exactly like B accumulated batches of 1.

"reference" reproduces the authors' code (docs/training.md has the formulas):
  token, per group g:  (1/N) sum_i sum_{m in g} (1/|T_i|) sum_{t in T_i} (1 - mean_h [ratio_h(m, t, i)])^2
  pixel, per group g:  (1/N) sum_i BCE_mean( sum_{t in T_i} Abar_g(., t), M_i ),  Abar_g = mean over heads and maps
  totals: summed over groups.
"normalized" follows the paper's text and removes the dependence on how many layers are trained:
  ratio of the head-averaged map, pixel BCE per token on the head-averaged map, everything averaged
  over tokens, nouns and maps; a group's value is the mean over its maps, the total the mean over all maps.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from tokencompose.tasks.training.spatial import spatial_loss


@dataclass
class Targets:
    slot_noun: torch.Tensor            # B x N x K
    noun_valid: torch.Tensor           # B x N bool
    masks: dict[int, torch.Tensor]     # r -> B x N x r x r
    relations: torch.Tensor | None = None       # B x R x 3
    relation_valid: torch.Tensor | None = None  # B x R


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict (L_LDM's target), by the scheduler's prediction type: the noise
    (SD1.x, SD2-base), the velocity ``sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * latents`` (SD2/2.1
    768 px) or the clean latents."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"prediction_type {kind!r} has no training target")


def group_name(resolution: int) -> str:
    return f"{resolution}x{resolution}"


def _per_noun_mean(values: torch.Tensor, slot_noun: torch.Tensor) -> torch.Tensor:
    """(B, K) per-slot values -> (B, N) mean over each noun's slots."""
    return torch.einsum("bnk,bk->bn", slot_noun, values) / slot_noun.sum(-1).clamp_min(1.0)


def _per_sample_mean(values: torch.Tensor, noun_valid: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B,) mean over the valid nouns; 0 for a sample without any."""
    valid = noun_valid.to(values.dtype)
    return (values * valid).sum(-1) / valid.sum(-1).clamp_min(1.0)


def _bce(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # torch's BCE (log clamped at -100); rounding can push a sum of probabilities just past 1
    with torch.autocast(probs.device.type, enabled=False):
        dtype = torch.promote_types(probs.dtype, torch.float32)
        return F.binary_cross_entropy(probs.to(dtype).clamp(0.0, 1.0), target.to(dtype), reduction="none")


def _noun_maps(mean_map: torch.Tensor, slot_noun: torch.Tensor) -> torch.Tensor:
    """(B, U, K) map -> (B, N, U): each noun's map summed over its token slots."""
    return torch.einsum("bnk,buk->bnu", slot_noun, mean_map)


def _group_token_reference(maps: list[torch.Tensor], slot_mask: torch.Tensor, t: Targets) -> torch.Tensor:
    per_noun: torch.Tensor | None = None
    for attn in maps:
        inside = torch.einsum("bhuk,bku->bhk", attn, slot_mask)
        ratio = (inside / attn.sum(2)).mean(1)                      # per-head ratio, then head mean
        term = _per_noun_mean((1.0 - ratio) ** 2, t.slot_noun)
        per_noun = term if per_noun is None else per_noun + term     # maps summed
    assert per_noun is not None, "a resolution group holds at least one map"
    return _per_sample_mean(per_noun, t.noun_valid)


def _group_pixel_reference(maps: list[torch.Tensor], mask: torch.Tensor, t: Targets) -> torch.Tensor:
    mean_map = torch.stack([attn.mean(1) for attn in maps]).mean(0)   # heads and maps averaged
    bce = _bce(_noun_maps(mean_map, t.slot_noun), mask).mean(-1)
    return _per_sample_mean(bce, t.noun_valid)


def _map_token_normalized(attn: torch.Tensor, slot_mask: torch.Tensor, t: Targets) -> torch.Tensor:
    mean_map = attn.mean(1)                                           # B x U x K
    ratio = torch.einsum("buk,bku->bk", mean_map, slot_mask) / mean_map.sum(1)
    return _per_sample_mean(_per_noun_mean((1.0 - ratio) ** 2, t.slot_noun), t.noun_valid)


def _map_pixel_normalized(attn: torch.Tensor, slot_mask: torch.Tensor, t: Targets) -> torch.Tensor:
    bce = _bce(attn.mean(1), slot_mask.transpose(1, 2)).mean(1)       # B x K
    return _per_sample_mean(_per_noun_mean(bce, t.slot_noun), t.noun_valid)


def grounding_losses(maps: dict[str, torch.Tensor], resolutions: dict[str, int], targets: Targets,
                     aggregation: Literal["reference", "normalized"] = "reference",
                     spatial: bool = False) -> dict[str, torch.Tensor]:
    """Per-sample losses: ``token``, ``pixel`` (and ``spatial``) totals plus ``<term>/<group>`` parts."""
    if aggregation not in ("reference", "normalized"):
        raise ValueError(f"unknown aggregation {aggregation!r}")
    groups: dict[int, list[torch.Tensor]] = defaultdict(list)
    dtype = torch.float64 if any(a.dtype == torch.float64 for a in maps.values()) else torch.float32
    for layer, attn in maps.items():
        groups[resolutions[layer]].append(attn.to(dtype))
    targets = Targets(targets.slot_noun.to(dtype), targets.noun_valid, targets.masks, targets.relations,
                      targets.relation_valid)
    terms = ("token", "pixel", "spatial") if spatial else ("token", "pixel")
    batch = targets.noun_valid.shape[0]
    reference = next(iter(maps.values())) if maps else targets.slot_noun
    out = {term: reference.new_zeros(batch) for term in terms}
    total_maps = sum(len(g) for g in groups.values())
    with torch.autocast(reference.device.type, enabled=False):
        for resolution in sorted(groups):
            group = groups[resolution]
            mask = targets.masks[resolution].flatten(2).to(dtype)                   # B x N x U
            slot_mask = torch.einsum("bnk,bnu->bku", targets.slot_noun.to(dtype), mask)  # B x K x U
            name = group_name(resolution)
            if aggregation == "reference":
                parts = {"token": _group_token_reference(group, slot_mask, targets),
                         "pixel": _group_pixel_reference(group, mask, targets)}
                weight = 1.0
            else:
                parts = {"token": torch.stack([_map_token_normalized(a, slot_mask, targets) for a in group]).mean(0),
                         "pixel": torch.stack([_map_pixel_normalized(a, slot_mask, targets) for a in group]).mean(0)}
                weight = len(group) / total_maps
            if spatial:
                assert targets.relations is not None and targets.relation_valid is not None, "spatial needs relations"
                mean_map = torch.stack([a.mean(1) for a in group]).mean(0)
                parts["spatial"] = spatial_loss(_noun_maps(mean_map, targets.slot_noun), targets.relations,
                                                targets.relation_valid, resolution)
            for term, value in parts.items():
                out[f"{term}/{name}"] = value
                out[term] = out[term] + weight * value
    return out
