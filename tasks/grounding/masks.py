"""Binary masks <-> COCO RLE, through pycocotools.

pycocotools trusts its input: run lengths that do not sum to height x width make it write past its
buffer, and a compressed string that ends inside a number makes it read past one. Every
segmentation from a source is checked here (:func:`validate_segmentation`, :func:`validate_rle`)
before pycocotools sees it; this module is the one place that knows what a sane RLE is.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from pycocotools import mask as coco_mask

# The largest mask a segmentation may describe (pycocotools counts in 32-bit unsigned runs).
MAX_MASK_PIXELS = 1 << 31
_RLE_ALPHABET_SIZE = 64       # compressed counts are characters '0' (48) .. 'o' (111)
_MAX_CHARS_PER_RUN = 7        # 35 bits: more than any run of a mask within MAX_MASK_PIXELS


class SegmentationProblem(ValueError):
    """A segmentation that must not be given to pycocotools; the message says why."""


def encode(mask: np.ndarray) -> dict:
    """A boolean HxW mask as compressed RLE with string counts (JSON-ready)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict, size: tuple[int, int] | None = None) -> np.ndarray:
    """A compressed RLE (string or bytes counts) as a boolean HxW array, checked first: raises
    :class:`SegmentationProblem` for one pycocotools must not see (runs past the mask, a number cut
    short, characters outside the alphabet, a size other than ``size``). Build, training and viewer
    all decode shard masks through here."""
    problem = validate_rle(rle, size)
    if problem:
        raise SegmentationProblem(problem)
    counts = rle["counts"]
    if isinstance(counts, list):
        raise SegmentationProblem("decode takes compressed counts (a string), not a list of runs")
    compressed = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco_mask.decode(compressed).astype(bool)


def checked_runs(rle: object) -> list[int]:
    """The run lengths of a compressed RLE after :func:`validate_rle` (they cover exactly height x
    width); raises :class:`SegmentationProblem` otherwise. Runs alternate background, foreground."""
    problem = validate_rle(rle)
    if problem:
        raise SegmentationProblem(problem)
    counts = rle["counts"]  # type: ignore[index]
    if isinstance(counts, list):
        return list(counts)
    return compressed_runs(counts)


def checked_area(rle: object) -> int:
    """Foreground pixels of a validated RLE (every second run, starting with the second)."""
    return sum(checked_runs(rle)[1::2])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _size_problem(size: object) -> str | None:
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in size):
        return f"size must be [height, width] as two integers, found {size!r:.80}"
    height, width = size
    if height < 0 or width < 0 or height * width > MAX_MASK_PIXELS:
        return f"size {height}x{width} is negative or larger than {MAX_MASK_PIXELS} pixels"
    return None


def compressed_runs(counts: str | bytes) -> list[int]:
    """The run lengths of compressed COCO counts (pycocotools' rleFrString, checked at every step)."""
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise SegmentationProblem("compressed counts are not ASCII") from None
    runs: list[int] = []
    value = shift = 0
    for position, char in enumerate(counts):
        code = ord(char) - 48
        if not 0 <= code < _RLE_ALPHABET_SIZE:
            raise SegmentationProblem(f"counts hold {char!r} at {position}, outside the RLE alphabet")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:  # more characters of this number follow
            if shift >= 5 * _MAX_CHARS_PER_RUN:
                raise SegmentationProblem(f"a run length at {position} is longer than {_MAX_CHARS_PER_RUN} characters")
            continue
        if code & 0x10:  # sign bit of the last character
            value |= -1 << shift
        if len(runs) > 2:  # runs after the third are stored as differences (as pycocotools does)
            value += runs[-2]
        if value < 0:
            raise SegmentationProblem(f"run {len(runs)} has a negative length")
        runs.append(value)
        value = shift = 0
    if shift:
        raise SegmentationProblem("counts end inside a run length")
    return runs


def validate_rle(rle: object, size: tuple[int, int] | None = None) -> str | None:
    """What is wrong with a COCO RLE (compressed string/bytes counts or an uncompressed list of
    runs), or None when pycocotools can safely use it. ``size``: the (height, width) it must have."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        return "an RLE is an object with 'size' and 'counts'"
    problem = _size_problem(rle["size"])
    if problem:
        return problem
    height, width = rle["size"]
    if size is not None and (height, width) != tuple(size):
        return f"RLE size {height}x{width} differs from the image's {size[0]}x{size[1]}"
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        try:
            runs = compressed_runs(counts)
        except SegmentationProblem as error:
            return str(error)
    elif isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            return "uncompressed counts must be non-negative integers"
        runs = counts
    else:
        return f"counts must be a string or a list of integers, found {type(counts).__name__}"
    if sum(runs) != height * width:
        return f"runs cover {sum(runs)} pixels, the size says {height * width}"
    return None


def _polygon_problem(index: int, polygon: object, height: int, width: int) -> str | None:
    if not isinstance(polygon, list):
        return f"polygon {index} is not a list of numbers"
    if len(polygon) < 6 or len(polygon) % 2:
        return f"polygon {index} has {len(polygon)} numbers, needs an even count of at least 6"
    if not all(_is_number(v) for v in polygon):
        bad = next(v for v in polygon if not _is_number(v))
        return f"polygon {index} holds {bad!r:.40}, not a number"
    if any(isinstance(v, float) and not math.isfinite(v) for v in polygon):
        return f"polygon {index} holds a NaN or infinite coordinate"
    # Points a little outside the image are common in COCO; far outside, rasterising costs without end.
    margin = max(height, width, 1)
    xs, ys = polygon[0::2], polygon[1::2]
    if min(xs) < -margin or max(xs) > width + margin or min(ys) < -margin or max(ys) > height + margin:
        return f"polygon {index} reaches far outside the {width}x{height} image"
    return None


def _polygon_area(polygon: list) -> float:
    xs, ys = polygon[0::2], polygon[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def validate_segmentation(segmentation: object, height: int, width: int) -> str | None:
    """What is wrong with a COCO segmentation (polygons, uncompressed or compressed RLE) of an image
    of ``height`` x ``width``, or None when pycocotools can safely turn it into a mask."""
    problem = _size_problem([height, width])
    if problem:
        return f"image {problem}"
    if isinstance(segmentation, list):
        if not segmentation:
            return "no polygons"
        for index, polygon in enumerate(segmentation):
            problem = _polygon_problem(index, polygon, height, width)
            if problem:
                return problem
        if sum(_polygon_area(p) for p in segmentation) == 0:
            return "degenerate polygons (zero area)"
        return None
    if isinstance(segmentation, dict):
        return validate_rle(segmentation, (height, width))
    return f"unknown segmentation type {type(segmentation).__name__}"


def segmentation_to_rle(segmentation: object, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE;
    raises :class:`SegmentationProblem` for one that fails :func:`validate_segmentation`."""
    problem = validate_segmentation(segmentation, height, width)
    if problem:
        raise SegmentationProblem(problem)
    if isinstance(segmentation, list):
        polygons = [[float(v) for v in polygon] for polygon in segmentation]
        return coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    assert isinstance(segmentation, dict)  # validated above: a polygon list or an RLE dict
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


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
