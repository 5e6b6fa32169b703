"""The model registry's records: one entry per trained model, and the index that says which is promoted."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tokencompose.schemas.base import StrictRecord
from tokencompose.schemas.multigen import MultiGenResult  # an entry's judgement (MultiGen's contracts live there)
from tokencompose.schemas.retrain import GateSettings

REGISTRY_FORMAT = 1
# An entry id names its file entries/<id>.json: letters, digits, '_', '-' and '.', not starting with
# '.', at most MAX_ENTRY_ID characters (what retraining writes: 20261201T000000Z-1a2b3c).
MAX_ENTRY_ID = 100
ENTRY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def entry_id_problem(entry_id: object) -> str | None:
    """Why ``entry_id`` is not a valid registry entry id, or None when it is one."""
    if not isinstance(entry_id, str):
        return f"a registry entry id is text, not {type(entry_id).__name__}"
    shown = repr(entry_id) if len(entry_id) <= 40 else f"{entry_id[:37]!r}... ({len(entry_id)} characters)"
    if len(entry_id) > MAX_ENTRY_ID:
        return f"{shown} is not a registry entry id: longer than {MAX_ENTRY_ID} characters"
    if not ENTRY_ID.fullmatch(entry_id):
        return (f"{shown} is not a registry entry id: ids are letters, digits, '_', '-' and '.', "
                "not starting with '.'")
    return None


def _valid_id(value: str | None) -> str | None:
    """An entry id, or None / '' where the field allows naming no entry."""
    problem = entry_id_problem(value) if value not in (None, "") else None
    if problem:
        raise ValueError(problem)
    return value


def _required_id(value: str) -> str:
    problem = entry_id_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class Criterion(StrictRecord):
    """One criterion of the promotion gate as judged: what was measured, against what, and the verdict."""

    name: str = Field(description="composition_MG<k>, fid or clip_score")
    value: float | None = Field(description="candidate minus baseline; None when not measured")
    low: float | None = Field(default=None, description="the interval's lower end (composition: the one-sided "
                              "lower bound)")
    high: float | None = Field(default=None, description="the interval's upper end (None for a one-sided bound)")
    threshold: float = Field(description="what the rule compares with: the margin, the FID tolerance, minus the "
                             "CLIP tolerance")
    rule: str = Field(description="the rule in words")
    passed: bool
    reason: str = Field(description="the verdict in one line, with the figures")
    baseline: float | None = Field(default=None, description="the baseline's own figure")
    candidate: float | None = Field(default=None, description="the candidate's own figure")


class GateDecision(StrictRecord):
    """The gate's whole decision: every judged criterion and the settings it was judged with."""

    promote: bool = Field(description="every criterion passed")
    criteria: list[Criterion]
    settings: GateSettings

    def failed(self) -> list[str]:
        return [f"{c.name}: {c.reason}" for c in self.criteria if not c.passed]


Status = Literal["promoted", "candidate", "rejected", "failed", "retired"]
Action = Literal["promote", "rollback", "reject", "fail", "register", "repair", "gc"]


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
    gate: GateDecision | None = Field(default=None, description="the promotion gate's criteria and verdicts (None "
                                      "in entries written before the gate, and when not evaluated)")
    reason: str = Field(default="", description="why it has its status")

    _id = field_validator("id")(_required_id)
    _parent = field_validator("parent")(_valid_id)


class RegistryEvent(StrictRecord):
    at: str
    action: Action
    entry: str = Field(description="the entry acted on; for repair, the entry left promoted ('' for none)")
    by: str = Field(default="manual", description="manual, or the flow run that did it")
    detail: str = Field(default="", description="what a repair decided and dropped, what a rollback skipped")

    _entry = field_validator("entry")(_valid_id)


class RegistryIndex(StrictRecord):
    """registry.json: the promoted entry and the history of decisions. Written atomically, after the
    entry files it points at, so a crash never leaves a pointer to a half-written entry."""

    format: int = REGISTRY_FORMAT
    promoted: str | None = None
    history: list[RegistryEvent] = Field(default_factory=list)

    _promoted = field_validator("promoted")(_valid_id)
