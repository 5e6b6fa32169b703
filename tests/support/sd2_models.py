"""Tiny random Stable Diffusion 2.x-layout folders, built offline: the two variants Stability ships.

What makes them SD2 and not SD1, as in stabilityai/stable-diffusion-2-1 and -2-base:

- the text encoder is OpenCLIP-ViT/H through transformers' CLIPTextModel with ``hidden_act="gelu"``
  (SD1's is ``quick_gelu``) and one layer fewer than OpenCLIP has (23 of 24): SD2 conditions on the
  penultimate layer, so its folders drop the last one and the model's output *is* that layer;
- the tokenizer pads with ``"!"`` (id 0), not with the end token;
- the UNet uses ``use_linear_projection=True`` and a per-block head count (``attention_head_dim`` is a
  list, [5, 10, 20, 20] in SD2: 64-channel heads everywhere) and a cross-attention width equal to the
  text encoder's (1024 in SD2);
- "v" (SD2/2.1, 768 px): a DDIM scheduler with ``prediction_type="v_prediction"`` and a UNet
  ``sample_size`` 1.5x the base's (96 latents = 768 px); ``upcast_attention=True`` as SD2.1 ships it;
- "base" (SD2-base, 512 px): a PNDM scheduler predicting the noise (epsilon), ``sample_size`` 64.

Here every width is tiny and the VAE downsamples 4x: "v" is 48 px (latent 12, maps 3/6/12) and "base"
32 px (latent 8, maps 2/4/8), the same 3:2 ratio as 768:512.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SD2_TEXT_WIDTH = 32                    # 1024 in SD2
SD2_TEXT_LAYERS = 3                    # stands for SD2's 23 (OpenCLIP-H's 24 less the last)
SD2_HEADS = (2, 4, 4)                  # attention_head_dim per block: 16-channel heads everywhere
SD2_CHANNELS = (32, 64, 64)
SD2_VAE_FACTOR = 4
SD2_LATENT = {"v": 12, "base": 8}      # UNet sample_size: 96 and 64 in SD2
SD2_RESOLUTION = {variant: latent * SD2_VAE_FACTOR for variant, latent in SD2_LATENT.items()}
SD2_PREDICTION = {"v": "v_prediction", "base": "epsilon"}
SD2_LAYERS = ("mid_block.attentions.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
              "up_blocks.2.attentions.0", "up_blocks.2.attentions.1")   # the paper's choice for this layout


def sd2_resolutions(variant: str) -> dict[str, int]:
    """Each paper layer's map side at the variant's own resolution (mid 1/4 of the latent, then 1/2, 1)."""
    latent = SD2_LATENT[variant]
    return {"mid_block.attentions.0": latent // 4, "up_blocks.1.attentions.0": latent // 2,
            "up_blocks.1.attentions.1": latent // 2, "up_blocks.2.attentions.0": latent,
            "up_blocks.2.attentions.1": latent}


def sd2_tokenizer(directory: Path):
    """CLIP's real BPE (as SD1's) padded with "!" as SD2's tokenizer is."""
    from transformers import CLIPTokenizerFast

    from tokencompose.tasks.training.toy import clip_tokenizer

    clip_tokenizer(directory)
    tokenizer = CLIPTokenizerFast.from_pretrained(directory, pad_token="!")
    tokenizer.save_pretrained(directory)
    return tokenizer


def save_sd2_pipeline(path: Path, variant: str, seed: int = 0, tokenizer=None) -> Path:
    """A complete diffusers StableDiffusionPipeline folder of the SD2 layout with random weights
    (``tokenizer``: one :func:`sd2_tokenizer` made already)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if variant not in SD2_LATENT:
        raise ValueError(f"unknown SD2 variant {variant!r}: 'v' (768 px-style) or 'base' (512 px-style)")
    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=SD2_LATENT[variant], in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=SD2_CHANNELS, norm_num_groups=8, cross_attention_dim=SD2_TEXT_WIDTH,
        attention_head_dim=list(SD2_HEADS), use_linear_projection=True, upcast_attention=variant == "v",
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=8, sample_size=SD2_RESOLUTION[variant])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=SD2_TEXT_WIDTH, intermediate_size=4 * SD2_TEXT_WIDTH,
        num_hidden_layers=SD2_TEXT_LAYERS, num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
        projection_dim=SD2_TEXT_WIDTH // 2, bos_token_id=49406, eos_token_id=49407, pad_token_id=0))
    tokenizer = tokenizer or sd2_tokenizer(path.parent / f".{path.name}-tokenizer")
    common: dict[str, Any] = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, steps_offset=1, prediction_type=SD2_PREDICTION[variant])
    scheduler = (DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **common) if variant == "v"
                 else PNDMScheduler(skip_prk_steps=True, **common))
    pipeline: Any = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                            requires_safety_checker=False)
    pipeline.save_pretrained(path)
    return path


def build_sd2_models(folder: Path) -> Path:
    """Both variants, ``folder/v`` and ``folder/base``, sharing one tokenizer build (the slow part)."""
    folder = Path(folder)
    tokenizer = sd2_tokenizer(folder / ".tokenizer")
    for variant in SD2_LATENT:
        save_sd2_pipeline(folder / variant, variant, tokenizer=tokenizer)
    return folder


@pytest.fixture(scope="session")
def sd2_models(tmp_path_factory, worker_id) -> Path:
    """The folder of both tiny SD2 variants, built once per run (imported by the test modules that use it)."""
    from tests.support.training_fixtures import built_once

    cached = _BUILT.get(str(tmp_path_factory.getbasetemp()))
    if cached is None:
        cached = _BUILT[str(tmp_path_factory.getbasetemp())] = built_once(tmp_path_factory, worker_id, "sd2-models",
                                                                          build_sd2_models)
    return cached


_BUILT: dict[str, Path] = {}  # several modules import the fixture: one build per run all the same
