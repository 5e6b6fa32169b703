"""Image selection: read a COCO-style source and a policy (VSR split files, or all images)."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tokencompose.schemas.config import BuildConfig, SourceConfig
from tokencompose.schemas.reports import Reject
from tokencompose.tasks.records import Annotation, Caption, ImageRecord


class SourceError(ValueError):
    """A source that cannot be used at all: the run stops before any work."""


@dataclass
class Selection:
    images: list[ImageRecord]
    rejects: list[Reject]
    seen: int


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SourceError(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SourceError(f"{what} {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{what} {path} must hold a JSON object, found {type(data).__name__}")
    return data


def _require(data: dict, key: str, path: Path) -> list:
    if key not in data or not isinstance(data[key], list):
        raise SourceError(f"{path} has no list {key!r}: is it a COCO captions/instances file?")
    return data[key]


def _entry_field(entry: dict, key: str, kind: type, path: Path, index: int, list_name: str):
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SourceError(f"{path}: {list_name}[{index}] needs {key!r} as {kind.__name__}, found {value!r}")
    return value


def load_source(source: SourceConfig) -> dict[str, ImageRecord]:
    """All images of a COCO source by file name, with their captions and instance annotations."""
    if not source.images_dir.is_dir():
        raise SourceError(f"images_dir {source.images_dir} is not a folder")
    captions_data = _load_json(source.captions_json, "captions_json")
    images = _require(captions_data, "images", source.captions_json)
    caption_entries = _require(captions_data, "annotations", source.captions_json)

    captions: dict[int, list[Caption]] = defaultdict(list)
    for i, entry in enumerate(caption_entries):
        image_id = _entry_field(entry, "image_id", int, source.captions_json, i, "annotations")
        text = entry.get("caption")
        captions[image_id].append(Caption(entry.get("id"), text if isinstance(text, str) else ""))

    annotations: dict[int, list[Annotation]] = defaultdict(list)
    if source.instances_json is not None:
        instances = _load_json(source.instances_json, "instances_json")
        for i, entry in enumerate(_require(instances, "annotations", source.instances_json)):
            image_id = _entry_field(entry, "image_id", int, source.instances_json, i, "annotations")
            category_id = _entry_field(entry, "category_id", int, source.instances_json, i, "annotations")
            if "segmentation" not in entry:
                raise SourceError(f"{source.instances_json}: annotations[{i}] has no 'segmentation'")
            bbox = tuple(float(v) for v in entry.get("bbox") or (0, 0, 0, 0))
            annotations[image_id].append(Annotation(category_id, entry["segmentation"], bbox, int(entry.get("iscrowd", 0))))

    records: dict[str, ImageRecord] = {}
    first_seen: dict[int, int] = {}
    for i, entry in enumerate(images):
        image_id = _entry_field(entry, "id", int, source.captions_json, i, "images")
        file_name = _entry_field(entry, "file_name", str, source.captions_json, i, "images")
        if image_id in first_seen or file_name in records:
            raise SourceError(f"{source.captions_json}: images[{i}] repeats the id {image_id} or file name "
                              f"{file_name!r} of an earlier entry; sample keys would collide")
        first_seen[image_id] = i
        width = _entry_field(entry, "width", int, source.captions_json, i, "images")
        height = _entry_field(entry, "height", int, source.captions_json, i, "images")
        records[file_name] = ImageRecord(image_id, file_name, width, height,
                                         tuple(sorted(captions.get(image_id, ()), key=_caption_order)),
                                         tuple(annotations.get(image_id, ())))
    return records


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
                name = row["image"]
                if not isinstance(name, str) or not name:
                    raise TypeError("'image' is not a file name")
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                rejects.append(Reject(image_id=None, file_name=None, stage="selection", reason="malformed_vsr_line",
                                      detail=f"{path.name}:{line_no}: {error}"))
                continue
            names.append(name)
    return list(dict.fromkeys(names)), rejects


def select_images(config: BuildConfig) -> Selection:
    """The images to build, in a stable order, and a reject for every image dropped."""
    records = load_source(config.source)
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
            else:
                rejects.append(Reject(image_id=None, file_name=name, stage="selection", reason="not_in_source",
                                      detail=f"not in {config.source.captions_json.name}"))
        seen = len(names)
    else:
        chosen = sorted(records.values(), key=lambda r: r.image_id)
        seen = len(chosen)
    if config.selection.limit is not None:
        chosen = chosen[: config.selection.limit]
    return Selection(images=chosen, rejects=rejects, seen=seen)
