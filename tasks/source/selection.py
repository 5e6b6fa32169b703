"""Image selection: read a COCO-style source and a policy (VSR split files, or all images).

A source unusable as a whole (not JSON, not an object, no ``images``/``annotations`` list, repeated
image ids) stops the run with the file and entry named. A bad *entry* (an image, caption or instance
annotation) becomes a rejects row of stage ``source`` naming the file and the entry, and the run goes
on; segmentations are validated (tasks/grounding/masks.py) before pycocotools ever sees them.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tokencompose.schemas.config import BuildConfig, SourceConfig
from tokencompose.schemas.curation import CurationFileError, read_exclusions
from tokencompose.schemas.reports import Reject
from tokencompose.schemas.sample import sample_key
from tokencompose.schemas.reasons import RejectReason
from tokencompose.tasks.source.coco_json import (MAX_ID, SOURCE_STAGE, ImageEntry, Source, SourceError, entry_location,
                                                 is_id, is_text, json_type, load_json, read_instances,
                                                 require_list)
from tokencompose.tasks.source.human_sources import read_human_annotations
from tokencompose.schemas.records import Caption, ImageRecord


@dataclass
class Selection:
    images: list[ImageRecord]
    rejects: list[Reject]
    seen: int


def _image_entry_problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return f"is {json_type(entry)}, not an object"
    if not is_id(entry.get("id")):
        return f"'id' must be an integer from 0 to {MAX_ID}, found {entry.get('id')!r:.40}"
    if not is_text(entry.get("file_name")) or not entry["file_name"]:
        return f"'file_name' must be a non-empty string, found {entry.get('file_name')!r:.80}"
    for key in ("width", "height"):
        value = entry.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{key!r} must be an integer, found {value!r:.40}"
    return None


def _read_images(path: Path, entries: list, source: Source) -> dict[int, ImageEntry]:
    images: dict[int, ImageEntry] = {}
    names: set[str] = set()
    for index, entry in enumerate(entries):
        problem = _image_entry_problem(entry)
        if problem:
            name = entry.get("file_name") if isinstance(entry, dict) and is_text(entry.get("file_name")) else None
            reject = Reject(image_id=None, file_name=name, stage=SOURCE_STAGE, reason=RejectReason.BAD_IMAGE_ENTRY,
                            detail=f"{entry_location(path, 'images', index, entry)}: {problem}")
            source.problems.append(reject)
            if name:
                source.broken_images.setdefault(name, reject)
            continue
        image_id, file_name = entry["id"], entry["file_name"]
        if image_id in images or file_name in names:
            raise SourceError(f"{path}: images[{index}] repeats the id {image_id} or file name "
                              f"{file_name!r} of an earlier entry; sample keys would collide")
        images[image_id] = ImageEntry(index, image_id, file_name, entry["width"], entry["height"])
        names.add(file_name)
    return images


def _caption(entry: dict) -> Caption:
    text = entry.get("caption")
    if is_text(text):
        return Caption(entry.get("id"), text)
    what = "a string that is not valid Unicode" if isinstance(text, str) else json_type(text)
    return Caption(entry.get("id"), "", problem=f"not text ({what})")


def _read_captions(path: Path, entries: list, images: dict[int, ImageEntry], source: Source
                   ) -> dict[int, list[Caption]]:
    captions: dict[int, list[Caption]] = defaultdict(list)
    for index, entry in enumerate(entries):
        image_id = entry.get("image_id") if isinstance(entry, dict) else None
        caption_id = entry.get("id") if isinstance(entry, dict) else None
        if not is_id(image_id) or (caption_id is not None and not is_id(caption_id)):
            problem = (f"is {json_type(entry)}, not an object" if not isinstance(entry, dict) else
                       f"'image_id' must be an integer, found {image_id!r:.40}" if not is_id(image_id) else
                       f"'id' must be an integer or absent, found {caption_id!r:.40}")
            known = images.get(image_id) if is_id(image_id) else None
            source.problems.append(Reject(image_id=known.image_id if known else None,
                                          file_name=known.file_name if known else None, stage=SOURCE_STAGE,
                                          reason=RejectReason.BAD_CAPTION_ENTRY,
                                          detail=f"{entry_location(path, 'annotations', index, entry)}: {problem}"))
            continue
        if image_id in images:
            captions[image_id].append(_caption(entry))
    return captions


def read_source(source: SourceConfig) -> Source:
    """All usable images of a COCO source with their captions and instance annotations, and a
    rejects row for every entry that cannot be used."""
    if source.images_dir is None or source.captions_json is None:
        raise SourceError("a COCO source needs source.images_dir and source.captions_json")
    if not source.images_dir.is_dir():
        raise SourceError(f"images_dir {source.images_dir} is not a folder")
    captions_data = load_json(source.captions_json, "captions_json")
    image_entries = require_list(captions_data, "images", source.captions_json)
    caption_entries = require_list(captions_data, "annotations", source.captions_json)
    instances: tuple[Path, list] | None = None
    if source.instances_json is not None:
        instances_data = load_json(source.instances_json, "instances_json")
        instances = (source.instances_json, require_list(instances_data, "annotations", source.instances_json))

    result = Source(records={})
    images = _read_images(source.captions_json, image_entries, result)
    captions = _read_captions(source.captions_json, caption_entries, images, result)
    annotations = read_instances(*instances, images, result) if instances is not None else {}
    human = {}
    if source.lvis_json or source.stuff_json:
        human = read_human_annotations(source, images, result)
    for image in sorted(images.values(), key=lambda i: i.index):
        result.records[image.file_name] = ImageRecord(
            image.image_id, image.file_name, image.width, image.height,
            tuple(sorted(captions.get(image.image_id, ()), key=_caption_order)),
            tuple(annotations.get(image.image_id, ())), human.get(image.image_id))
    return result


def load_source(source: SourceConfig) -> dict[str, ImageRecord]:
    """All usable images of a COCO source by file name, with their captions and instance annotations."""
    return read_source(source).records


def _caption_order(caption: Caption) -> tuple:
    return (caption.id is None, caption.id if caption.id is not None else 0, caption.text)


def read_vsr_image_names(path: Path) -> tuple[list[str], list[Reject]]:
    """Distinct image file names of a VSR JSON Lines file in order of first appearance;
    malformed lines become rejects that name the file and line."""
    if not path.is_file():
        raise SourceError(f"VSR file {path} does not exist")
    names: list[str] = []
    rejects: list[Reject] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError(f"the line is {json_type(row)}, not an object")
                name = row["image"]
                if not is_text(name) or not name:
                    raise TypeError(f"'image' is not a file name: {name!r:.80}")
            except (ValueError, KeyError, TypeError, RecursionError) as error:
                message = "no 'image' key" if isinstance(error, KeyError) else str(error)[:200]
                rejects.append(Reject(image_id=None, file_name=None, stage="selection", reason=RejectReason.MALFORMED_VSR_LINE,
                                      detail=f"{path.name}:{line_no}: {message}"))
                continue
            names.append(name)
    return list(dict.fromkeys(names)), rejects


def read_keys_file(path: Path) -> set[str]:
    """Keys or file names, one a line (blank lines and # comments skipped), or a JSON list or an object
    with a "keys" list (the viewer's export)."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise SourceError(f"selection.keys_file {path}: not valid JSON ({error})") from None
        keys = data.get("keys") if isinstance(data, dict) else data
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise SourceError(f"selection.keys_file {path}: expected a list of strings or an object with 'keys'")
        return set(keys)
    return {line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}


def select_images(config: BuildConfig) -> Selection:
    """The images to build, in a stable order, and a reject for every image dropped."""
    if config.source.dataset:
        from tokencompose.tasks.source.streams import select_dataset_rows

        wanted = read_keys_file(config.selection.keys_file) if config.selection.keys_file is not None else None
        rows = select_dataset_rows(config, wanted)
        return Selection(images=rows.images, rejects=rows.rejects, seen=rows.seen)
    source = read_source(config.source)
    records = source.records
    rejects: list[Reject] = []
    if config.selection.policy == "vsr":
        names: list[str] = []
        for path in config.selection.vsr_files:
            file_names, file_rejects = read_vsr_image_names(path)
            names += file_names
            rejects += file_rejects
        names = list(dict.fromkeys(names))
        chosen = []
        for name in names:
            if name in records:
                chosen.append(records[name])
            elif name not in source.broken_images:
                rejects.append(Reject(image_id=None, file_name=name, stage="selection", reason=RejectReason.NOT_IN_SOURCE,
                                      detail=f"not in {Path(config.source.captions_json or '').name}"))
        seen = len(names)
    else:
        chosen = sorted(records.values(), key=lambda r: r.image_id)
        seen = len(chosen) + sum(1 for p in source.problems if p.reason == RejectReason.BAD_IMAGE_ENTRY)
    if config.selection.keys_file is not None:
        wanted = read_keys_file(config.selection.keys_file)
        chosen = [r for r in chosen if sample_key(r.image_id) in wanted or r.file_name in wanted]
    if config.selection.exclude_flagged is not None:
        try:
            flagged = read_exclusions(config.selection.exclude_flagged).samples
        except CurationFileError as error:
            raise SourceError(f"selection.exclude_flagged: {error}") from None
        chosen = [r for r in chosen if sample_key(r.image_id) not in flagged]
    if config.selection.limit is not None:
        chosen = chosen[: config.selection.limit]
    chosen_ids = {record.image_id for record in chosen}
    chosen_names = set(names) if config.selection.policy == "vsr" else None
    rejects += [p for p in source.problems if _concerns(p, chosen_ids, chosen_names)]
    return Selection(images=chosen, rejects=rejects, seen=seen)


def _concerns(problem: Reject, chosen_ids: set[int], vsr_names: set[str] | None) -> bool:
    """Whether a source row belongs in this build's report: it is about a chosen image, a broken
    image entry the selection names, or an entry that names no image at all."""
    if problem.image_id is not None:
        return problem.image_id in chosen_ids
    if problem.reason == RejectReason.BAD_IMAGE_ENTRY and problem.file_name and vsr_names is not None:
        return problem.file_name in vsr_names
    return True
