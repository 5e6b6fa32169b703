"""In-memory records passed between stages (not written anywhere: the shard schema is in schemas/)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Caption:
    id: int | None
    text: str


@dataclass(frozen=True)
class Annotation:
    """One COCO instance annotation, kept as the JSON gave it (pycocotools decodes the segmentation)."""

    category_id: int
    segmentation: object
    bbox: tuple[float, float, float, float]
    iscrowd: int = 0


@dataclass(frozen=True)
class ImageRecord:
    """A selected image: what the COCO source says about it."""

    image_id: int
    file_name: str
    width: int
    height: int
    captions: tuple[Caption, ...]
    annotations: tuple[Annotation, ...] = field(default=())


@dataclass(frozen=True)
class NounPhrase:
    """A noun phrase of a caption: ``caption[start:end] == text``."""

    text: str
    start: int
    end: int
