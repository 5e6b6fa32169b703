"""Binary masks <-> COCO RLE, through pycocotools."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import mask as coco_mask


def encode(mask: np.ndarray) -> dict:
    """A boolean HxW mask as compressed RLE with string counts (JSON-ready)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict) -> np.ndarray:
    """A compressed RLE (string or bytes counts) as a boolean HxW array."""
    counts = rle["counts"]
    compressed = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco_mask.decode(compressed).astype(bool)


def segmentation_to_rle(segmentation: object, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(segmentation, list):
        rles = coco_mask.frPyObjects(segmentation, height, width)
        return coco_mask.merge(rles)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return coco_mask.frPyObjects(segmentation, height, width)
    if isinstance(segmentation, dict):
        counts = segmentation["counts"]
        return {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError(f"unknown COCO segmentation of type {type(segmentation).__name__}")


def union(rles: Sequence[dict]) -> dict:
    """The union of compressed RLEs of one size, as JSON-ready RLE."""
    merged = coco_mask.merge(list(rles), intersect=False) if len(rles) > 1 else rles[0]
    counts = merged["counts"]
    return {"size": [int(merged["size"][0]), int(merged["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def area(rle: dict) -> int:
    return int(coco_mask.area(_compressed(rle)))


def box(rle: dict) -> tuple[float, float, float, float]:
    """[x, y, width, height] of the mask's bounding box."""
    x, y, w, h = coco_mask.toBbox(_compressed(rle)).tolist()
    return (float(x), float(y), float(w), float(h))


def _compressed(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
