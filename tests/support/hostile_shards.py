"""Shard samples that break the data contract, one maker per reason, for the training data tests.

Each maker turns a valid (record, image bytes) into the tar members of a sample that
:mod:`tokencompose.tasks.training.samples` must skip for exactly that reason. ``corrupt_image``
(JPEG data cut short: the header is intact) is the one the pre-scan cannot see.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.grounding.masks import encode
from tokencompose.tasks.training.toy import box_mask, make_record

Members = dict[str, bytes]
Sample = tuple[str, Members]


def small_photo_samples(count: int, first_id: int = 1, side: int = 48) -> list[tuple[SampleRecord, bytes]]:
    """``count`` valid samples of small seeded images, two masked nouns each."""
    rng = np.random.default_rng(first_id)
    samples = []
    for image_id in range(first_id, first_id + count):
        image = rng.integers(0, 256, (side, side + 8, 3), dtype=np.uint8)
        samples.append(make_record(image_id, image, "a cat to the left of a cup", [
            ("cat", box_mask(side, side + 8, 0.1, 0.1, 0.5, 0.9)), ("cup", box_mask(side, side + 8, 0.6, 0.5, 0.9, 0.9))]))
    return samples


def members(record: SampleRecord, image: bytes) -> Sample:
    return record.key, {record.image_field: image, "json": record.to_json_bytes()}


def _record_json(record: SampleRecord, **changes) -> bytes:
    data = record.model_dump(mode="json")
    data.update(changes)
    return json.dumps(data).encode()


def _with_noun(record: SampleRecord, **changes) -> bytes:
    data = record.model_dump(mode="json")
    data["nouns"][0].update(changes)
    return json.dumps(data).encode()


def _png(image: bytes, mode: str | None = None) -> bytes:
    decoded: Image.Image = Image.open(io.BytesIO(image))
    if mode:
        decoded = decoded.convert("L").convert(mode) if mode.startswith("I") else decoded.convert(mode)
    buffer = io.BytesIO()
    decoded.save(buffer, format="PNG")
    return buffer.getvalue()


def _huge_header(image: bytes) -> bytes:
    """The JPEG's SOF0 frame header says 65535 x 65535 pixels; the data stays the small image's."""
    data = bytearray(image)
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = b"\xff\xff\xff\xff"
    return bytes(data)


def _other_size(record: SampleRecord) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (record.width + 3, record.height), (9, 9, 9)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _sixteen_bit(record: SampleRecord, image: bytes) -> Sample:
    data = json.loads(_record_json(record, image_field="png"))
    return record.key, {"png": _png(image, "I;16"), "json": json.dumps(data).encode()}


MAKERS: dict[str, Callable[[SampleRecord, bytes], Sample]] = {
    "missing_json": lambda r, i: (r.key, {"jpg": i}),
    "json_invalid": lambda r, i: (r.key, {"jpg": i, "json": b"\xff\xfe{not json"}),
    "json_not_object": lambda r, i: (r.key, {"jpg": i, "json": b"[1, 2]"}),
    "record_invalid": lambda r, i: (r.key, {"jpg": i, "json": _record_json(r, width="wide")}),
    "key_mismatch": lambda r, i: (r.key, {"jpg": i, "json": _record_json(r, key="000000999999")}),
    "span_mismatch": lambda r, i: (r.key, {"jpg": i, "json": _with_noun(r, span=[200, 203])}),
    "mask_size_mismatch": lambda r, i: (r.key, {"jpg": i, "json": _with_noun(
        r, mask=encode(np.ones((r.height + 1, r.width), dtype=bool)))}),
    "missing_image": lambda r, i: (r.key, {"json": r.to_json_bytes()}),
    "not_an_image": lambda r, i: (r.key, {"jpg": b"this is no image", "json": r.to_json_bytes()}),
    "absurd_dimensions": lambda r, i: (r.key, {"jpg": _huge_header(i), "json": r.to_json_bytes()}),
    "size_mismatch": lambda r, i: (r.key, {"jpg": _other_size(r), "json": r.to_json_bytes()}),
    "format_mismatch": lambda r, i: (r.key, {"jpg": _png(i), "json": r.to_json_bytes()}),
    "unsupported_mode": _sixteen_bit,
    "corrupt_image": lambda r, i: (r.key, {"jpg": i[:len(i) // 2], "json": r.to_json_bytes()}),
}
PRESCAN_BLIND = frozenset({"corrupt_image"})   # found only when the pixels are decoded


def write_samples(path: Path, samples: list[Sample]) -> Path:
    """A ustar shard of these members in this order; unlike the build's writer it lets a key repeat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, sample in samples:
            for extension, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


def truncate(path: Path, keep: float = 0.6) -> Path:
    """Cut the file inside a member's data: what a killed copy leaves."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path
