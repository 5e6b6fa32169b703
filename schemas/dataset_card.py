"""The dataset card (README.md) beside the shards: declares every field's type for the Hugging Face
`datasets` WebDataset loader and viewer, which otherwise guess types from the first few samples
(a score that is null there and a number later then fails to load)."""
from __future__ import annotations

from typing import Any

import yaml

from tokencompose.schemas.reports import FORMAT_VERSION, SHARDS_DIR

FLOAT, INT, STRING, BOOL = "float64", "int64", "string", "bool"
BOX = {"list": FLOAT}
RLE = {"struct": {"size": {"list": INT}, "counts": STRING}}
NOUN = {"struct": {"text": STRING, "span": {"list": INT}, "mask": RLE, "box": BOX, "score": FLOAT,
                   "boxes": {"list": BOX}, "box_scores": {"list": FLOAT}, "category": STRING, "source": STRING,
                   "reason": STRING}}
CANDIDATE = {"struct": {"id": INT, "text": STRING, "score": FLOAT, "excluded": STRING}}


def _backend(details: dict) -> dict:
    return {"struct": {"name": STRING, "version": STRING, "details": _infer(details)}}


def _infer(value: Any) -> Any:
    """The type of a provenance value (constant across one dataset's samples)."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, dict):
        return {"struct": {key: _infer(value[key]) for key in sorted(value)}}
    if isinstance(value, list):
        return {"list": _infer(value[0]) if value else STRING}
    return STRING


def sample_type(provenance: dict) -> dict:
    backends = {stage: _backend(provenance.get(stage, {}).get("details", {}))
                for stage in ("captions", "nouns", "grounding")}
    build = {"build": _infer(provenance["build"])} if provenance.get("build") else {}
    return {"struct": {
        "schema_version": INT, "key": STRING, "image_id": INT, "file_name": STRING, "width": INT, "height": INT,
        "image_field": STRING, "image_mode": STRING, "caption": STRING, "caption_id": INT,
        "candidates": {"list": CANDIDATE}, "nouns": {"list": NOUN},
        "provenance": {"struct": {"tokencompose": STRING, "config_hash": STRING, **backends, **build}},
    }}


def _yaml_node(name: str | None, kind: Any) -> dict:
    node: dict[str, Any] = {} if name is None else {"name": name}
    if isinstance(kind, str):
        node["dtype"] = kind
    elif "struct" in kind:
        node["struct"] = [_yaml_node(key, sub) for key, sub in kind["struct"].items()]
    else:
        inner = kind["list"]
        if isinstance(inner, str):
            node["list"] = inner
        elif "struct" in inner:
            node["list"] = [_yaml_node(key, sub) for key, sub in inner["struct"].items()]
        else:
            node["list"] = _yaml_node(None, inner)
    return node


def features(image_field: str, provenance: dict) -> list[dict]:
    """The `dataset_info.features` list, in the YAML form `datasets` reads."""
    return [_yaml_node("__key__", STRING), _yaml_node("__url__", STRING), {"name": image_field, "dtype": "image"},
            _yaml_node("json", sample_type(provenance))]


def format_version(provenance: dict) -> int:
    """The shard format the provenance's build identity records (this code's format when it has none)."""
    return int(provenance.get("build", {}).get("format_version", 1)) if provenance.get("build") else FORMAT_VERSION


def dataset_card(image_field: str, provenance: dict, samples: int, stats_lines: list[str]) -> bytes:
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{SHARDS_DIR}/*.tar"}]}],
        "dataset_info": {"features": features(image_field, provenance)},
        "tags": ["tokencompose", "webdataset", "grounding", "segmentation"],
    }
    body = [
        "# Grounded COCO shards (tokencompose)", "",
        f"{samples} samples built by tokencompose {provenance['tokencompose']} (configuration "
        f"{provenance['config_hash']}). Each sample: `{image_field}` (the original image bytes) and `json` "
        "(caption, candidate captions with scores, nouns with character spans and COCO RLE masks).", "",
        f"Shard format {format_version(provenance)}: plain ustar tar members (no PAX headers), mtime 0, "
        "no owner names; `manifest.json` lists every shard's sha256 and the dataset versions.", "",
        *stats_lines,
    ]
    return ("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + "\n".join(body) + "\n").encode("utf-8")
