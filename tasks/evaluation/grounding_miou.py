"""Grounding (knowledge transfer): how well a model's cross-attention maps segment the nouns of a real
image's caption, as the mIoU between each noun's binarised attention map and its human mask.

Two protocols share one aggregation:

- **DAAM's protocol** (Tang et al., "What the DAAM", castorini/daam): the image is reconstructed by a
  denoising run (for a real image, after a null-text inversion) while every cross-attention map is
  captured, then aggregated with DAAM's code's rules. :class:`HeatMapAccumulator` (+ :func:`word_map`,
  :func:`binarise`, :func:`iou`) implements that aggregation so it can be fed from such a run
  (``add`` after each step, ``rows`` the conditional half of a classifier-free-guidance batch).
  :func:`daam_token_maps` runs it on a real image: Mokady et al.'s null-text inversion
  (:func:`null_text_inversion`: DDIM inversion with the caption, then per step a null-text embedding
  optimised so that the guided DDIM step lands on the inversion's trajectory), then the guided DDIM
  reconstruction with those embeddings while the maps are captured. The paper's Table 4 figures (frozen
  SD1.4 0.5371, L_LDM-only 0.5412, TokenCompose 0.5876, on COCO-Gen) are this protocol's; the fast
  variant's numbers below are not comparable with them, only differences between models measured the
  same way are.
- **The fast variant** (:func:`evaluate_shards`): the real image is encoded by the VAE (the latent
  distribution's mean), noised with seeded noise to a few fixed timesteps (:data:`DEFAULT_TIMESTEPS`), and
  the UNet runs once per timestep on the caption alone (no guidance; the timesteps go as one batch); the
  maps of those passes take the place of the denoising steps in the same aggregation.

The aggregation, as DAAM's code does it (daam/trace.py ``UNetCrossAttentionHooker`` and
``compute_global_heat_map``, daam/heatmap.py ``RawHeatMapCollection``, ``GlobalHeatMap`` and
``WordHeatMap.expand_as``, daam/utils.py ``expand_image``, daam/evaluate.py ``compute_iou``, read through
the search tool): every cross-attention module of the UNet (down, middle and up blocks); per (layer,
head) the token's probabilities are summed over time steps; maps whose side is 1/8 of the latent's are
left out (DAAM's ``factor != 8``: the 8x8 maps of a 512 px image); each remaining (layer, head) map is
upsampled bicubically to the latent size and clamped at 0, and the maps are averaged over all (layer,
head) pairs; a word's map is the mean of its tokens' maps (the brief's "sum" binarises the same: the next
step is a min-max normalisation); that map is upsampled bicubically to the output size, min-max
normalised (``(m - min) / (max - min + 1e-8)``) and thresholded strictly at tau = 0.4 (the default
``--threshold`` of daam/run/daam_to_mask.py and of ``plot_mask_heat_map``); IoU is
``intersection / (union + 1e-8)`` (daam/evaluate.py) and the mIoU is the mean over all (image, noun)
pairs (its ``MeanEvaluator``). Where we differ: a noun's tokens are those its character span covers in
the caption (the training's :func:`~tokencompose.tasks.training.data.noun_token_positions`), not every
occurrence of the word's tokens; the real image and its masks get the training geometry (resize the short
side, centre crop; masks resized per resolution and ``> 0``, :class:`~tokencompose.tasks.training.data.
Preprocessor`), with the output size the image resolution by default (DAAM: 512 px generated images).

**Specificity** (ours, not DAAM's; docs/world.md): each noun's binarised map is also compared with the masks
of the other nouns of the same image that differ from its own; ``specificity = IoU(own) - mean IoU(others)``
per noun, averaged over the nouns that have another noun. A map of "objects in general" has a high IoU but
a specificity near 0.

**Token attribution** (ours; docs/world.md, protocol v3): the maps of the token right after a noun and the
token right before it, from the same capture and aggregation, binarised the same way and compared with the
*noun's* mask (``next_iou``, ``previous_iou``). A model whose grounding training reached the noun's own token
gains more on ``iou`` than on its neighbours'; one trained on a shifted token index gains more on the
neighbour's.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np
from pydantic import BaseModel, Field

DAAM_THRESHOLD = 0.4
DAAM_SKIPPED_FACTORS = (8,)
DEFAULT_TIMESTEPS = (100, 300, 500)
# Null-text inversion as Mokady et al.'s code runs it: 50 DDIM steps, guidance 7.5, at most 10 Adam steps per
# timestep with learning rate 1e-2 x (1 - i/100), stopping early below 1e-5 + 2e-5 x i
DAAM_STEPS = 50
DAAM_GUIDANCE = 7.5
NULL_INNER_STEPS = 10
NULL_LEARNING_RATE = 1e-2
NULL_EARLY_STOP = 1e-5
# Table 4 of the paper: DAAM mIoU on COCO-Gen after null-text inversion (not the fast variant)
PAPER_DAAM_MIOU = {"SD1.4 (frozen)": 0.5371, "L_LDM only": 0.5412, "TokenCompose": 0.5876}


class HeatMapAccumulator:
    """DAAM's raw heat-map collection: per (layer, head), each token column's attention summed over steps.

    ``latent_size`` is the side of the image latent; a captured map of side ``s`` has the factor
    ``latent_size // s`` and is ignored when that factor is in ``skipped_factors``.
    """

    def __init__(self, latent_size: int, skipped_factors: Sequence[int] = DAAM_SKIPPED_FACTORS):
        self.latent_size = latent_size
        self.skipped_factors = frozenset(skipped_factors)
        self.sums: dict[str, Any] = {}        # layer -> (heads, K, s, s) float32
        self.steps = 0

    def add(self, maps: dict[str, Any], rows: slice | None = None) -> None:
        """One step's captured maps (layer -> (B, heads, HW, K) probabilities, :class:`~tokencompose.tasks.
        training.attention.AttentionStore`); every row of ``rows`` (default: all) counts as a step."""
        for layer, picked in maps.items():
            chosen = picked[rows] if rows is not None else picked
            batch, heads, queries, columns = chosen.shape
            side = int(round(queries ** 0.5))
            if side * side != queries:
                raise ValueError(f"{layer}: {queries} queries are not a square map")
            if self.latent_size % side:
                raise ValueError(f"{layer}: a {side}x{side} map does not divide the {self.latent_size} latent")
            if self.latent_size // side in self.skipped_factors:
                continue
            summed = chosen.float().sum(0).permute(0, 2, 1).reshape(heads, columns, side, side)
            self.sums[layer] = self.sums[layer] + summed if layer in self.sums else summed
        self.steps += 1

    def token_maps(self):
        """(K, latent, latent): each (layer, head) sum upsampled bicubically to the latent and clamped at 0,
        averaged over all (layer, head) pairs."""
        import torch
        import torch.nn.functional as F

        if not self.sums:
            raise ValueError("no attention maps were accumulated (none captured, or every one skipped)")
        size = (self.latent_size, self.latent_size)
        merged = [F.interpolate(per_head[:, None], size=size, mode="bicubic").clamp_(min=0)[:, 0]
                  for sums in self.sums.values() for per_head in sums]
        return torch.stack(merged).mean(0)


def word_map(token_maps, columns: Sequence[int]):
    """A word's map: the mean of its tokens' maps (``columns`` index the first axis of ``token_maps``)."""
    if not columns:
        raise ValueError("a word needs at least one token")
    return token_maps[list(columns)].mean(0)


def binarise(heat_map, size: int, threshold: float = DAAM_THRESHOLD):
    """DAAM's ``expand_image``: bicubic upsampling to ``size`` x ``size``, min-max normalisation, ``> threshold``."""
    import torch.nn.functional as F

    expanded = F.interpolate(heat_map[None, None].float(), size=(size, size), mode="bicubic")[0, 0]
    expanded = (expanded - expanded.min()) / (expanded.max() - expanded.min() + 1e-8)
    return expanded > threshold


def iou(prediction, truth) -> float:
    """DAAM's ``compute_iou`` of two same-shape 0/1 masks: intersection / (union + 1e-8)."""
    prediction, truth = prediction.float(), truth.float()
    if prediction.shape != truth.shape:
        raise ValueError(f"IoU of masks of different shapes {tuple(prediction.shape)} and {tuple(truth.shape)}")
    intersection = (prediction * truth).sum()
    union = prediction.sum() + truth.sum() - intersection
    return float(intersection / (union + 1e-8))


def mean_iou(values: Iterable[float]) -> float:
    """The mean over (image, noun) pairs (DAAM's ``MeanEvaluator``); NaN when there is none."""
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


class NounIoU(BaseModel):
    key: str
    noun: str
    tokens: list[int]
    iou: float
    predicted_pixels: int
    mask_pixels: int
    # the mean IoU of this noun's binarised map against the other nouns' masks of the same image (those that
    # differ from its own); None when the image has no such noun
    other_iou: float | None = None
    # the IoU with this noun's mask of the map of the token right after / before the noun's tokens (token
    # attribution); None when that token is outside the window or is the start token
    next_iou: float | None = None
    previous_iou: float | None = None

    @property
    def specificity(self) -> float | None:
        """How much better the map fits its own mask than the other nouns' masks: ``iou - other_iou``."""
        return None if self.other_iou is None else self.iou - self.other_iou


class GroundingResult(BaseModel):
    protocol: str = "fast"
    miou: float
    nouns: int
    images: int
    timesteps: list[int]
    threshold: float
    resolution: int
    output_size: int
    seed: int
    skipped_factors: list[int]
    skipped_samples: dict[str, int] = Field(default_factory=dict)   # reason -> count
    nouns_without_mask: int = 0
    nouns_without_token: int = 0
    per_noun: list[NounIoU] = Field(default_factory=list)
    specificity: float = float("nan")   # the mean of the nouns' specificity (those with another noun in the image)
    specific_nouns: int = 0             # how many nouns it is the mean of
    daam_steps: int | None = None
    paper_daam_miou: dict[str, float] = Field(default_factory=lambda: dict(PAPER_DAAM_MIOU))

    @property
    def note(self) -> str:
        if self.protocol == "daam":
            return "DAAM's protocol after null-text inversion: the protocol of the paper's Table 4 figures"
        return ("fast variant (noised real latents, one UNet pass per timestep); the paper's figures are DAAM's "
                "protocol after null-text inversion and are not directly comparable")


def noise_seed(seed: int, key: str, timestep: int) -> int:
    blob = f"grounding:{seed}:{key}:{timestep}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") & ((1 << 63) - 1)


def all_cross_attention(unet) -> dict[str, str]:
    """``attn_processors`` key -> layer name of every cross-attention module (DAAM hooks them all)."""
    return {key: key[:-len(".processor")] for key in unet.attn_processors if ".attn2." in key}


def fast_token_maps(pipe, pixel_values, input_ids, columns: Sequence[int], *, key: str, seed: int,
                    timesteps: Sequence[int], skipped_factors: Sequence[int] = DAAM_SKIPPED_FACTORS):
    """(K, latent, latent) aggregated maps of the token ``columns`` for one real image (3 x R x R in [-1, 1])
    and its caption's ``input_ids`` (77): VAE mean, seeded noise per timestep, one batched UNet pass."""
    import torch

    from tokencompose.tasks.training.attention import install_processors

    device, dtype = pipe.unet.device, pipe.unet.dtype
    before = dict(pipe.unet.attn_processors)
    store = install_processors(pipe.unet, all_cross_attention(pipe.unet))
    try:
        with torch.inference_mode():
            image = pixel_values[None].to(device=device, dtype=pipe.vae.dtype)
            latent = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
            noise = torch.stack([torch.randn(tuple(latent.shape[1:]), generator=torch.Generator("cpu").manual_seed(
                noise_seed(seed, key, t)), dtype=torch.float32) for t in timesteps]).to(device)
            steps = torch.tensor(list(timesteps), dtype=torch.long, device=device)
            noisy = pipe.scheduler.add_noise(latent.float().expand(len(timesteps), -1, -1, -1), noise, steps)
            text = pipe.text_encoder(input_ids[None].to(device))[0].to(dtype)
            store.begin(torch.tensor([list(columns)], dtype=torch.long, device=device))
            pipe.unet(noisy.to(dtype), steps, encoder_hidden_states=text.expand(len(timesteps), -1, -1))
            accumulator = HeatMapAccumulator(latent.shape[-1], skipped_factors)
            accumulator.add(store.end())
            return accumulator.token_maps()
    finally:
        store.end()
        pipe.unet.set_attn_processor(before)


def _ddim(pipe, steps: int):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    return scheduler


def _alpha(scheduler, timestep: int):
    return scheduler.alphas_cumprod[timestep] if timestep >= 0 else scheduler.final_alpha_cumprod


def _ddim_move(scheduler, eps, timestep: int, to_timestep: int, latent):
    """The deterministic DDIM update of ``latent`` at ``timestep`` to ``to_timestep`` (up: inversion, down:
    denoising) with the noise prediction ``eps``."""
    a_from, a_to = _alpha(scheduler, timestep), _alpha(scheduler, to_timestep)
    original = (latent - (1 - a_from) ** 0.5 * eps) / a_from ** 0.5
    return a_to ** 0.5 * original + (1 - a_to) ** 0.5 * eps


def _stride(scheduler) -> int:
    return scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def null_text_inversion(pipe, latent, cond, uncond, *, steps: int = DAAM_STEPS, guidance: float = DAAM_GUIDANCE,
                        inner_steps: int = NULL_INNER_STEPS, learning_rate: float = NULL_LEARNING_RATE,
                        early_stop: float = NULL_EARLY_STOP):
    """Mokady et al.'s null-text inversion of a real image latent (1 x C x h x w) under its caption's embedding
    ``cond``: (z_T, one optimised null-text embedding per DDIM step, the DDIM scheduler)."""
    import torch

    scheduler = _ddim(pipe, steps)
    stride = _stride(scheduler)
    trajectory = [latent.float()]
    with torch.no_grad():
        for t in reversed(scheduler.timesteps.tolist()):           # DDIM inversion, guidance 1
            current = trajectory[-1]
            eps = pipe.unet(current.to(pipe.unet.dtype), t, encoder_hidden_states=cond).sample.float()
            trajectory.append(_ddim_move(scheduler, eps, t - stride, t, current))
    nulls = []
    current = trajectory[-1]
    null = uncond.detach().clone()
    for i, t in enumerate(scheduler.timesteps.tolist()):
        target = trajectory[len(trajectory) - i - 2]
        with torch.no_grad():
            eps_cond = pipe.unet(current.to(pipe.unet.dtype), t, encoder_hidden_states=cond).sample.float()
        null = null.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([null], lr=learning_rate * (1.0 - i / 100.0))
        for _ in range(inner_steps):
            eps_uncond = pipe.unet(current.to(pipe.unet.dtype), t, encoder_hidden_states=null).sample.float()
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            loss = torch.nn.functional.mse_loss(_ddim_move(scheduler, eps, t, t - stride, current), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if loss.item() < early_stop + i * 2e-5:
                break
        null = null.detach()
        nulls.append(null)
        with torch.no_grad():
            eps_uncond = pipe.unet(current.to(pipe.unet.dtype), t, encoder_hidden_states=null).sample.float()
            current = _ddim_move(scheduler, eps_uncond + guidance * (eps_cond - eps_uncond), t, t - stride, current)
    return trajectory[-1], nulls, scheduler


def daam_token_maps(pipe, pixel_values, input_ids, columns: Sequence[int], *, steps: int = DAAM_STEPS,
                    guidance: float = DAAM_GUIDANCE, inner_steps: int = NULL_INNER_STEPS,
                    skipped_factors: Sequence[int] = DAAM_SKIPPED_FACTORS):
    """(K, latent, latent) aggregated maps of the token ``columns`` for one real image under DAAM's protocol:
    null-text inversion, then the guided DDIM reconstruction with every cross-attention map of the
    conditional half captured at every step."""
    import torch

    from tokencompose.tasks.training.attention import install_processors

    device, dtype = pipe.unet.device, pipe.unet.dtype
    with torch.no_grad():
        image = pixel_values[None].to(device=device, dtype=pipe.vae.dtype)
        latent = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
        cond = pipe.text_encoder(input_ids[None].to(device))[0].to(dtype)
        empty = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                               return_tensors="pt").input_ids
        uncond = pipe.text_encoder(empty.to(device))[0].to(dtype)
    current, nulls, scheduler = null_text_inversion(pipe, latent, cond, uncond, steps=steps, guidance=guidance,
                                                    inner_steps=inner_steps)
    stride = _stride(scheduler)
    before = dict(pipe.unet.attn_processors)
    store = install_processors(pipe.unet, all_cross_attention(pipe.unet))
    accumulator = HeatMapAccumulator(latent.shape[-1], skipped_factors)
    index = torch.tensor([list(columns)] * 2, dtype=torch.long, device=device)
    try:
        with torch.no_grad():
            for t, null in zip(scheduler.timesteps.tolist(), nulls):
                store.begin(index)
                eps = pipe.unet(current.to(dtype).expand(2, -1, -1, -1), t,
                                encoder_hidden_states=torch.cat([null, cond])).sample.float()
                accumulator.add(store.end(), rows=slice(1, 2))           # the conditional half
                eps_uncond, eps_cond = eps.chunk(2)
                current = _ddim_move(scheduler, eps_uncond + guidance * (eps_cond - eps_uncond), t, t - stride,
                                     current)
        return accumulator.token_maps()
    finally:
        store.end()
        pipe.unet.set_attn_processor(before)


def neighbour_positions(tokens: Sequence[int], length: int) -> tuple[int | None, int | None]:
    """(next, previous): the token positions right after and right before a noun's ``tokens`` in a window of
    ``length`` tokens; None beyond the window or at position 0 (the start token)."""
    after, before = max(tokens) + 1, min(tokens) - 1
    return (after if after < length else None), (before if before >= 1 else None)


def token_iou(token_maps, column_of: dict[int, int], position: int | None, truth, threshold: float) -> float | None:
    """The IoU with ``truth`` of one token's binarised map (None for no token), at ``truth``'s size."""
    if position is None:
        return None
    return iou(binarise(word_map(token_maps, [column_of[position]]), truth.shape[-1], threshold).cpu(), truth)


def fast_tokenizer(pipe):
    """The pipeline's tokenizer as a fast one (character offsets, for the nouns' token positions)."""
    from transformers import CLIPTokenizerFast

    tokenizer = pipe.tokenizer
    if getattr(tokenizer, "is_fast", False):
        return tokenizer
    return CLIPTokenizerFast.from_pretrained(tokenizer.name_or_path, local_files_only=True)


def evaluate_shards(pipe, shards: Sequence[str], *, resolution: int, output_size: int | None = None,
                    timesteps: Sequence[int] = DEFAULT_TIMESTEPS, threshold: float = DAAM_THRESHOLD, seed: int = 0,
                    max_samples: int | None = None, skipped_factors: Sequence[int] = DAAM_SKIPPED_FACTORS,
                    protocol: str = "fast", daam_steps: int = DAAM_STEPS, daam_guidance: float = DAAM_GUIDANCE,
                    inner_steps: int = NULL_INNER_STEPS) -> GroundingResult:
    """The mIoU over the samples of grounded shards (SampleRecord JSON + image, RLE masks), with the fast
    variant (``protocol="fast"``: ``timesteps``, ``seed``) or DAAM's (``"daam"``: null-text inversion with
    ``daam_steps`` DDIM steps, guidance ``daam_guidance`` and at most ``inner_steps`` per step).

    Images are read with the training's geometry at ``resolution``; the nouns kept are those with a mask
    and a token in the 77-token window; the masks are compared at ``output_size`` (default
    ``resolution``). Samples that break the data contract are counted by reason, not evaluated; a shard
    whose tar breaks counts once (its samples before the break are evaluated). ``max_samples``: stop after
    that many evaluated images (those with at least one usable noun).
    """
    from tokencompose.tasks.shards.patterns import expand_shards
    from tokencompose.tasks.training.data import Preprocessor
    from tokencompose.tasks.training.samples import UNREADABLE_SHARD, SampleProblem, ShardUnreadable, read_shard

    if protocol not in ("fast", "daam"):
        raise ValueError(f"grounding protocol must be fast or daam, got {protocol!r}")
    if not timesteps:
        raise ValueError("the fast grounding variant needs at least one timestep")
    bad = [t for t in timesteps if not 0 <= t < pipe.scheduler.config.num_train_timesteps]
    if bad:
        raise ValueError(f"timesteps {bad} are outside the scheduler's 0..{pipe.scheduler.config.num_train_timesteps - 1}")
    size = output_size or resolution
    preprocess = Preprocessor(fast_tokenizer(pipe), resolution, [size])
    skipped: Counter = Counter()
    stats: Counter = Counter()
    per_noun: list[NounIoU] = []
    images = 0
    for url in expand_shards(shards):
        if max_samples is not None and images >= max_samples:
            break
        try:
            for raw in read_shard(url):
                if max_samples is not None and images >= max_samples:
                    break
                try:
                    example = preprocess(raw)
                except SampleProblem as problem:
                    skipped[problem.reason] += 1
                    continue
                stats.update(example.stats)
                if not example.noun_tokens:
                    continue
                neighbours = [neighbour_positions(tokens, len(example.input_ids)) for tokens in example.noun_tokens]
                # the neighbours are extra columns: each column's map is aggregated on its own, so the nouns'
                # maps (and every IoU) are the same with or without them
                columns = sorted({p for tokens in example.noun_tokens for p in tokens}
                                 | {p for pair in neighbours for p in pair if p is not None})
                column_of = {p: i for i, p in enumerate(columns)}
                if protocol == "daam":
                    maps = daam_token_maps(pipe, example.pixel_values, example.input_ids, columns, steps=daam_steps,
                                           guidance=daam_guidance, inner_steps=inner_steps,
                                           skipped_factors=skipped_factors)
                else:
                    maps = fast_token_maps(pipe, example.pixel_values, example.input_ids, columns, key=example.key,
                                           seed=seed, timesteps=timesteps, skipped_factors=skipped_factors)
                images += 1
                truths = [mask > 0 for mask in example.masks[size]]
                for index, (text, tokens) in enumerate(zip(example.noun_texts, example.noun_tokens)):
                    predicted = binarise(word_map(maps, [column_of[p] for p in tokens]), size, threshold).cpu()
                    truth = truths[index]
                    others = [iou(predicted, other) for other in truths if not bool((other == truth).all())]
                    after, before = (token_iou(maps, column_of, p, truth, threshold) for p in neighbours[index])
                    per_noun.append(NounIoU(key=example.key, noun=text, tokens=list(tokens),
                                            iou=iou(predicted, truth), predicted_pixels=int(predicted.sum()),
                                            mask_pixels=int(truth.sum()), other_iou=mean_iou(others) if others else None,
                                            next_iou=after, previous_iou=before))
        except ShardUnreadable:  # the samples before the break were evaluated; the rest of the shard is lost
            skipped[UNREADABLE_SHARD] += 1
    daam = protocol == "daam"
    specific = [n.specificity for n in per_noun if n.specificity is not None]
    return GroundingResult(protocol=protocol, miou=mean_iou(n.iou for n in per_noun), nouns=len(per_noun),
                           specificity=mean_iou(specific), specific_nouns=len(specific),
                           images=images, timesteps=[] if daam else list(timesteps),
                           daam_steps=daam_steps if daam else None, threshold=threshold, resolution=resolution,
                           output_size=size,
                           seed=seed, skipped_factors=sorted(skipped_factors),
                           skipped_samples={k: v for k, v in sorted(skipped.items()) if v},
                           nouns_without_mask=stats["nouns_no_mask"], nouns_without_token=stats["nouns_no_token"],
                           per_noun=per_noun)
