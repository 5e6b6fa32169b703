"""Image selection: read a COCO-style source and a policy (VSR split files, or all images).

A source unusable as a whole (not JSON, not an object, no ``images``/``annotations`` list, repeated
image ids) stops the run with the file and entry named. A bad *entry* (an image, caption or instance
annotation) becomes a rejects row of stage ``source`` naming the file and the entry, and the run goes
on; segmentations are validated (tasks/grounding/masks.py) before pycocotools ever sees them.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tokencompose.schemas.config import BuildConfig, SourceConfig
from tokencompose.schemas.reports import Reject
from tokencompose.schemas.sample import sample_key
from tokencompose.schemas.reasons import RejectReason
from tokencompose.tasks.grounding import masks
from tokencompose.tasks.source.records import Annotation, Caption, ImageRecord

SOURCE_STAGE = "source"
MAX_ID = 2**63 - 1  # ids are int64 in the dataset card


class SourceError(ValueError):
    """A source that cannot be used at all: the run stops before any work."""


@dataclass
class Selection:
    images: list[ImageRecord]
    rejects: list[Reject]
    seen: int


@dataclass
class Source:
    """What a COCO source holds: the usable images by file name, and a row per unusable entry."""

    records: dict[str, ImageRecord]
    problems: list[Reject] = field(default_factory=list)
    broken_images: dict[str, Reject] = field(default_factory=dict)  # by file name, for VSR look-ups


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SourceError(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise SourceError(f"{what} {path} is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{what} {path} must hold a JSON object, found {_json_type(data)}")
    return data


def _require(data: dict, key: str, path: Path) -> list:
    if key not in data or not isinstance(data[key], list):
        raise SourceError(f"{path} has no list {key!r}: is it a COCO captions/instances file?")
    return data[key]


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def is_text(value: object) -> bool:
    """A string that can be written as UTF-8 (JSON escapes can smuggle in lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def _where(path: Path, list_name: str, index: int, entry: object) -> str:
    entry_id = entry.get("id") if isinstance(entry, dict) else None
    suffix = f" (id {entry_id!r:.40})" if entry_id is not None else ""
    return f"{path.name} {list_name}[{index}]{suffix}"


@dataclass(frozen=True)
class _ImageEntry:
    index: int
    image_id: int
    file_name: str
    width: int
    height: int


def _image_entry_problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return f"is {_json_type(entry)}, not an object"
    if not _is_id(entry.get("id")):
        return f"'id' must be an integer from 0 to {MAX_ID}, found {entry.get('id')!r:.40}"
    if not is_text(entry.get("file_name")) or not entry["file_name"]:
        return f"'file_name' must be a non-empty string, found {entry.get('file_name')!r:.80}"
    for key in ("width", "height"):
        value = entry.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{key!r} must be an integer, found {value!r:.40}"
    return None


def _read_images(path: Path, entries: list, source: Source) -> dict[int, _ImageEntry]:
    images: dict[int, _ImageEntry] = {}
    names: set[str] = set()
    for index, entry in enumerate(entries):
        problem = _image_entry_problem(entry)
        if problem:
            name = entry.get("file_name") if isinstance(entry, dict) and is_text(entry.get("file_name")) else None
            reject = Reject(image_id=None, file_name=name, stage=SOURCE_STAGE, reason=RejectReason.BAD_IMAGE_ENTRY,
                            detail=f"{_where(path, 'images', index, entry)}: {problem}")
            source.problems.append(reject)
            if name:
                source.broken_images.setdefault(name, reject)
            continue
        image_id, file_name = entry["id"], entry["file_name"]
        if image_id in images or file_name in names:
            raise SourceError(f"{path}: images[{index}] repeats the id {image_id} or file name "
                              f"{file_name!r} of an earlier entry; sample keys would collide")
        images[image_id] = _ImageEntry(index, image_id, file_name, entry["width"], entry["height"])
        names.add(file_name)
    return images


def _caption(entry: dict) -> Caption:
    text = entry.get("caption")
    if is_text(text):
        return Caption(entry.get("id"), text)
    what = "a string that is not valid Unicode" if isinstance(text, str) else _json_type(text)
    return Caption(entry.get("id"), "", problem=f"not text ({what})")


def _read_captions(path: Path, entries: list, images: dict[int, _ImageEntry], source: Source
                   ) -> dict[int, list[Caption]]:
    captions: dict[int, list[Caption]] = defaultdict(list)
    for index, entry in enumerate(entries):
        image_id = entry.get("image_id") if isinstance(entry, dict) else None
        caption_id = entry.get("id") if isinstance(entry, dict) else None
        if not _is_id(image_id) or (caption_id is not None and not _is_id(caption_id)):
            problem = (f"is {_json_type(entry)}, not an object" if not isinstance(entry, dict) else
                       f"'image_id' must be an integer, found {image_id!r:.40}" if not _is_id(image_id) else
                       f"'id' must be an integer or absent, found {caption_id!r:.40}")
            known = images.get(image_id) if _is_id(image_id) else None
            source.problems.append(Reject(image_id=known.image_id if known else None,
                                          file_name=known.file_name if known else None, stage=SOURCE_STAGE,
                                          reason=RejectReason.BAD_CAPTION_ENTRY,
                                          detail=f"{_where(path, 'annotations', index, entry)}: {problem}"))
            continue
        if image_id in images:
            captions[image_id].append(_caption(entry))
    return captions


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


def _annotation(entry: dict, image: _ImageEntry) -> tuple[Annotation | None, str | None]:
    """The annotation (``problem`` set when unusable), or None when not even its category is known."""
    category_id = entry.get("category_id")
    if not isinstance(category_id, int) or isinstance(category_id, bool):
        return None, f"'category_id' must be an integer, found {category_id!r:.40}"
    bbox = _bbox(entry.get("bbox"))
    iscrowd = entry.get("iscrowd", 0)
    if "segmentation" not in entry:
        problem = "no 'segmentation'"
    elif bbox is None:
        problem = f"'bbox' must be [x, y, width, height] as finite numbers, found {entry.get('bbox')!r:.80}"
    elif iscrowd not in (0, 1) or isinstance(iscrowd, float):
        problem = f"'iscrowd' must be 0 or 1, found {iscrowd!r:.40}"
    else:
        problem = masks.validate_segmentation(entry["segmentation"], image.height, image.width)
    if problem:
        return Annotation(category_id, None, (0.0, 0.0, 0.0, 0.0), 0, entry.get("id"), problem), problem
    return Annotation(category_id, entry["segmentation"], bbox, int(iscrowd), entry.get("id")), None


def _read_instances(path: Path, entries: list, images: dict[int, _ImageEntry], source: Source
                    ) -> dict[int, list[Annotation]]:
    annotations: dict[int, list[Annotation]] = defaultdict(list)
    for index, entry in enumerate(entries):
        image_id = entry.get("image_id") if isinstance(entry, dict) else None
        image = images.get(image_id) if _is_id(image_id) else None
        if image is None:
            if not isinstance(entry, dict) or not _is_id(image_id):
                problem = (f"is {_json_type(entry)}, not an object" if not isinstance(entry, dict)
                           else f"'image_id' must be an integer, found {image_id!r:.40}")
                source.problems.append(Reject(image_id=None, file_name=None, stage=SOURCE_STAGE,
                                              reason=RejectReason.BAD_ANNOTATION,
                                              detail=f"{_where(path, 'annotations', index, entry)}: {problem}"))
            continue  # an annotation of an image the captions do not list is never used
        annotation, problem = _annotation(entry, image)
        if annotation is not None:
            annotations[image.image_id].append(annotation)
        if problem:
            source.problems.append(Reject(image_id=image.image_id, file_name=image.file_name, stage=SOURCE_STAGE,
                                          reason=RejectReason.BAD_ANNOTATION,
                                          detail=f"{_where(path, 'annotations', index, entry)}: {problem}"))
    return annotations


def read_source(source: SourceConfig) -> Source:
    """All usable images of a COCO source with their captions and instance annotations, and a
    rejects row for every entry that cannot be used."""
    if not source.images_dir.is_dir():
        raise SourceError(f"images_dir {source.images_dir} is not a folder")
    captions_data = _load_json(source.captions_json, "captions_json")
    image_entries = _require(captions_data, "images", source.captions_json)
    caption_entries = _require(captions_data, "annotations", source.captions_json)
    instance_entries = None
    if source.instances_json is not None:
        instances = _load_json(source.instances_json, "instances_json")
        instance_entries = _require(instances, "annotations", source.instances_json)

    result = Source(records={})
    images = _read_images(source.captions_json, image_entries, result)
    captions = _read_captions(source.captions_json, caption_entries, images, result)
    annotations = (_read_instances(source.instances_json, instance_entries, images, result)
                   if instance_entries is not None else {})
    human = {}
    if source.lvis_json or source.stuff_json:
        from tokencompose.tasks.source.human_sources import read_human_annotations

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
                    raise TypeError(f"the line is {_json_type(row)}, not an object")
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
                                      detail=f"not in {config.source.captions_json.name}"))
        seen = len(names)
    else:
        chosen = sorted(records.values(), key=lambda r: r.image_id)
        seen = len(chosen) + sum(1 for p in source.problems if p.reason == RejectReason.BAD_IMAGE_ENTRY)
    if config.selection.keys_file is not None:
        wanted = read_keys_file(config.selection.keys_file)
        chosen = [r for r in chosen if sample_key(r.image_id) in wanted or r.file_name in wanted]
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
