"""Local editing (Blended Latent Diffusion) and PIE-Bench scoring: typed, validated before any work.

`tokencompose edit` edits one image (``EditConfig``); ``edit --pie-bench`` edits and scores a PIE-Bench folder
with each model (``PieBenchConfig``). See docs/editing.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tokencompose.schemas.base import StrictModel
from tokencompose.schemas.config import ModelsConfig
from tokencompose.schemas.runner import RunnerConfig
from tokencompose.schemas.types import InferencePrecision, Resolution

EDIT_INFO_FILE = "edit.json"          # in an edit's output folder
BackgroundStep = Literal["none", "paste", "optimize_decoder"]


class MaskConfig(StrictModel):
    """Where the edit mask comes from: exactly one of a mask file, a grounded shard's noun, or a word (the
    edit configuration checks there is one)."""

    file: Path | None = Field(default=None, description="a mask image (white = edit); resized to the image with a "
                              "warning when sizes differ", json_schema_extra={"cli_shortcut": "mask-file"})
    shard: Path | None = Field(default=None, description="a grounded shard (.tar) holding the sample to edit")
    sample_key: str | None = Field(default=None, description="the shard sample whose image and noun mask are used")
    noun: str | None = Field(default=None, description="the noun of the shard sample whose mask is the edit region")
    word: str | None = Field(default=None, description="a word of the source prompt: its cross-attention in the "
                             "model, averaged over steps and resolutions and thresholded, is the mask",
                             json_schema_extra={"cli_shortcut": "mask-word"})
    source_prompt: str | None = Field(default=None, description="the prompt describing the source image (for "
                                      "word masks; default: the edit prompt)")
    threshold: float = Field(default=0.5, gt=0, lt=1, description="a word mask keeps pixels whose attention is at "
                             "least this fraction of the way from the map's minimum to its maximum")

    def sources(self) -> list[str]:
        return [name for name, value in (("file", self.file), ("shard", self.shard), ("word", self.word))
                if value is not None]

    @model_validator(mode="after")
    def _shard_sample(self) -> "MaskConfig":
        if self.shard is not None and (not self.sample_key or not self.noun):
            raise ValueError("mask.shard needs mask.sample_key and mask.noun")
        return self


class AttentionGridConfig(StrictModel):
    """Per-token cross-attention maps over the denoising steps (the seed report's Figures 3-4)."""

    words: list[str] = Field(default=[], description="words of the edit prompt to show (none: no grid)",
                             json_schema_extra={"cli_shortcut": "attention-word"})
    steps: list[int] = Field(default=[], description="denoising step indices to show (none: 5 evenly spaced)")
    resolutions: list[int] = Field(default=[], description="attention map sides to average (none: all of the "
                                   "middle block and decoder)")


class SamplerConfig(StrictModel):
    """The Blended Latent Diffusion sampler."""

    strength: float = Field(default=0.75, ge=0, le=1, description="how far the source is noised: 0.75 starts at "
                            "t=750 of 1000 as in the seed report; 0 returns the source's VAE round trip")
    steps: int = Field(default=50, ge=1, le=1000, description="DDIM steps for the full schedule (strength 1)")
    guidance_scale: float = Field(default=7.5, ge=0, description="classifier-free guidance scale")
    seed: int = Field(default=0, ge=0, description="seed of the edit's noise (each image's own generator)")
    resolution: Resolution = Field(default=512, description="images and masks are resized to this square side")
    background: BackgroundStep = Field(default="optimize_decoder", description="background step after decoding: "
                                       "optimize_decoder (the method's per-image decoder fit), paste (source pixels "
                                       "outside the mask) or none")
    decoder_steps: int = Field(default=75, ge=1, description="optimisation steps of the decoder fit")
    decoder_lr: float = Field(default=1e-4, gt=0, description="Adam learning rate of the decoder fit")
    background_weight: float = Field(default=100.0, gt=0, description="weight of the background term of the "
                                     "decoder fit against keeping the edited region")
    batch_size: int = Field(default=4, ge=1, description="images edited together")
    precision: InferencePrecision = Field(default="auto", description="auto: bf16 on a GPU, fp32 on the CPU")


class EditConfig(StrictModel):
    """`tokencompose edit`: one image, one prompt, one mask."""

    model: str = Field(description="a Stable Diffusion folder (path, or name under the models folder), or with "
                       "registry_dir an entry id (or 'promoted')")
    registry_dir: Path | None = Field(default=None, description="a model registry: model names one of its entries")
    image: Path | None = Field(default=None, description="the image to edit (default with mask.shard: the sample's)")
    prompt: str = Field(min_length=1, description="what the edited region should show")
    mask: MaskConfig = MaskConfig()
    sampler: SamplerConfig = SamplerConfig()
    attention: AttentionGridConfig = AttentionGridConfig()
    out_dir: Path = Field(default=Path("edit"), description="result.png, mask.png, source.png, edit.json go here",
                          json_schema_extra={"cli_shortcut": "out"})
    models: ModelsConfig = ModelsConfig()
    runner: RunnerConfig = Field(default=RunnerConfig(), description="where the edit task runs (the result is the "
                                 "same bytes on every runner)")

    @model_validator(mode="after")
    def _image(self) -> "EditConfig":
        given = self.mask.sources()
        if len(given) != 1:
            raise ValueError("give exactly one mask source: --mask-file, --mask-word, or --mask.shard with "
                             f"--mask.sample-key and --mask.noun; got {', '.join(given) or 'none'}")
        if self.image is None and self.mask.shard is None:
            raise ValueError("give image (the picture to edit), or mask.shard to edit a shard sample")
        return self


class PieBenchConfig(StrictModel):
    """Edit every PIE-Bench item with each model and score the results as PIE-Bench does."""

    root: Path = Field(description="the PIE-Bench folder: mapping_file.json and annotation_images/")
    pipelines: list[str] = Field(min_length=1, description="Stable Diffusion folders (or names) compared side by "
                                 "side", json_schema_extra={"cli_shortcut": "model"})
    limit: int | None = Field(default=None, ge=1, description="only the first N items (quick mode)")
    sampler: SamplerConfig = SamplerConfig()
    clip_model: str = Field(default="ViT-L-14", description="open_clip architecture of the CLIP similarity")
    clip_checkpoint: Path = Field(description="a local open_clip checkpoint file for clip_model")
    dino: Path = Field(description="a local transformers ViT folder (PIE-Bench: DINO ViT-B/8) for the structure "
                       "distance")
    lpips_net: Literal["alex", "vgg", "squeeze"] = Field(default="squeeze", description="LPIPS backbone (PIE-Bench: "
                                                          "squeeze); its torchvision weights must be in TORCH_HOME")
    out_dir: Path = Field(default=Path("pie-bench"), description="edited images and report.json/.md go here")
    models: ModelsConfig = ModelsConfig()
    runner: RunnerConfig = Field(default=RunnerConfig(), description="where the edit and scoring tasks run (the "
                                 "edited images are the same bytes on every runner)")
    batches_per_task: int = Field(default=25, ge=1, description="on Dask or Ray: sampler batches one edit task "
                                  "does with one model load, so a cluster spreads a model's items over its GPUs "
                                  "(the threads runner edits each model in one task)")
