"""Grounding: one binary mask per noun phrase, through a backend.

The offline default, :class:`CocoAnnotationGrounder`, reads the image's own COCO instance
annotations: a curated table (data/noun_categories.csv) maps a noun to a COCO category and the
noun's mask is the union of that category's instances in the image.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Protocol, Sequence

from PIL import Image

from tokencompose.data import DATA_DIR
from tokencompose.schemas.sample import BackendInfo, CocoRLE, Grounding
from tokencompose.schemas.reasons import NounReason
from tokencompose.tasks.grounding import masks
from tokencompose.tasks.nouns.extraction import lookup_text, singular_forms
from tokencompose.schemas.records import ImageRecord

BUNDLED_NOUN_TABLE = DATA_DIR / "noun_categories.csv"
COCO_CATEGORIES = DATA_DIR / "coco_categories.csv"

# Reasons a noun has no mask; the viewer and the stats group by them.


class Grounder(Protocol):
    def info(self) -> BackendInfo: ...

    def ground(self, images: Sequence[Image.Image], records: Sequence[ImageRecord],
               nouns: Sequence[Sequence[str]]) -> list[list[Grounding]]:
        """One :class:`Grounding` per noun, for a batch of RGB images with their records."""
        ...


def lookup_keys(phrase: str) -> list[str]:
    """Keys to look a phrase up by: the whole phrase, then its last two words written as one ("suit
    case" -> "suitcase", "skate board" -> "skateboard"), then its head (last) word, each also singular
    (invisible characters removed and NFKC-normalised first: see :func:`nouns.lookup_text`)."""
    words = lookup_text(phrase).lower().split()
    if not words:
        return []
    head_singulars = singular_forms(words[-1])
    keys = [" ".join(words[:-1] + [form]) for form in head_singulars]
    if len(words) > 1:
        keys += [words[-2] + form for form in head_singulars]
        keys += head_singulars
    return list(dict.fromkeys(keys))


def load_coco_categories(path: Path = COCO_CATEGORIES) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["name"]: int(row["id"]) for row in csv.DictReader(handle)}


class NounTable:
    """noun -> COCO category name, from a two-column CSV (noun, category)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else BUNDLED_NOUN_TABLE
        if not self.path.is_file():
            raise FileNotFoundError(f"noun table {self.path} does not exist")
        categories = set(load_coco_categories())
        self.table: dict[str, str] = {name: name for name in categories}
        with open(self.path, newline="", encoding="utf-8") as handle:
            for line_no, row in enumerate(csv.DictReader(handle), start=2):
                noun, category = (row.get("noun") or "").strip().lower(), (row.get("category") or "").strip()
                if not noun or category not in categories:
                    raise ValueError(f"{self.path}:{line_no}: needs a noun and one of the 80 COCO category "
                                     f"names, got noun={noun!r} category={category!r}")
                self.table[noun] = category
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]

    def category(self, phrase: str) -> str | None:
        for key in lookup_keys(phrase):
            if key in self.table:
                return self.table[key]
        return None


class CocoAnnotationGrounder:
    """Masks from the image's COCO instance annotations (pycocotools), via the noun table."""

    source = "coco_annotations"

    def __init__(self, noun_table: Path | None = None, has_instances: bool = True):
        self.nouns = NounTable(noun_table)
        self.category_ids = load_coco_categories()
        self.has_instances = has_instances

    def info(self) -> BackendInfo:
        from importlib.metadata import version

        return BackendInfo(name="coco", version=version("pycocotools"),
                           details={"noun_table": self.nouns.path.name, "noun_table_sha256": self.nouns.sha256})

    def ground(self, images: Sequence[Image.Image], records: Sequence[ImageRecord],
               nouns: Sequence[Sequence[str]]) -> list[list[Grounding]]:
        return [[self.ground_noun(record, noun) for noun in image_nouns]
                for record, image_nouns in zip(records, nouns)]

    def ground_noun(self, record: ImageRecord, noun: str) -> Grounding:
        category = self.nouns.category(noun)
        if category is None:
            return Grounding(reason=NounReason.NO_COCO_CATEGORY)
        return self.ground_category(record, category)

    def ground_category(self, record: ImageRecord, category: str) -> Grounding:
        """The union of the image's instances of one of COCO's 80 categories."""
        if not self.has_instances:
            return Grounding(category=category, reason=NounReason.NO_INSTANCE_ANNOTATIONS)
        category_id = self.category_ids[category]
        instances = [a for a in record.annotations if a.category_id == category_id]
        if not instances:
            return Grounding(category=category, reason=NounReason.CATEGORY_NOT_ANNOTATED)
        if any(a.problem for a in instances):
            return Grounding(category=category, reason=NounReason.BAD_ANNOTATION)
        try:
            rles = [masks.segmentation_to_rle(a.segmentation, record.height, record.width) for a in instances]
        except masks.SegmentationProblem:
            return Grounding(category=category, reason=NounReason.BAD_ANNOTATION)
        mask = masks.union(rles)
        if masks.area(mask) == 0:
            return Grounding(category=category, reason=NounReason.EMPTY_MASK)
        return Grounding(mask=CocoRLE.model_validate(mask), box=masks.box(mask), category=category, source=self.source,
                         boxes=[a.bbox for a in instances])
