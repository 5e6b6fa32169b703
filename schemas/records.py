"""In-memory records passed between the build stages (not written anywhere: the shard sample is schemas/sample.py)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Caption:
    """A candidate caption; ``problem`` says why the source's value is not usable text (``text`` is then "")."""

    id: int | None
    text: str
    problem: str | None = None


@dataclass(frozen=True)
class Annotation:
    """One COCO instance annotation, kept as the JSON gave it (pycocotools decodes the segmentation).

    ``problem`` says why the source's annotation is unusable; its segmentation is then dropped and a
    noun of its category gets no mask (a mask without this instance would be wrong, not smaller)."""

    category_id: int
    segmentation: object
    bbox: tuple[float, float, float, float]
    iscrowd: int = 0
    id: object = None
    problem: str | None = None


@dataclass(frozen=True)
class ImageRecord:
    """A selected image: what the COCO source says about it."""

    image_id: int
    file_name: str
    width: int
    height: int
    captions: tuple[Caption, ...]
    annotations: tuple[Annotation, ...] = field(default=())
    human: "HumanAnnotations | None" = None  # LVIS / COCO-Stuff, when the source names those files


@dataclass(frozen=True)
class NounPhrase:
    """A noun phrase of a caption: ``caption[start:end] == text``."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class HumanAnnotations:
    """What the LVIS and COCO-Stuff files say about one image (read when the source names them).

    ``lvis`` is None when no LVIS file lists the image (LVIS leaves out a few COCO images); LVIS is
    federated, so a category is known present (annotated), known absent (``lvis_negative``) or
    unknown, and ``lvis_not_exhaustive`` lists categories whose instances may not all be annotated.
    ``stuff`` holds the image's COCO-Stuff regions ("other" dropped), ``stuff_names`` the file's
    category id -> name (one dict shared by every image)."""

    lvis: tuple[Annotation, ...] | None = None
    lvis_negative: frozenset[int] = frozenset()
    lvis_not_exhaustive: frozenset[int] = frozenset()
    stuff: tuple[Annotation, ...] | None = None
    stuff_names: dict = field(default_factory=dict, compare=False, hash=False)
