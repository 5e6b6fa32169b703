"""The shard sample: what one WebDataset sample holds.

A sample is two tar members sharing one key: ``<key>.<image_field>`` with the original image bytes
and ``<key>.json`` with :class:`SampleRecord`. Every consumer (trainer, viewer, evaluation) reads
samples through this module.
"""
from __future__ import annotations

import json
from typing import Any, Final, Literal

from pydantic import Field, field_validator, model_validator

from tokencompose.schemas.base import StrictRecord
from tokencompose.schemas.reasons import NounReason

SCHEMA_VERSION: Final = 1
JSON_FIELD = "json"


class CocoRLE(StrictRecord):
    """A compressed COCO run-length encoding, as pycocotools writes it (counts as an ASCII string)."""

    size: tuple[int, int] = Field(description="[height, width]")
    counts: str


class Grounding(StrictRecord):
    """What a grounder says about one noun: a mask, or the reason it has none.

    ``box`` is [x, y, width, height] in pixels; ``boxes`` and ``box_scores`` are a detector's boxes
    (best first), ``score`` the best one's; ``source`` names what made the mask.
    """

    mask: CocoRLE | None = None
    box: tuple[float, float, float, float] | None = None
    score: float | None = None
    boxes: list[tuple[float, float, float, float]] = Field(default_factory=list)
    box_scores: list[float] = Field(default_factory=list)
    category: str | None = None
    source: str | None = Field(default=None, description="backend that made the mask")
    reason: NounReason | None = None

    @model_validator(mode="after")
    def _mask_or_reason(self) -> "Grounding":
        if (self.mask is None) == (self.reason is None):
            raise ValueError("a noun has either a mask or a reason for having none, not both or neither")
        if self.source is not None and self.mask is None:
            raise ValueError(f"source {self.source!r} names what made a mask, and there is none")
        return self


class Noun(Grounding):
    """One noun phrase of the chosen caption with its grounding; ``mask`` is null exactly when
    ``reason`` says why."""

    text: str
    span: tuple[int, int] = Field(description="[start, end) character offsets in the caption")

    @classmethod
    def grounded(cls, text: str, span: tuple[int, int], grounding: Grounding) -> "Noun":
        """The noun at ``span`` with what its grounder said."""
        return cls(text=text, span=span, **dict(grounding))


class CaptionCandidate(StrictRecord):
    id: int | None = None
    text: str
    score: float | None = Field(description="ranker score; null for a candidate excluded before ranking")
    excluded: str | None = Field(default=None, description="why it was not ranked (empty, too long)")


class BackendInfo(StrictRecord):
    name: str
    version: str
    details: dict[str, Any] = Field(default_factory=dict)


class Provenance(StrictRecord):
    tokencompose: str
    config_hash: str
    captions: BackendInfo
    nouns: BackendInfo
    grounding: BackendInfo
    build: dict[str, Any] = Field(default_factory=dict, description="the build identity (tasks/shards/identity.py): "
                                  "format version, code, resolved device and precisions, library versions, "
                                  "weight files' sizes and sha256; empty in format 1")


class SampleRecord(StrictRecord):
    schema_version: Literal[1] = SCHEMA_VERSION
    key: str
    image_id: int
    file_name: str
    width: int
    height: int
    image_field: str
    image_mode: str
    caption: str
    caption_id: int | None
    candidates: list[CaptionCandidate]
    nouns: list[Noun]
    provenance: Provenance

    @field_validator("key")
    @classmethod
    def _key_has_no_dot(cls, key: str) -> str:
        if not key or "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
        return key

    @model_validator(mode="after")
    def _spans_match_caption(self) -> "SampleRecord":
        for noun in self.nouns:
            start, end = noun.span
            if self.caption[start:end] != noun.text:
                raise ValueError(f"noun {noun.text!r} does not match caption span {noun.span}")
            if noun.mask is not None and tuple(noun.mask.size) != (self.height, self.width):
                raise ValueError(f"mask of {noun.text!r} has size {noun.mask.size}, image is {self.height}x{self.width}")
        return self

    def to_json_bytes(self) -> bytes:
        """Canonical bytes: sorted keys, no spaces, so equal records give equal bytes."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, data: bytes) -> "SampleRecord":
        return cls.model_validate_json(data)


def sample_key(image_id: int) -> str:
    """WebDataset keys end at the first dot, so keys are the zero-padded image id."""
    return f"{image_id:012d}"
