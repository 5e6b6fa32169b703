"""COCO-format JSON files (captions, instances, and the LVIS and COCO-Stuff files that share the format):
reading them, what an entry must look like, and where a bad entry is, for its rejects row.

Shared by the image selection (tasks/source/selection.py) and the human annotation sources
(tasks/source/human_sources.py). A file unusable as a whole raises :class:`SourceError`; a bad entry
becomes a rejects row of stage ``source`` in :class:`Source` and the run goes on. Segmentations are
validated (tasks/grounding/masks.py) before pycocotools ever sees them.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

from tokencompose.schemas.reasons import RejectReason
from tokencompose.schemas.reports import Reject
from tokencompose.tasks.grounding import masks
from tokencompose.schemas.records import Annotation, ImageRecord

SOURCE_STAGE = "source"
MAX_ID = 2**63 - 1  # ids are int64 in the dataset card


class SourceError(ValueError):
    """A source that cannot be used at all: the run stops before any work."""


@dataclass
class Source:
    """What a COCO source holds: the usable images by file name, and a row per unusable entry."""

    records: dict[str, ImageRecord]
    problems: list[Reject] = field(default_factory=list)
    broken_images: dict[str, Reject] = field(default_factory=dict)  # by file name, for VSR look-ups


def load_json(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (``what``: the setting that names it); anything else stops the run."""
    if not path.is_file():
        raise SourceError(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise SourceError(f"{what} {path} is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{what} {path} must hold a JSON object, found {json_type(data)}")
    return data


def require_list(data: dict, key: str, path: Path) -> list:
    """``data[key]``, which must be a list (the file is no COCO file otherwise)."""
    if key not in data or not isinstance(data[key], list):
        raise SourceError(f"{path} has no list {key!r}: is it a COCO captions/instances file?")
    return data[key]


def json_type(value: object) -> str:
    """How JSON would call the type of ``value`` (for messages)."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def is_text(value: object) -> TypeGuard[str]:
    """A string that can be written as UTF-8 (JSON escapes can smuggle in lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_id(value: object) -> TypeGuard[int]:
    """An integer id the dataset card can hold (int64, not negative; a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def entry_location(path: Path, list_name: str, index: int, entry: object) -> str:
    """Where an entry is, for a message: ``captions.json images[3] (id 5)``."""
    entry_id = entry.get("id") if isinstance(entry, dict) else None
    suffix = f" (id {entry_id!r:.40})" if entry_id is not None else ""
    return f"{path.name} {list_name}[{index}]{suffix}"


@dataclass(frozen=True)
class ImageEntry:
    index: int
    image_id: int
    file_name: str
    width: int
    height: int


def _bbox(value: object) -> tuple[float, float, float, float] | None:
    if value is None:
        return (0.0, 0.0, 0.0, 0.0)
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return None
    try:
        box = tuple(float(v) for v in value)
    except OverflowError:
        return None
    if not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
        return None
    return box  # type: ignore[return-value]


def _annotation(entry: dict, image: ImageEntry) -> tuple[Annotation | None, str | None]:
    """The annotation (``problem`` set when unusable), or None when not even its category is known."""
    category_id = entry.get("category_id")
    if not isinstance(category_id, int) or isinstance(category_id, bool):
        return None, f"'category_id' must be an integer, found {category_id!r:.40}"
    bbox = _bbox(entry.get("bbox"))
    iscrowd = entry.get("iscrowd", 0)
    problem: str | None
    if "segmentation" not in entry:
        problem = "no 'segmentation'"
    elif bbox is None:
        problem = f"'bbox' must be [x, y, width, height] as finite numbers, found {entry.get('bbox')!r:.80}"
    elif iscrowd not in (0, 1) or isinstance(iscrowd, float):
        problem = f"'iscrowd' must be 0 or 1, found {iscrowd!r:.40}"
    else:
        problem = masks.validate_segmentation(entry["segmentation"], image.height, image.width)
    if problem or bbox is None:  # bbox is None only with a problem
        return Annotation(category_id, None, (0.0, 0.0, 0.0, 0.0), 0, entry.get("id"), problem), problem
    return Annotation(category_id, entry["segmentation"], bbox, int(iscrowd), entry.get("id")), None


def read_instances(path: Path, entries: list, images: dict[int, ImageEntry], source: Source
                   ) -> dict[int, list[Annotation]]:
    """The instance annotations of the images in ``images``, by image id (a COCO instances, LVIS or
    COCO-Stuff file's ``annotations``); a rejects row in ``source`` for every bad entry."""
    annotations: dict[int, list[Annotation]] = defaultdict(list)
    for index, entry in enumerate(entries):
        image_id = entry.get("image_id") if isinstance(entry, dict) else None
        image = images.get(image_id) if is_id(image_id) else None
        if image is None:
            if not isinstance(entry, dict) or not is_id(image_id):
                why = (f"is {json_type(entry)}, not an object" if not isinstance(entry, dict)
                       else f"'image_id' must be an integer, found {image_id!r:.40}")
                source.problems.append(Reject(image_id=None, file_name=None, stage=SOURCE_STAGE,
                                              reason=RejectReason.BAD_ANNOTATION,
                                              detail=f"{entry_location(path, 'annotations', index, entry)}: {why}"))
            continue  # an annotation of an image the captions do not list is never used
        annotation, problem = _annotation(entry, image)
        if annotation is not None:
            annotations[image.image_id].append(annotation)
        if problem:
            source.problems.append(Reject(image_id=image.image_id, file_name=image.file_name, stage=SOURCE_STAGE,
                                          reason=RejectReason.BAD_ANNOTATION,
                                          detail=f"{entry_location(path, 'annotations', index, entry)}: {problem}"))
    return annotations
