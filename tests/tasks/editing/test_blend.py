"""Blended Latent Diffusion: the background bound, the schedule against a written-out reference, edges."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tokencompose.schemas.editing import SamplerConfig
from tokencompose.tasks.editing.blend import (EditItem, blend_loop, decode, edit_batch, edit_timesteps, encode,
                                              latent_mask, to_pixels, to_uint8)
from tests.tasks.editing.conftest import SIDE

FAST = dict(steps=4, strength=0.75, resolution=SIDE, guidance_scale=7.5)


def background_mse(image: np.ndarray, source: np.ndarray, mask: np.ndarray) -> float:
    return float(((image.astype(np.float64) - source)[~mask] ** 2).mean())


def test_background_step_keeps_pixels_outside_the_mask_within_the_vae_round_trip_error(tiny_pipe, photo, box_mask):
    with torch.no_grad():
        round_trip = to_uint8(decode(tiny_pipe.vae, encode(tiny_pipe.vae, to_pixels([photo], "cpu", torch.float32))))[0]
    bound = background_mse(round_trip, photo, box_mask)
    sampler = SamplerConfig(**FAST, background="optimize_decoder", decoder_steps=8, decoder_lr=2e-3)
    result = edit_batch(tiny_pipe, [EditItem(photo, box_mask, "a dog")], sampler)[0]
    fitted, plain = background_mse(result.image, photo, box_mask), background_mse(result.decoded, photo, box_mask)
    assert fitted <= bound, (fitted, bound)
    assert fitted < plain                     # the decoder fit is what brings it there
    assert not np.array_equal(result.image[box_mask], photo[box_mask])

    pasted = edit_batch(tiny_pipe, [EditItem(photo, box_mask, "a dog")], sampler.model_copy(update={"background": "paste"}))[0]
    assert np.array_equal(pasted.image[~box_mask], photo[~box_mask])
    assert np.array_equal(pasted.image[box_mask], pasted.decoded[box_mask])


def test_blend_schedule_equals_the_written_out_reference():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    timesteps = edit_timesteps(scheduler, 4, 0.5)
    assert timesteps.tolist() == [251, 1]
    generator = torch.Generator().manual_seed(3)
    source = torch.randn(1, 2, 2, 2, generator=generator, dtype=torch.float64)
    draws = [torch.randn(1, 2, 2, 2, generator=generator, dtype=torch.float64) for _ in range(2)]
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)[None, None]
    eps = 0.3
    got = blend_loop(scheduler, timesteps, source, mask, lambda k: draws[k], lambda x, t: torch.full_like(x, eps))

    a = np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2)
    s, n0, n1, m = source.numpy(), draws[0].numpy(), draws[1].numpy(), mask.numpy()

    def ddim(x, alpha, alpha_prev):        # eta = 0: through the predicted clean latent
        clean = (x - np.sqrt(1 - alpha) * eps) / np.sqrt(alpha)
        return np.sqrt(alpha_prev) * clean + np.sqrt(1 - alpha_prev) * eps

    x = np.sqrt(a[251]) * s + np.sqrt(1 - a[251]) * n0                    # noised to the start, everywhere
    x = m * ddim(x, a[251], a[1]) + (1 - m) * (np.sqrt(a[1]) * s + np.sqrt(1 - a[1]) * n1)
    x = m * ddim(x, a[1], a[0]) + (1 - m) * s                            # last step: alpha of t=0, clean source
    np.testing.assert_allclose(got.numpy(), x, rtol=0, atol=1e-6)


def test_strength_edges(tiny_pipe, photo, box_mask):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    assert len(edit_timesteps(scheduler, 4, 1.0)) == 4
    assert len(edit_timesteps(scheduler, 4, 0.0)) == 0
    sampler = SamplerConfig(**{**FAST, "strength": 0.0}, background="none")
    result = edit_batch(tiny_pipe, [EditItem(photo, box_mask, "a dog")], sampler)[0]
    with torch.no_grad():
        round_trip = to_uint8(decode(tiny_pipe.vae, encode(tiny_pipe.vae, to_pixels([photo], "cpu", torch.float32))))[0]
    assert np.array_equal(result.image, round_trip)      # strength 0: the source's VAE round trip


def test_one_by_one_equals_batched(tiny_pipe, photo, box_mask):
    sampler = SamplerConfig(**{**FAST, "steps": 2, "strength": 1.0}, background="none")
    flipped = photo[:, ::-1].copy()
    items = [EditItem(photo, box_mask, "a dog", seed=0), EditItem(flipped, box_mask, "a red cup", seed=1)]
    together = edit_batch(tiny_pipe, items, sampler)
    alone = edit_batch(tiny_pipe, items[1:], sampler)
    assert np.abs(together[1].image.astype(int) - alone[0].image).max() <= 1
    assert not np.array_equal(together[0].image, together[1].image)


def test_latent_mask_takes_cells_at_least_half_editable_and_warns_for_a_thin_mask(caplog):
    pixels = torch.zeros(1, 1, 8, 8)
    pixels[0, 0, :4, :2] = 1                  # half of the top-left 4x4 cell
    pixels[0, 0, 4:, 4:5] = 1                 # a quarter of the bottom-right cell
    assert latent_mask(pixels, (2, 2))[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    thin = torch.zeros(1, 1, 8, 8)
    thin[0, 0, 5, 5] = 1
    with caplog.at_level(logging.WARNING):
        assert latent_mask(thin, (2, 2))[0, 0].tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert "thinner than a latent cell" in caplog.text


def test_a_batch_of_mixed_sizes_is_refused(tiny_pipe, photo, box_mask):
    with pytest.raises(ValueError, match="share a size"):
        edit_batch(tiny_pipe, [EditItem(photo, box_mask[:16], "a dog")], SamplerConfig(**FAST))
