"""The model registry's records: one entry per trained model, and the index that says which is promoted."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tokencompose.schemas.base import StrictRecord

REGISTRY_FORMAT = 1
Status = Literal["promoted", "candidate", "rejected", "failed", "retired"]


class MultiGenResult(StrictRecord):
    """The quick MultiGen run an entry was judged on (both models used the same prompts and seeds)."""

    metric: str = Field(description="the deciding metric, e.g. mg3")
    value: float = Field(description="the entry's value of the metric, in percent")
    baseline: str = Field(description="what it was compared with: a registry entry id or the base model")
    baseline_value: float
    scores: dict[str, float] = Field(default_factory=dict, description="mg1..mg5 means of this model")
    report: str | None = Field(default=None, description="the markdown report of the comparison")


class RegistryEntry(StrictRecord):
    """One trained model: where it is, what made it, how it measured, and what was decided."""

    id: str
    status: Status
    created: str = Field(description="UTC, ISO 8601")
    pipeline_dir: Path | None = Field(description="the exported StableDiffusionPipeline folder (None if it failed)")
    base_model: Path = Field(description="the pipeline it was trained from")
    parent: str | None = Field(default=None, description="the registry entry it was trained from, if any")
    dataset_dir: Path
    dataset_version: int | None = None
    dataset_shards: list[str] = Field(default_factory=list)
    train_config_hash: str
    steps: int
    multigen: MultiGenResult | None = None
    reason: str = Field(default="", description="why it has its status")


class RegistryEvent(StrictRecord):
    at: str
    action: Literal["promote", "rollback", "reject", "fail", "register"]
    entry: str
    by: str = Field(default="manual", description="manual, or the flow run that did it")


class RegistryIndex(StrictRecord):
    """registry.json: the promoted entry and the history of decisions. Written atomically, after the
    entry files it points at, so a crash never leaves a pointer to a half-written entry."""

    format: int = REGISTRY_FORMAT
    promoted: str | None = None
    history: list[RegistryEvent] = Field(default_factory=list)
