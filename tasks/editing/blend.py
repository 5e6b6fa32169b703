"""Blended Latent Diffusion (Avrahami et al., 2023) on any local Stable Diffusion folder, with diffusers'
components (VAE, UNet, text encoder, DDIMScheduler.add_noise / .step).

The source image is encoded (the VAE posterior's mean, so an edit depends on its seed only), noised in one
go to the level the strength asks for, and denoised with the edit prompt. After every step the latent
keeps the denoised values inside the mask and, outside it, takes the source latent noised to the level
the step landed on (the next timestep; the clean source latent after the last step). The reference code
noises the background to the level the step started from, which leaves the last timestep's noise in the
background; landing on the same level keeps the background latent exactly the source's at the end.

The latent mask is the pixel mask averaged over each latent cell and kept where at least half the cell is
editable (a mask too thin for that keeps every cell it touches, with a warning).

Background step after decoding (``SamplerConfig.background``): ``optimize_decoder`` is the method's
background reconstruction: a copy of the decoder is fitted per image so that the decoded background matches
the source pixels and the edited region stays as first decoded; ``paste`` puts the source pixels back
outside the mask; ``none`` keeps the decoded image.

Every image draws its noise (the initial noise, then one background noise per step) from its own CPU
generator seeded by (seed, item seed), so an edit is the same alone or in a batch up to float rounding.
"""
from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EditItem:
    image: np.ndarray       # H x W x 3 uint8, H and W multiples of the VAE factor
    mask: np.ndarray        # H x W bool, True = edit
    prompt: str
    seed: int = 0           # the item's own noise stream (with the sampler's seed)


@dataclass
class EditResult:
    image: np.ndarray       # H x W x 3 uint8
    decoded: np.ndarray     # H x W x 3 uint8, before the background step
    latent_mask: np.ndarray  # h x w bool


def item_generator(seed: int, item_seed: int) -> torch.Generator:
    blob = f"edit:{seed}:{item_seed}".encode()
    return torch.Generator("cpu").manual_seed(int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1)


def edit_timesteps(scheduler, steps: int, strength: float) -> torch.Tensor:
    """The timesteps an edit runs: the last ``round(steps * strength)`` of a ``steps``-step schedule
    (diffusers' img2img convention); empty for strength 0."""
    scheduler.set_timesteps(steps)
    count = min(int(steps * strength), steps)
    return scheduler.timesteps[len(scheduler.timesteps) - count:] if count else scheduler.timesteps[:0]


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) 0/1 pixel masks -> (B, 1, h, w) 0/1 latent masks (see module doc)."""
    share = F.adaptive_avg_pool2d(mask.float(), size)
    cells = (share >= 0.5).float()
    for b in range(mask.shape[0]):
        if mask[b].any() and not cells[b].any():
            log.warning("the mask is thinner than a latent cell (%d px): every cell it touches is edited",
                        mask.shape[-1] // size[-1])
            cells[b] = (share[b] > 0).float()
    return cells


def blend_loop(scheduler, timesteps: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
               noise: Callable[[int], torch.Tensor], predict: Predict) -> torch.Tensor:
    """The blended sampler. ``source``: clean source latents; ``mask``: latent masks (1 = edit);
    ``noise(k)``: the noise for draw k (0: the start, k >= 1: the background after step k); ``predict``:
    the guided noise prediction for (latents, t)."""
    if len(timesteps) == 0:
        return source.clone()
    latents = scheduler.add_noise(source, noise(0), timesteps[:1])
    for k, t in enumerate(timesteps):
        latents = scheduler.step(predict(latents, t), t, latents).prev_sample
        if k + 1 < len(timesteps):
            background = scheduler.add_noise(source, noise(k + 1), timesteps[k + 1:k + 2])
        else:
            background = source
        latents = mask * latents + (1 - mask) * background
    return latents


def guided_prediction(unet, embeddings: torch.Tensor | None, guidance_scale: float,
                      on_unet: Callable[[Callable[[], torch.Tensor]], torch.Tensor] | None = None) -> Predict:
    """Classifier-free guidance over ``embeddings`` = [unconditional; conditional] (or conditional only
    when ``guidance_scale <= 1``); ``on_unet(call)`` wraps each UNet call (attention capture)."""
    guided = guidance_scale > 1

    def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_in = torch.cat([latents, latents]) if guided else latents
        model_in = model_in.to(unet.dtype)

        def call() -> torch.Tensor:
            return unet(model_in, t.to(unet.device), encoder_hidden_states=embeddings).sample.float()

        out = on_unet(call) if on_unet else call()
        if not guided:
            return out
        unconditional, conditional = out.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)
    return predict


def to_pixels(images: Sequence[np.ndarray], device, dtype) -> torch.Tensor:
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return batch.to(device=device, dtype=dtype)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    images = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return images.permute(0, 2, 3, 1).cpu().numpy()


def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    return vae.encode(pixels.to(vae.dtype)).latent_dist.mean.float() * vae.config.scaling_factor


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()


def fit_decoder(vae, latents: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, *, steps: int, lr: float,
                background_weight: float) -> torch.Tensor:
    """The method's background reconstruction for one image: fit a float32 copy of the decoder so that
    D(z) matches the source outside the mask and the first decoding inside it; returns D(z) in [-1, 1].
    ``latents`` (1, c, h, w), ``source`` (1, 3, H, W) in [-1, 1], ``mask`` (1, 1, H, W) 0/1."""
    fitted = copy.deepcopy(vae).float()
    fitted.requires_grad_(False)
    for part in (fitted.decoder, fitted.post_quant_conv):
        if part is not None:
            part.requires_grad_(True)
    params = [p for p in fitted.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    z = (latents.float() / vae.config.scaling_factor).detach().clone()
    source, mask = source.float(), mask.float()
    with torch.no_grad():
        first = fitted.decode(z).sample
    with torch.enable_grad():
        for _ in range(steps):
            decoded = fitted.decode(z).sample
            loss = (background_weight * (((decoded - source) * (1 - mask)) ** 2).mean()
                    + (((decoded - first) * mask) ** 2).mean())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return fitted.decode(z).sample.clamp(-1, 1)


def encode_prompts(pipe, prompts: Sequence[str], guided: bool) -> torch.Tensor:
    positive, negative = pipe.encode_prompt(list(prompts), pipe.unet.device, 1, guided, negative_prompt=None)
    return torch.cat([negative, positive]) if guided else positive


def edit_batch(pipe, items: Sequence[EditItem], sampler, scheduler=None,
               on_unet: Callable[[Callable[[], torch.Tensor]], torch.Tensor] | None = None) -> list[EditResult]:
    """Edit ``items`` (same size) together with ``pipe``'s components; ``sampler`` is a SamplerConfig
    (strength, steps, guidance_scale, seed, background and its decoder-fit settings)."""
    from diffusers import DDIMScheduler

    scheduler = scheduler or DDIMScheduler.from_config(pipe.scheduler.config)
    vae, device = pipe.vae, pipe.unet.device
    sizes = {item.image.shape[:2] for item in items} | {item.mask.shape for item in items}
    if len(sizes) != 1:
        raise ValueError(f"images and masks of one batch must share a size; got {sorted(sizes)}")
    guided = sampler.guidance_scale > 1
    with torch.no_grad():
        pixels = to_pixels([item.image for item in items], device, torch.float32)
        masks = torch.from_numpy(np.stack([item.mask for item in items])[:, None]).to(device).float()
        source = encode(vae, pixels)
        cells = latent_mask(masks, (source.shape[-2], source.shape[-1]))
        timesteps = edit_timesteps(scheduler, sampler.steps, sampler.strength)
        generators = [item_generator(sampler.seed, item.seed) for item in items]
        shape = tuple(source.shape[1:])

        def noise(_k: int) -> torch.Tensor:
            return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)

        embeddings = encode_prompts(pipe, [item.prompt for item in items], guided) if len(timesteps) else None
        predict = guided_prediction(pipe.unet, embeddings, sampler.guidance_scale, on_unet)
        latents = blend_loop(scheduler, timesteps, source, cells, noise, predict)
        decoded = decode(vae, latents)
    if sampler.background == "optimize_decoder":
        final = torch.cat([fit_decoder(vae, latents[b:b + 1], pixels[b:b + 1], masks[b:b + 1],
                                       steps=sampler.decoder_steps, lr=sampler.decoder_lr,
                                       background_weight=sampler.background_weight) for b in range(len(items))])
    elif sampler.background == "paste":
        final = pixels * (1 - masks) + decoded.clamp(-1, 1) * masks
    else:
        final = decoded
    images, first = to_uint8(final), to_uint8(decoded)
    if sampler.background == "paste":   # exact source bytes outside the mask, not a float round trip
        for b, item in enumerate(items):
            images[b][~item.mask] = item.image[~item.mask]
    return [EditResult(images[b], first[b], cells[b, 0].bool().cpu().numpy()) for b in range(len(items))]


def edit_all(pipe, items: Sequence[EditItem], sampler, advance: Callable[[int], None] | None = None
             ) -> list[EditResult]:
    """``items`` in batches of ``sampler.batch_size``."""
    results: list[EditResult] = []
    for start in range(0, len(items), sampler.batch_size):
        batch = items[start:start + sampler.batch_size]
        results += edit_batch(pipe, batch, sampler)
        if advance:
            advance(len(batch))
    return results
