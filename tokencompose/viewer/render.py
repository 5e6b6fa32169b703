"""Pictures the viewer makes on the fly: noun colours, mask overlays (transparent PNG), thumbnails."""
from __future__ import annotations

import contextlib
import io
import threading
from collections import OrderedDict
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from pycocotools import mask as coco_mask

from tokencompose.schemas.config import ImageLimits
from tokencompose.tasks.grounding.masks import SegmentationProblem, checked_runs, decode

# Strong colours that rarely occur in photographs, so an overlay stands out; noun i gets PALETTE[i % len].
PALETTE = ("#00c8ff", "#ff2bd6", "#b6ff00", "#ffb000", "#7a5cff", "#00ffa2", "#ff5a36", "#1e6bff",
           "#f4ff3a", "#c000ff", "#00e0c0", "#ff0066")
THUMB_SIZE = 320  # longest side of a thumbnail, in pixels
MAX_MASK_PIXELS = 60_000_000  # a mask larger than this (height x width) is not drawn
# The build's image limits: an image past them could not be in a dataset the build made, and decoding
# it would cost the viewer its size in memory (a 12000 x 12000 PNG of a few hundred KB is 432 MB as RGB).
IMAGE_LIMITS = ImageLimits()
BIG_DECODE_PIXELS = 16_000_000  # decodes above this run one at a time, so parallel page views do not add up
_big_decode = threading.Lock()


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


class RenderError(Exception):
    pass


def rle_counts(rle: dict) -> list[int]:
    """The run lengths of a compressed COCO RLE, checked by the one mask module
    (:func:`tokencompose.tasks.grounding.masks.checked_runs`: non-negative, summing to height x width, no
    number cut short) before pycocotools sees it; a damaged mask raises :class:`RenderError`."""
    try:
        return checked_runs(rle)
    except SegmentationProblem as problem:
        raise RenderError(f"the mask is damaged: {problem}") from None


def rle_area(rle: dict) -> int:
    """Pixels inside the mask (every second run, starting with the second, is foreground)."""
    return sum(rle_counts(rle)[1::2])


def mask_png(rle: dict, hex_colour: str) -> bytes:
    """The mask as an RGBA PNG of the image's size: the colour, opaque, where the mask is; clear elsewhere.

    The page sets the overlay's opacity with CSS, so the PNG itself stays fully opaque inside the mask.
    """
    height, width = (int(v) for v in rle["size"])
    if height <= 0 or width <= 0 or height * width > MAX_MASK_PIXELS:
        raise RenderError(f"mask size {height}x{width} is out of range")
    try:
        mask = decode(rle)  # checked before pycocotools sees it
    except SegmentationProblem as problem:
        raise RenderError(f"the mask is damaged: {problem}") from None
    # A two-entry palette PNG at 1 bit per pixel (entry 0 transparent) is far smaller than RGBA.
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    image.putpalette([0, 0, 0, *rgb(hex_colour)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0, bits=1, compress_level=6)
    return buffer.getvalue()


def size_problem(width: int, height: int, what: str = "the image") -> str | None:
    """Why an image of this size is not decoded (no pixels, or past the build's limits), or None."""
    limits = IMAGE_LIMITS
    if width <= 0 or height <= 0:
        return f"{what} is {width}x{height} pixels; an image has at least one pixel a side"
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        return (f"{what} is {width}x{height} pixels, more than the viewer decodes ({limits.max_side} px a side, "
                f"{limits.max_pixels:,} pixels: the build's limits)")
    return None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image's header, nothing decoded; :class:`RenderError` when unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception as error:  # noqa: BLE001 - PIL's header parsers raise many types on hostile bytes
        raise RenderError(f"the image cannot be read: {str(error)[:200] or type(error).__name__}") from None


@contextlib.contextmanager
def bounded_decode(image: Image.Image) -> Iterator[None]:
    """Around decoding ``image``: refuses one past the limits (from its header, before a pixel is
    decoded) and lets one big image be decoded at a time."""
    problem = size_problem(*image.size)
    if problem:
        raise RenderError(problem)
    if image.width * image.height <= BIG_DECODE_PIXELS:
        yield
        return
    with _big_decode:
        yield


def thumbnail(data: bytes, size: int = THUMB_SIZE) -> bytes:
    """A JPEG no larger than size x size; the header's size is checked before decoding, and JPEG
    sources are decoded at reduced scale (draft mode)."""
    try:
        with Image.open(io.BytesIO(data)) as image, bounded_decode(image):
            image.draft("RGB", (size, size))
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=82)
            return buffer.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise RenderError(f"the image cannot be decoded: {error}") from None


def broken_thumbnail(size: int = 160) -> bytes:
    """A grey tile with a red cross, shown where an image cannot be decoded."""
    image = Image.new("RGB", (size, size), (90, 90, 90))
    draw = ImageDraw.Draw(image)
    draw.line((20, 20, size - 20, size - 20), fill=(220, 40, 40), width=8)
    draw.line((20, size - 20, size - 20, 20), fill=(220, 40, 40), width=8)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ByteLRU:
    """A thread-safe least-recently-used cache of bytes, bounded by the total size of its values."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.total = 0
        self._items: OrderedDict[object, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_make(self, key: object, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = make()  # outside the lock: two threads may make the same value once each, harmlessly
        if len(value) > self.max_bytes:
            return value
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self.total += len(value)
            while self.total > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.total -= len(dropped)
        return value

    def __len__(self) -> int:
        return len(self._items)


RLE_ALPHABET = bytes(range(48, 112))  # "0" .. "o": the characters of a compressed COCO RLE


def quick_area(rle: dict) -> int | None:
    """Pixels inside the mask for filtering and sorting (the catalogue's figure), or None when damaged.

    :func:`rle_area` parses in Python (~70 µs per mask); this asks pycocotools (~7 µs) once the two
    conditions under which its string reader stays inside the string hold: every character is in
    the RLE alphabet (so no NUL inside) and the last one ends a number. It decodes nothing: drawing
    a mask still goes through :func:`rle_counts`. A result larger than the image counts as damaged.
    """
    try:
        height, width = (int(v) for v in rle["size"])
        data = rle["counts"].encode("ascii")
    except (KeyError, TypeError, ValueError, AttributeError, UnicodeEncodeError):
        return None
    if height < 0 or width < 0 or not data:
        return 0 if not data and height * width == 0 else None
    if data.translate(None, RLE_ALPHABET) or (data[-1] - 48) & 0x20:
        return None
    area = int(coco_mask.area({"size": [height, width], "counts": data}))
    return area if 0 <= area <= height * width else None
