"""The MultiGen evaluation configuration (and the attention-map one): typed, validated before any work.

Defaults are the paper's protocol: PNDM, 50 steps, guidance 7.5, the model's own resolution (512 px for SD1.x),
10 images per prompt, OWLv2-L
with text queries "a photo of a {category}" and score threshold 0.1. ``benchmark.limit`` and
``generation.images_per_prompt`` (``--prompts N --images K``) give the quick mode.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tokencompose.schemas.base import StrictModel
from tokencompose.schemas.config import ModelsConfig
from tokencompose.schemas.runner import RunnerConfig
from tokencompose.schemas.types import InferencePrecision, Resolution

SD14 = "CompVis/stable-diffusion-v1-4"
OWLV2_L = "google/owlv2-large-patch14-ensemble"
BUNDLED_SETS = ("coco", "ade20k")
EVALUATE_CONFIG_FILE = "evaluate_config.json"  # in the output folder of a MultiGen run


class BenchmarkConfig(StrictModel):
    """Which prompts: a bundled set, a prompt file, or prompts sampled from a category list."""

    name: str = Field(default="coco", description="coco or ade20k (the paper's sets, bundled); ignored when file "
                      "or categories_file is given", json_schema_extra={"cli_shortcut": "prompt-set"})
    file: Path | None = Field(default=None, description="a prompt JSON file in the authors' format",
                              json_schema_extra={"cli_shortcut": "prompt-file"})
    categories_file: Path | None = Field(default=None, description="a category list (one a line, or a JSON list): "
                                         "sample_count prompts are sampled from it with sample_seed")
    sample_count: int = Field(default=1000, ge=1, description="prompts sampled from categories_file")
    sample_seed: int = Field(default=0, description="seed of the prompt sampler")
    correct_articles: bool = Field(default=False, description="sampled prompts say 'an' before vowels (the "
                                   "authors always wrote 'a')")
    limit: int | None = Field(default=None, ge=1, description="quick mode: only the first N prompts",
                              json_schema_extra={"cli_shortcut": "prompts"})

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in BUNDLED_SETS:
            raise ValueError(f"benchmark.name must be one of {', '.join(BUNDLED_SETS)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "BenchmarkConfig":
        if self.file is not None and self.categories_file is not None:
            raise ValueError("give benchmark.file or benchmark.categories_file, not both")
        return self


class GenerationConfig(StrictModel):
    images_per_prompt: int = Field(default=10, ge=1, le=1000, description="images (rounds) per prompt",
                                   json_schema_extra={"cli_shortcut": "images"})
    seed: int = Field(default=0, ge=0, description="image noise comes from (seed, prompt id, image index)",
                      json_schema_extra={"cli_shortcut": "seed"})
    steps: int = Field(default=50, ge=1, description="denoising steps")
    guidance_scale: float = Field(default=7.5, ge=0, description="classifier-free guidance scale")
    resolution: Resolution | None = Field(default=None, description="square image side, a multiple of 8; default: "
                                          "the model's own (UNet sample_size x VAE factor: 512 px for SD1.x and "
                                          "SD2-base, 768 px for SD2/2.1), read per model from its folder")
    scheduler: Literal["pndm", "model"] = Field(default="pndm", description="pndm: the paper's PNDM (built from the "
                                                "model's scheduler config); model: the folder's own scheduler")
    batch_size: int = Field(default=16, ge=1, description="images per pipeline call")
    precision: InferencePrecision = Field(default="auto", description="auto: bf16 on a GPU, fp32 on the CPU")
    prompts_per_shard: int = Field(default=10, ge=1, description="prompts per WebDataset shard (all their images)")
    compile: bool = Field(default=False, description="torch.compile the UNet (GPU; slow first batch)")


class DetectionConfig(StrictModel):
    detector: str = Field(default=OWLV2_L, description="an OWLv2 folder path, or its name under the models folder",
                          json_schema_extra={"cli_shortcut": "detector"})
    threshold: float = Field(default=0.1, ge=0, le=1, description="a category counts when its best box scores above this")
    query_template: str = Field(default="a photo of a {category}", description="text query per category")
    batch_size: int = Field(default=1, ge=1, description="images per detector call (on an H100, OWLv2-L at 960 px in "
                            "bf16 ran 13.0 images/s one by one and 10.9 in batches of 16)")
    precision: InferencePrecision = Field(default="auto", description="auto: bf16 on a GPU, fp32 on the CPU")

    @field_validator("query_template")
    @classmethod
    def _placeholder(cls, value: str) -> str:
        if "{category}" not in value:
            raise ValueError("detection.query_template must contain {category}")
        return value


class ReportConfig(StrictModel):
    bootstrap_samples: int = Field(default=2000, ge=10, description="paired bootstrap resamples of the prompts")
    bootstrap_seed: int = Field(default=0, description="seed of the bootstrap resampling")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="two-sided confidence of the intervals")
    grid_prompts: int = Field(default=4, ge=0, description="prompts shown in each model's sample grid")
    grid_images: int = Field(default=4, ge=1, description="images per prompt in the grid")
    attention_prompts: int = Field(default=2, ge=0, description="prompts per model with cross-attention maps")
    hardest: int = Field(default=10, ge=1, description="categories and pairs listed in the markdown")


VISOR_DETECTOR = "google/owlvit-base-patch32"      # VISOR's OWL-ViT
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"   # torch-fidelity's FID Inception
GPT2 = "gpt2"


class VisorConfig(StrictModel):
    """VISOR (SR2D) object accuracy and spatial accuracy: its spatial prompts generated and detected with OWL-ViT."""

    enabled: bool = Field(default=False, description="run VISOR", json_schema_extra={"cli_shortcut": "visor"})
    limit: int | None = Field(default=None, ge=1, description="quick mode: a seeded sample of N of the 25,280 "
                              "spatial prompts (every relation kept in VISOR's proportions)")
    sample_seed: int = Field(default=0, description="seed of the quick-mode sample")
    images_per_prompt: int = Field(default=4, ge=1, description="VISOR generates 4 (VISOR_1..4 count them)")
    detector: str = Field(default=VISOR_DETECTOR, description="an OWL-ViT (or OWLv2) folder: path, or name under "
                          "the models folder")
    threshold: float = Field(default=0.1, ge=0, le=1, description="a box counts when it scores above this")


class RealImagesConfig(StrictModel):
    """Real images with captions: the captions are generated and the generations compared with the images."""

    name: str = Field(min_length=1, description="coco (the paper's FID (C)), flickr30k (FID (F)) or any name")
    images: Path = Field(description="the folder of real images (file names as the captions file gives them)")
    captions: Path = Field(description="COCO captions JSON (captions_val2017.json) or JSON Lines of "
                           '{"image": file name, "caption": text}')
    limit: int | None = Field(default=None, ge=2, description="quick mode: the first N images (sorted by file name) "
                              "and the first caption of each")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        value = value.strip()
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"fid.real name {value!r} is used as a folder name")
        return value


class FidConfig(StrictModel):
    """FID against folders of real images (torch-fidelity, Inception weights from the models folder)."""

    real: list[RealImagesConfig] = Field(default=[], description="one entry per real set (none: no FID)")
    inception: str = Field(default=INCEPTION_WEIGHTS, description="torch-fidelity's Inception weights file: path, "
                           "or name under the models folder")
    resize: int | None = Field(default=None, ge=64, description="real and generated images are resized on the short "
                               "side and centre-cropped to this (default: the generation resolution)")
    layer: Literal["64", "192", "768", "2048"] = Field(default="2048", description="Inception feature layer (2048: "
                                                       "the standard FID, as the paper; smaller ones for quick tests)")
    batch_size: int = Field(default=32, ge=1, description="images per batch")
    cache_dir: Path = Field(default=Path("~/.cache/tokencompose/fid"), description="real-image statistics, cached "
                            "by the images' and weights' content")


class ClipScoreConfig(StrictModel):
    """CLIP score (open_clip) of the FID generations against their captions (MultiGen's images when no FID set)."""

    enabled: bool = Field(default=False, description="compute the CLIP score",
                          json_schema_extra={"cli_shortcut": "clip-score"})
    model: str = Field(default="ViT-L-14", description="open_clip model name")
    pretrained: str = Field(default="openai", description="open_clip pretrained tag (weights in the models folder or "
                            "hub cache) or a checkpoint file path")
    batch_size: int = Field(default=32, ge=1, description="images per batch")


class LatencyConfig(StrictModel):
    """Seconds per image at the run's generation settings (the paper: 50 PNDM steps, guidance 7.5, 512 px; its
    figures compare only when the model's resolved resolution is 512)."""

    enabled: bool = Field(default=False, description="measure latency", json_schema_extra={"cli_shortcut": "latency"})
    prompts: int = Field(default=10, ge=1, description="timed images (batch 1), the first MultiGen prompts")
    warmup: int = Field(default=2, ge=0, description="untimed calls first")
    batch_size: int = Field(default=8, ge=1, description="the batched path's batch (1: no throughput figure)")


class GroundingMiouConfig(StrictModel):
    """Cross-attention mIoU against human masks on grounded shards (our build of COCO val2017)."""

    shards: list[str] = Field(default=[], description="grounded WebDataset shards (paths or brace patterns); none: "
                              "not measured")
    protocol: Literal["fast", "daam", "both"] = Field(default="fast", description="fast: noise the real latent "
                                                      "to fixed timesteps, one UNet pass each; daam: DAAM's protocol "
                                                      "after null-text inversion (the paper's Table 4; ~1,000 UNet "
                                                      "passes per image); both")
    timesteps: list[int] = Field(default=[100, 300, 500], min_length=1, description="noise levels of the fast variant (one UNet pass each)")
    daam_steps: int = Field(default=50, ge=1, description="DDIM steps of the null-text inversion (DAAM protocol)")
    inner_steps: int = Field(default=10, ge=0, description="at most this many null-text optimisation steps per DDIM "
                             "step (DAAM protocol)")
    threshold: float = Field(default=0.4, gt=0, lt=1, description="DAAM's binarisation threshold")
    max_samples: int | None = Field(default=None, ge=1, description="quick mode: the first N usable images")


class OptiGenConfig(StrictModel):
    """OptiGen (seeds/000): the category tuples a language model finds least likely, generated and detected."""

    enabled: bool = Field(default=False, description="run OptiGen", json_schema_extra={"cli_shortcut": "optigen"})
    language_model: str = Field(default=GPT2, description="a causal language model folder: path, or name under the "
                                "models folder")
    categories: Literal["coco", "ade20k"] = Field(default="coco", description="COCO-80 or ADE20K-100")
    count: int = Field(default=100, ge=1, description="the N least likely tuples become prompts")
    size: int = Field(default=2, ge=2, le=5, description="categories per prompt; accuracy is MG_size")


class MetricsConfig(StrictModel):
    """The metrics beside MultiGen; each runs on every model with the same seeds, resumable like MultiGen."""

    visor: VisorConfig = VisorConfig()
    fid: FidConfig = FidConfig()
    clip_score: ClipScoreConfig = ClipScoreConfig()
    latency: LatencyConfig = LatencyConfig()
    grounding: GroundingMiouConfig = GroundingMiouConfig()
    optigen: OptiGenConfig = OptiGenConfig()

    @model_validator(mode="after")
    def _distinct_sets(self) -> "MetricsConfig":
        names = [r.name for r in self.fid.real]
        if len(set(names)) != len(names):
            raise ValueError(f"metrics.fid.real names must differ, got {names}")
        return self

    def enabled(self) -> list[str]:
        """The metrics this run measures, in report order."""
        return [name for name, on in (("visor", self.visor.enabled), ("optigen", self.optigen.enabled),
                                      ("fid", bool(self.fid.real)), ("clip_score", self.clip_score.enabled),
                                      ("latency", self.latency.enabled), ("grounding", bool(self.grounding.shards)))
                if on]


class EvaluateConfig(StrictModel):
    """One MultiGen run: several models on the same prompts and seeds, one report."""

    pipelines: list[str] = Field(default=[SD14], min_length=1, description="Stable Diffusion folders (paths, or "
                                 "names under the models folder); the first is the baseline of the comparison",
                                 json_schema_extra={"cli_shortcut": "model"})
    labels: list[str] = Field(default=[], description="a name per pipeline for the report (default: folder names)",
                              json_schema_extra={"cli_shortcut": "label"})
    out_dir: Path = Field(description="where images, detections and the report go",
                          json_schema_extra={"cli_shortcut": "out"})
    benchmark: BenchmarkConfig = BenchmarkConfig()
    generation: GenerationConfig = GenerationConfig()
    detection: DetectionConfig = DetectionConfig()
    report: ReportConfig = ReportConfig()
    metrics: MetricsConfig = Field(default=MetricsConfig(), description="VISOR, OptiGen, FID, CLIP score, latency "
                                   "and grounding mIoU beside MultiGen (all off by default)")
    models: ModelsConfig = ModelsConfig()
    runner: RunnerConfig = Field(default=RunnerConfig(), description="where the generation and detection tasks run")

    @field_validator("pipelines", "labels", mode="before")
    @classmethod
    def _listify(cls, value: object) -> object:
        return [value] if isinstance(value, (str, Path)) else value

    @field_validator("pipelines", "labels")
    @classmethod
    def _strings(cls, values: list[str]) -> list[str]:
        return [str(v).strip() for v in values]

    @model_validator(mode="after")
    def _labels(self) -> "EvaluateConfig":
        if self.labels and len(self.labels) != len(self.pipelines):
            raise ValueError(f"labels has {len(self.labels)} names for {len(self.pipelines)} pipelines")
        names = self.model_labels()
        if len(set(names)) != len(names):
            raise ValueError(f"model labels must differ (got {names}); set labels")
        bad = [n for n in names if not n or "/" in n or n.startswith(".")]
        if bad:
            raise ValueError(f"labels are folder names: {bad} cannot be used")
        return self

    def model_labels(self) -> list[str]:
        if self.labels:
            return list(self.labels)
        return [Path(p.rstrip("/")).name or p for p in self.pipelines]

    def generation_fingerprint(self, resolution: int) -> dict:
        """What decides a model's image bytes (besides the model): shards are reused only when it matches.
        ``resolution`` is the one the model generates at (``generation.resolution`` resolved for it)."""
        g = self.generation
        return {"seed": g.seed, "steps": g.steps, "guidance_scale": g.guidance_scale, "resolution": resolution,
                "scheduler": g.scheduler, "batch_size": g.batch_size, "precision": g.precision,
                "images_per_prompt": g.images_per_prompt, "prompts_per_shard": g.prompts_per_shard}

    def detection_fingerprint(self) -> str:
        d = self.detection
        blob = json.dumps({"detector": d.detector, "template": d.query_template, "precision": d.precision,
                           "threshold": d.threshold}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


class AttentionConfig(StrictModel):
    """`tokencompose attention`: one prompt, one image, a map per noun."""

    model: str = Field(default=SD14, description="a Stable Diffusion folder (path, or name under the models folder)")
    prompt: str = Field(min_length=1, description="the text to generate")
    nouns: list[str] = Field(default=[], description="nouns to map (default: spaCy's noun phrases of the prompt)",
                             json_schema_extra={"cli_shortcut": "noun"})
    out_dir: Path = Field(default=Path("attention"), description="image.png, attention.png and attention.json go here",
                          json_schema_extra={"cli_shortcut": "out"})
    seed: int = Field(default=0, ge=0, description="seed of the initial noise")
    steps: int = Field(default=50, ge=1, description="denoising steps (PNDM)")
    guidance_scale: float = Field(default=7.5, ge=0, description="classifier-free guidance scale")
    resolution: Resolution | None = Field(default=None, description="square image side, a multiple of 8; default: "
                                         "the model's own (512 px for SD1.x and SD2-base, 768 px for SD2/2.1)")
    precision: InferencePrecision = Field(default="auto", description="auto: bf16 on a GPU, fp32 on the CPU")
    models: ModelsConfig = ModelsConfig()
