"""Loading the Stable Diffusion components to train from a local diffusers folder (SD1.x or SD2.x layout)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizerFast

from tokencompose.tasks.models.weights import check_training_folder


@dataclass
class Components:
    # diffusers' classes are Any to mypy: under it they lack torch.nn.Module's methods (diffusers 0.39)
    tokenizer: CLIPTokenizerFast
    text_encoder: CLIPTextModel
    vae: Any            # AutoencoderKL
    unet: Any           # UNet2DConditionModel
    noise_scheduler: Any  # DDPMScheduler

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        """The image side the model was trained at: 512 for SD1.x and SD2-base, 768 for SD2/2.1."""
        return self.unet.config.sample_size * self.vae_scale_factor


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(scheduler, path: Path) -> str:
    """The scheduler's prediction type, which decides the L_LDM target; an unknown one stops before training."""
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"{Path(path) / 'scheduler'}: prediction_type {kind!r} is not one of {', '.join(PREDICTION_TYPES)}")
    return kind


def load_components(path: Path) -> Components:
    check_training_folder(path)
    path = Path(path)
    # The training noise schedule is DDPM on the model's own betas and prediction type (SD2/2.1: v), whatever
    # sampler the folder names.
    components = Components(
        tokenizer=CLIPTokenizerFast.from_pretrained(path / "tokenizer", local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True),
        vae=AutoencoderKL.from_pretrained(path / "vae", local_files_only=True),
        unet=UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True),
        noise_scheduler=DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True),
    )
    check_prediction_type(components.noise_scheduler, path)
    return components
