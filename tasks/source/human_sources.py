"""Reading the LVIS v1 and COCO-Stuff annotation files of a source, keyed by COCO image id.

Both are COCO-format instance files over the COCO 2017 images. Their annotations go through the
same validation as the instances file (tasks/source/coco_json.py, tasks/grounding/masks.validate_segmentation): a
malformed one becomes a rejects row and a noun of its category gets no mask. Only annotations of
images the captions file lists are kept, each segmentation as the parsed JSON gave it (no copy).

LVIS specifics: image entries carry ``coco_url`` (no ``file_name``; the id is the COCO id) and the
federated lists ``neg_category_ids`` (checked absent) and ``not_exhaustive_category_ids``. The file's
category list must agree with LVIS v1's (data/lvis_categories.json): ids are looked up by name there.
COCO-Stuff: the file's ``categories`` give the names; "other" (id 183) is dropped on reading.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tokencompose.schemas.config import SourceConfig
from tokencompose.schemas.reports import Reject
from tokencompose.schemas.reasons import RejectReason
from tokencompose.schemas.records import Annotation, HumanAnnotations
from tokencompose.tasks.source.coco_json import (SOURCE_STAGE, ImageEntry, Source, SourceError, entry_location, is_id,
                                                 is_text, json_type, load_json, read_instances, require_list)

STUFF_OTHER = "other"


def _id_list(value: object) -> frozenset[int] | None:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(is_id(v) for v in value):
        return None
    return frozenset(value)


def _check_lvis_categories(path: Path, data: dict) -> None:
    from tokencompose.tasks.grounding.human import lvis_vocabulary

    categories = data.get("categories")
    if categories is None:
        return
    if not isinstance(categories, list):
        raise SourceError(f"{path}: 'categories' must be a list, found {json_type(categories)}")
    known = lvis_vocabulary().names
    for index, entry in enumerate(categories):
        if not isinstance(entry, dict) or not is_id(entry.get("id")) or not is_text(entry.get("name")):
            raise SourceError(f"{path}: categories[{index}] needs an integer 'id' and a string 'name'")
        if known.get(entry["id"]) != entry["name"]:
            raise SourceError(f"{path}: category {entry['id']} is {entry['name']!r:.60} here but "
                              f"{known.get(entry['id'])!r} in LVIS v1: is it an LVIS v1 file?")


def _read_lvis(paths: list[Path], images: dict[int, ImageEntry], source: Source
               ) -> tuple[dict[int, list[Annotation]], dict[int, tuple[frozenset[int], frozenset[int]]]]:
    annotations: dict[int, list[Annotation]] = defaultdict(list)
    listed: dict[int, tuple[frozenset[int], frozenset[int]]] = {}
    for path in paths:
        data = load_json(path, "lvis_json")
        entries = require_list(data, "images", path)
        _check_lvis_categories(path, data)
        for index, entry in enumerate(entries):
            entry_id = entry.get("id") if isinstance(entry, dict) else None
            image = images.get(entry_id) if is_id(entry_id) else None
            if image is None:
                continue  # an image the captions do not list (or not an object: it names no image of ours)
            negative = _id_list(entry.get("neg_category_ids"))
            partial = _id_list(entry.get("not_exhaustive_category_ids"))
            if negative is None or partial is None:
                key = "neg_category_ids" if negative is None else "not_exhaustive_category_ids"
                source.problems.append(Reject(
                    image_id=image.image_id, file_name=image.file_name, stage=SOURCE_STAGE,
                    reason=RejectReason.BAD_ANNOTATION,
                    detail=f"{entry_location(path, 'images', index, entry)}: {key!r} must be a list of category ids"))
                negative, partial = negative or frozenset(), partial or frozenset()
            if image.image_id in listed:
                raise SourceError(f"{path}: images[{index}] repeats image id {image.image_id} (given twice in "
                                  f"the LVIS files)")
            listed[image.image_id] = (negative, partial)
        for image_id, found in read_instances(path, require_list(data, "annotations", path), images, source).items():
            annotations[image_id] += found
        del data, entries
    return annotations, listed


def _stuff_names(path: Path, data: dict) -> dict[int, str]:
    categories = require_list(data, "categories", path)
    names: dict[int, str] = {}
    for index, entry in enumerate(categories):
        if not isinstance(entry, dict) or not is_id(entry.get("id")) or not is_text(entry.get("name")):
            raise SourceError(f"{path}: categories[{index}] needs an integer 'id' and a string 'name'")
        names[entry["id"]] = entry["name"].strip()
    return names


def _read_stuff(paths: list[Path], images: dict[int, ImageEntry], source: Source
                ) -> tuple[dict[int, list[Annotation]], dict[int, str]]:
    annotations: dict[int, list[Annotation]] = defaultdict(list)
    names: dict[int, str] = {}
    for path in paths:
        data = load_json(path, "stuff_json")
        file_names = _stuff_names(path, data)
        for category_id, name in file_names.items():
            if names.setdefault(category_id, name) != name:
                raise SourceError(f"{path}: category {category_id} is {name!r:.60} here but {names[category_id]!r} "
                                  f"in an earlier COCO-Stuff file")
        for image_id, found in read_instances(path, require_list(data, "annotations", path), images, source).items():
            annotations[image_id] += [a for a in found if file_names.get(a.category_id, STUFF_OTHER) != STUFF_OTHER]
        del data
    return annotations, {i: n for i, n in names.items() if n != STUFF_OTHER}


def read_human_annotations(config: SourceConfig, images: dict[int, ImageEntry], source: Source
                           ) -> dict[int, HumanAnnotations]:
    """Per image id of ``images``: its LVIS and COCO-Stuff annotations (rejects rows added to ``source``)."""
    lvis, listed = _read_lvis(list(config.lvis_json), images, source) if config.lvis_json else ({}, {})
    stuff, stuff_names = _read_stuff(list(config.stuff_json), images, source) if config.stuff_json else ({}, {})
    result = {}
    for image_id in images:
        negative, partial = listed.get(image_id, (frozenset(), frozenset()))
        result[image_id] = HumanAnnotations(
            lvis=tuple(lvis.get(image_id, ())) if image_id in listed else None,
            lvis_negative=negative, lvis_not_exhaustive=partial,
            stuff=tuple(stuff.get(image_id, ())) if config.stuff_json else None, stuff_names=stuff_names)
    return result
