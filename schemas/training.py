"""The training configuration: typed, validated before any work, written into every checkpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tokencompose.schemas.base import StrictModel
from tokencompose.schemas.config import ImageLimits
from tokencompose.schemas.types import MixedPrecision, Resolution

# The paper's trained maps (SD1.x/2.x names): the middle block and every decoder cross-attention.
DEFAULT_TRAIN_LAYERS: tuple[str, ...] = (
    "mid_block.attentions.0",
    *(f"up_blocks.{block}.attentions.{index}" for block in (1, 2, 3) for index in range(3)),
)
DEFAULT_ATTN_MODULE = "transformer_blocks.0.attn2"
TRAIN_CONFIG_FILE = "train_config.json"  # in the output folder, every checkpoint and the export

Aggregation = Literal["reference", "normalized"]
ReportTo = Literal["none", "tensorboard", "wandb", "mlflow", "all"]


class TrainConfig(StrictModel):
    """Every knob of a training run; defaults are the paper's (Table 6) for SD1.4."""

    pretrained_model: Path = Field(description="a local diffusers Stable Diffusion folder")
    shards: list[str] = Field(min_length=1, description="shard paths, globs or brace patterns")
    output_dir: Path = Field(description="the run folder: checkpoints, metrics.jsonl, the exported pipeline")

    # data
    resolution: Resolution | None = Field(default=None, description="square center crop fed to the VAE; null: the "
                                          "model's own (UNet sample_size x VAE factor: 512 for SD1.x and "
                                          "SD2-base, 768 for SD2/2.1), resolved and written at the run's start")
    image_field: str | None = Field(default=None, description="null: the record's own image_field")
    shuffle_buffer: int = Field(default=256, ge=0, description="samples; 0 keeps the shard order")
    num_workers: int = Field(default=2, ge=0, description="DataLoader worker processes (0: in the training process)")
    mask_antialias: bool = Field(default=False, description="False reproduces the authors' torchvision 0.14 resize")
    images: ImageLimits = Field(default=ImageLimits(), description="the build's image limits (decompression "
                                "bombs): a sample whose image exceeds them is skipped as absurd_dimensions")
    max_bad_sample_fraction: float = Field(default=0.01, ge=0, le=1, description="unusable samples (any reason, "
                                           "each counted once) the shards may hold, as a fraction of all samples; "
                                           "more stops the run, before training when the pre-scan finds them")
    exclude_flagged: Path | None = Field(default=None, description="a flags file (the viewer's flags.jsonl): its "
                                         "flagged samples are skipped (counted as 'flagged'), a flagged mask's "
                                         "token loss is skipped")
    max_unreadable_shards: int = Field(default=0, ge=0, description="shards that do not read as a tar to their end "
                                       "(skipped when allowed); more stops the run")

    # objective
    train_layers: list[str] | None = Field(default=None, description="UNet attention blocks whose cross-attention "
                                           "maps get the grounding losses; null: the paper's choice, the middle "
                                           "block and every decoder attention block of the model being trained")
    attn_module: str = Field(default=DEFAULT_ATTN_MODULE, description="the cross-attention modules whose maps the grounding losses read (the authors' attn2)")
    aggregation: Aggregation = Field(default="reference", description="reference: the authors' map aggregation; normalized: each map normalised first")
    token_weight: float = Field(default=1e-3, ge=0, description="lambda")
    pixel_weight: float = Field(default=5e-5, ge=0, description="gamma")
    spatial_weight: float = Field(default=0.0, ge=0, description="seed 000's spatial loss; 0 turns it off")

    # optimisation
    learning_rate: float = Field(default=5e-6, gt=0, description="AdamW learning rate (the paper: 5e-6)")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        default="constant", description="diffusers' learning-rate schedule")
    lr_warmup_steps: int = Field(default=0, ge=0, description="optimizer steps of linear warm-up")
    adam_beta1: float = Field(default=0.9, description="AdamW beta1")
    adam_beta2: float = Field(default=0.999, description="AdamW beta2")
    adam_weight_decay: float = Field(default=1e-2, description="AdamW weight decay")
    adam_epsilon: float = Field(default=1e-8, description="AdamW epsilon")
    max_grad_norm: float | None = Field(default=1.0, description="null: no clipping")
    max_steps: int = Field(default=24000, ge=1, description="optimizer steps")
    train_batch_size: int = Field(default=1, ge=1, description="per device", json_schema_extra={"cli_shortcut": "batch-size"})
    gradient_accumulation_steps: int = Field(default=4, ge=1, description="micro-batches per optimizer step",
                                             json_schema_extra={"cli_shortcut": "grad-accum"})
    mixed_precision: MixedPrecision = Field(default="no", description="accelerate's mixed precision (no, fp16, bf16)")
    gradient_checkpointing: bool = Field(default=True, description="recompute UNet activations in the backward pass (less memory)")
    seed: int = Field(default=0, description="seeds the model noise, timesteps and data order")

    # throughput (docs/training.md "Throughput"); the defaults change nothing about the paper's run
    auto_batch: bool = Field(default=False, description="on CUDA: choose train_batch_size, gradient_accumulation_steps "
                             "and gradient_checkpointing from the GPU's memory (a short probe measures the activation "
                             "memory per sample), keeping effective_batch samples per optimizer step; checkpointing "
                             "only when the batch that fits without it is below min(auto_min_batch, effective_batch). "
                             "Without CUDA the values above are used")
    effective_batch: int | None = Field(default=None, ge=1, description="auto_batch: samples per optimizer step per "
                                        "device; null: train_batch_size x gradient_accumulation_steps")
    auto_min_batch: int = Field(default=8, ge=1, description="auto_batch: the per-device batch that keeps the GPU "
                                "busy; below it, gradient checkpointing is turned on to fit a larger one")
    memory_headroom: float = Field(default=0.9, gt=0, le=1,
                                   description="auto_batch: fraction of the GPU's memory to plan for")
    fused_optimizer: bool = Field(default=True,
                                  description="fused AdamW when every trained parameter is a float CUDA tensor")
    channels_last: bool = Field(default=False, description="CUDA: the UNet in channels-last memory format")
    compile_unet: bool = Field(default=False, description="torch.compile the UNet (its first steps compile)")

    # bookkeeping
    checkpoint_every: int = Field(default=2000, ge=1, description="optimizer steps between checkpoints")
    checkpoints_total_limit: int | None = Field(default=3, ge=1, description="checkpoints kept (the oldest removed); null: all")
    resume: bool = Field(default=True, description="continue from the latest checkpoint in output_dir")
    log_every: int = Field(default=10, ge=1, description="optimizer steps between metrics.jsonl lines")
    export: bool = Field(default=True, description="write a StableDiffusionPipeline folder at the end")

    # watching the run (docs/training.md "Watching a run")
    report_to: ReportTo = Field(default="none", description="accelerate's experiment trackers: none, tensorboard "
                                "(event files in output_dir/logs), wandb, mlflow or all; every log_every steps the "
                                "loss terms (per resolution too), learning rate, samples/s and skipped-sample counts")
    tracker_project: str = Field(default="tokencompose", description="the trackers' project (run) name")
    validation_prompts: list[str] = Field(default_factory=list, description="prompts generated with the current "
                                          "weights every validation_every steps and at the end, into "
                                          "output_dir/validation/step-NNNNNN/ and the trackers; the first "
                                          "prompt's noun cross-attention maps are saved beside them")
    validation_nouns: list[str] | None = Field(default=None, description="the nouns of the first validation "
                                               "prompt whose maps are saved; null: spaCy's noun phrases of it")
    validation_every: int = Field(default=500, ge=1, description="optimizer steps between validations")
    validation_inference_steps: int = Field(default=25, ge=1, description="denoising steps of a validation image")
    validation_guidance_scale: float = Field(default=7.5, ge=0, description="classifier-free guidance scale of "
                                             "the validation images")

    @field_validator("shards", "train_layers", mode="before")
    @classmethod
    def _tuple(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("train_layers")
    @classmethod
    def _layers(cls, layers: list[str] | None) -> list[str] | None:
        if layers is None:
            return None
        if not layers:
            raise ValueError("train_layers must name at least one attention block")
        if len(set(layers)) != len(layers):
            raise ValueError("train_layers has duplicates")
        return layers

    @model_validator(mode="after")
    def _warmup_needs_a_schedule(self) -> "TrainConfig":
        if self.lr_scheduler == "constant" and self.lr_warmup_steps:
            raise ValueError("lr_warmup_steps needs lr_scheduler 'constant_with_warmup', 'linear' or 'cosine'")
        return self

    def processor_targets(self, layers: list[str]) -> dict[str, str]:
        """``unet.attn_processors`` key of each trained module -> its layer name."""
        return {f"{layer}.{self.attn_module}.processor": layer for layer in layers}

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: Path) -> "TrainConfig":
        return cls.model_validate_json(Path(path).read_text())
