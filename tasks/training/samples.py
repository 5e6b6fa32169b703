"""Shard samples held against the data contract before they train.

The contract (``schemas/sample.py``, ``tasks/shards/shard_io.py``): a shard is a tar readable to its
end-of-archive blocks; a sample is the run of consecutive members sharing a key, with
``<key>.json`` (a :class:`SampleRecord` whose key is the member key, whose nouns' spans lie in the
caption and match their text, whose masks have the record's size) and ``<key>.<image_field>``
(an image of the record's size and format, a mode that converts to RGB, within the build's
decompression-bomb limits, :class:`ImageLimits`); a key names one sample in the whole shard set.

Every check raises :class:`SampleProblem` with a reason from :data:`SAMPLE_REASONS` (the image
reasons are the build's reject reasons). :func:`scan_shards` runs the checks that need no image
decoding over every shard before training (tar structure, JSON members, image headers, keys);
:class:`DataQuality` is the run's record of what was found unusable and decides when there is too
much of it.
"""
from __future__ import annotations

import io
import json
import math
import re
import tarfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from tokencompose.schemas.config import ImageLimits
from tokencompose.schemas.sample import JSON_FIELD, SampleRecord
from tokencompose.tasks.source.images import CONVERTIBLE_MODES, FORMAT_FIELDS, ImageProblem, check_dimensions

UNREADABLE_SHARD = "unreadable_shard"
DUPLICATE_KEY = "duplicate_key"
UNEXPECTED_ERROR = "unexpected_error"
# A sample the run leaves out on purpose (TrainConfig.exclude_flagged): counted by reason, never against the ceiling.
FLAGGED = "flagged"
# In the order the checks run; a sample gets the first that applies.
SAMPLE_REASONS = (DUPLICATE_KEY, "missing_json", "json_invalid", "json_not_object", "record_invalid", "key_mismatch",
                  "span_mismatch", "mask_size_mismatch", "missing_image", "not_an_image", "absurd_dimensions",
                  "size_mismatch", "format_mismatch", "unsupported_mode", "corrupt_image", UNEXPECTED_ERROR, FLAGGED)
FIRST_LOGGED = 3            # samples named in the log (and the summary) per reason
WORST_SHARDS = 3            # shards a ceiling message names
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")   # webdataset's key / extension split


class DataError(RuntimeError):
    """Shards that cannot feed training: nothing usable in them, or damaged beyond the allowed ceiling."""


class TooMuchBadData(DataError):
    """More unusable samples or unreadable shards than the configuration allows; the message names the worst shards."""


class SampleProblem(DataError):
    """One sample that breaks the data contract; ``reason`` is one of :data:`SAMPLE_REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ShardUnreadable(DataError):
    """A shard whose tar structure is damaged: not a tar, truncated, or garbage before its end blocks."""


@dataclass(frozen=True)
class Skip:
    """A sample (or, with ``index`` -1, a whole shard) the stream did not train on, and why."""

    shard: str
    index: int                 # the sample's position in its shard (runs of members sharing a key)
    key: str | None
    reason: str
    detail: str = ""

    @property
    def where(self) -> str:
        return f"{Path(self.shard).name}:{self.key}" if self.key is not None else Path(self.shard).name


# ---- reading -------------------------------------------------------------------------------------

def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member: the key ends at the basename's first dot; None without a dot."""
    match = _MEMBER_NAME.match(name)
    return (match.group(1), match.group(2)) if match else None


def _member_groups(tar: tarfile.TarFile) -> Iterator[tuple[int, str, dict[str, tarfile.TarInfo]]]:
    """(index, key, extension -> member) per sample: a sample ends where the key changes or an
    extension repeats (the repeat starts a second sample with the same key)."""
    index, key, members = 0, None, {}
    for info in tar:
        named = split_member_name(info.name) if info.isfile() else None
        if named is None:
            continue
        if key is not None and (named[0] != key or named[1] in members):
            yield index, key, members
            index, members = index + 1, {}
        key = named[0]
        members[named[1]] = info
    if key is not None:
        yield index, key, members


def _check_end(tar: tarfile.TarFile, handle: IO[bytes], path: str) -> None:
    """After the last header tarfile finds, only zero blocks may follow (tarfile stops silently at a
    damaged header past the first, so a garbled middle would otherwise read as a shorter tar)."""
    handle.seek(tar.offset)
    tail = 0
    while block := handle.read(1 << 16):
        if block.strip(b"\0"):
            raise ShardUnreadable(f"{Path(path).name}: damaged tar header at byte {tar.offset}")
        tail += len(block)
    if tail < 2 * tarfile.BLOCKSIZE:
        raise ShardUnreadable(f"{Path(path).name}: no end-of-archive blocks after byte {tar.offset} (truncated)")


def read_shard(path: str) -> Iterator[dict[str, Any]]:
    """The raw samples of one shard in member order: ``__key__``, ``__url__``, ``__index__`` and
    every member's bytes by extension. Raises :class:`ShardUnreadable` where the tar breaks."""
    try:
        with open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for index, key, members in _member_groups(tar):
                sample: dict[str, Any] = {"__key__": key, "__url__": path, "__index__": index}
                for extension, info in members.items():
                    sample[extension] = tar.extractfile(info).read()  # type: ignore[union-attr]
                yield sample
            _check_end(tar, handle, path)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ShardUnreadable(f"{Path(path).name}: {error or type(error).__name__}") from None


# ---- checks --------------------------------------------------------------------------------------

def _int_pair(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


def _contract_problem(data: dict) -> SampleProblem | None:
    """span_mismatch or mask_size_mismatch when a noun of the record breaks them, else None."""
    caption, nouns = data.get("caption"), data.get("nouns")
    if not isinstance(caption, str) or not isinstance(nouns, list):
        return None
    nouns = [n for n in nouns if isinstance(n, dict)]
    for noun in nouns:
        span, text = noun.get("span"), noun.get("text")
        if _int_pair(span) and isinstance(text, str) and not (
                0 <= span[0] < span[1] <= len(caption) and caption[span[0]:span[1]] == text):
            return SampleProblem("span_mismatch", f"noun {text!r:.40} at {span} is not that text of the "
                                                  f"{len(caption)}-character caption")
    size = (data.get("height"), data.get("width"))
    for noun in nouns:
        mask = noun.get("mask")
        if isinstance(mask, dict) and _int_pair(mask.get("size")) and _int_pair(size) and tuple(mask["size"]) != size:
            return SampleProblem("mask_size_mismatch", f"mask of {noun.get('text')!r:.40} is {mask['size']}, "
                                                       f"the record says [height, width] {list(size)}")
    return None


def parse_record(data: bytes, key: str) -> SampleRecord:
    """The sample's JSON member as a validated record of this key, or :class:`SampleProblem`."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, nested too deep
        raise SampleProblem("json_invalid", f"{type(error).__name__}: {str(error)[:160]}") from None
    if not isinstance(parsed, dict):
        raise SampleProblem("json_not_object", f"the JSON is a {type(parsed).__name__}, not an object")
    problem = _contract_problem(parsed)
    if problem:
        raise problem
    try:
        record = SampleRecord.model_validate_json(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        raise SampleProblem("record_invalid", f"{error.error_count()} error(s), first at {where}: "
                                              f"{first['msg'][:160]}") from None
    if record.key != key:
        raise SampleProblem("key_mismatch", f"the record says key {record.key!r:.40}")
    return record


def open_image(source: IO[bytes], extension: str, record: SampleRecord, limits: ImageLimits) -> Image.Image:
    """The image's header checked against the record and the build's limits; nothing is decoded yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except UnidentifiedImageError:
        raise SampleProblem("not_an_image", f"{extension} member is no image PIL knows") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SampleProblem("absurd_dimensions", str(error)[:160]) from None
    except Exception as error:  # noqa: BLE001 - PIL's header parsers raise many types on hostile bytes
        raise SampleProblem("corrupt_image", f"{type(error).__name__}: {str(error)[:160]}") from None
    try:
        check_dimensions(image.width, image.height, limits)
    except ImageProblem as problem:
        raise SampleProblem("absurd_dimensions", problem.detail) from None
    if image.size != (record.width, record.height):
        raise SampleProblem("size_mismatch", f"image is {image.width}x{image.height}, the record says "
                                             f"{record.width}x{record.height}")
    if FORMAT_FIELDS.get(image.format or "") != extension:
        raise SampleProblem("format_mismatch", f"{image.format} data in a {extension!r} member")
    if image.mode not in CONVERTIBLE_MODES:
        raise SampleProblem("unsupported_mode", f"mode {image.mode} does not convert to 8-bit RGB")
    return image


def decode_image(image: Image.Image) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except Exception as error:  # noqa: BLE001 - truncated or corrupt data; PIL's decoders raise many types
        raise SampleProblem("corrupt_image", f"{type(error).__name__}: {str(error)[:160]}") from None
    return image


def _record_and_image_member(members: dict, key: str, image_field: str | None) -> tuple[SampleRecord, str]:
    if JSON_FIELD not in members:
        raise SampleProblem("missing_json", f"no {key}.{JSON_FIELD} member")
    record = parse_record(members[JSON_FIELD], key)
    extension = image_field or record.image_field
    if extension not in members:
        raise SampleProblem("missing_image", f"no {key}.{extension} member")
    return record, extension


def check_sample(raw: dict[str, Any], image_field: str | None, limits: ImageLimits) -> tuple[SampleRecord, Image.Image]:
    """A raw sample (:func:`read_shard`) as a valid record and its decoded image, or :class:`SampleProblem`."""
    key = raw["__key__"]
    record, extension = _record_and_image_member(raw, key, image_field)
    return record, decode_image(open_image(io.BytesIO(raw[extension]), extension, record, limits))


# ---- the pre-scan ----------------------------------------------------------------------------------

@dataclass
class ShardScan:
    shard: str
    samples: int = 0
    problems: list[Skip] = field(default_factory=list)
    keys: list[tuple[int, str]] = field(default_factory=list)
    unreadable: str | None = None


@dataclass
class DataScan:
    """What :func:`scan_shards` found: readable shards, their sample count, and the unusable samples."""

    shards: list[ShardScan]
    seconds: float

    @property
    def readable(self) -> list[str]:
        return [s.shard for s in self.shards if s.unreadable is None]

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards if s.unreadable is None)

    @property
    def duplicates(self) -> frozenset[tuple[str, int]]:
        return frozenset((p.shard, p.index) for s in self.shards for p in s.problems if p.reason == DUPLICATE_KEY)


def _scan_sample(tar: tarfile.TarFile, key: str, members: dict[str, tarfile.TarInfo], image_field: str | None,
                 limits: ImageLimits) -> None:
    json_member = members.get(JSON_FIELD)
    contents = {JSON_FIELD: tar.extractfile(json_member).read()} if json_member else {}  # type: ignore[union-attr]
    record, extension = _record_and_image_member({**contents, **{e: None for e in members if e != JSON_FIELD}},
                                                 key, image_field)
    image = open_image(tar.extractfile(members[extension]), extension, record, limits)  # type: ignore[arg-type]
    image.close()


def scan_shard(path: str, image_field: str | None, limits: ImageLimits) -> ShardScan:
    """Every check short of decoding pixels, for one shard (duplicates across shards: :func:`scan_shards`)."""
    scan = ShardScan(path)
    try:
        with open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for index, key, members in _member_groups(tar):
                scan.samples += 1
                scan.keys.append((index, key))
                try:
                    _scan_sample(tar, key, members, image_field, limits)
                except SampleProblem as problem:
                    scan.problems.append(Skip(path, index, key, problem.reason, problem.detail))
            _check_end(tar, handle, path)
    except ShardUnreadable as error:
        scan.unreadable = str(error)
    except (tarfile.TarError, OSError, EOFError) as error:
        scan.unreadable = f"{Path(path).name}: {error or type(error).__name__}"
    return scan


def scan_shards(paths: Sequence[str], image_field: str | None, limits: ImageLimits) -> DataScan:
    """:func:`scan_shard` for every shard, then keys: the first occurrence of a key in the shards'
    order (sorted paths, member order) is the sample, every later one is a ``duplicate_key``."""
    started = time.perf_counter()
    shards = [scan_shard(path, image_field, limits) for path in paths]
    first: dict[str, str] = {}
    for scan in shards:
        if scan.unreadable is not None:
            continue
        found = {p.index: p for p in scan.problems}
        for index, key in scan.keys:
            if key in first:
                found[index] = Skip(scan.shard, index, key, DUPLICATE_KEY, f"key first seen in {first[key]}")
            else:
                first[key] = Path(scan.shard).name
        scan.problems = [found[i] for i in sorted(found)]
        scan.keys = []
    return DataScan(shards, time.perf_counter() - started)


# ---- the run's record of unusable data -----------------------------------------------------------

@dataclass
class DataQuality:
    """Unusable samples (each counted once, however often the stream meets it), unreadable shards,
    the first few of each reason, and the ceiling the configuration sets."""

    samples: int                                    # samples in the readable shards
    bad: dict[str, Skip] = field(default_factory=dict)          # "shard#index" -> why
    unreadable: dict[str, str] = field(default_factory=dict)    # shard -> what broke
    first: dict[str, list[str]] = field(default_factory=dict)   # reason -> "shard:key" of its first few

    def add(self, skip: Skip) -> bool:
        """Record one skip; True when it is news (a sample or shard not seen unusable before)."""
        if skip.reason == UNREADABLE_SHARD:
            if skip.shard in self.unreadable:
                return False
            self.unreadable[skip.shard] = skip.detail
        else:
            ident = f"{skip.shard}#{skip.index}"
            if ident in self.bad:
                return False
            self.bad[ident] = skip
        named = self.first.setdefault(skip.reason, [])
        if len(named) < FIRST_LOGGED:
            named.append(skip.where)
        return True

    @classmethod
    def from_scan(cls, scan: DataScan) -> "DataQuality":
        quality = cls(scan.samples)
        for shard in scan.shards:
            if shard.unreadable is not None:
                quality.add(Skip(shard.shard, -1, None, UNREADABLE_SHARD, shard.unreadable))
            for problem in shard.problems:
                quality.add(problem)
        return quality

    def merge(self, other: "DataQuality") -> None:
        for shard, detail in other.unreadable.items():
            self.add(Skip(shard, -1, None, UNREADABLE_SHARD, detail))
        for skip in other.bad.values():
            self.add(skip)

    def counts(self) -> dict[str, int]:
        """Unusable samples by reason, in check order, reasons with none left out."""
        found = Counter(skip.reason for skip in self.bad.values())
        return {reason: found[reason] for reason in SAMPLE_REASONS if found[reason]}

    def worst_shards(self, limit: int = WORST_SHARDS) -> str:
        by_shard: dict[str, Counter] = {}
        for skip in self.bad.values():
            by_shard.setdefault(Path(skip.shard).name, Counter())[skip.reason] += 1
        ranked = sorted(by_shard.items(), key=lambda item: (-sum(item[1].values()), item[0]))[:limit]
        return ", ".join(f"{name} ({sum(c.values())} unusable: " + ", ".join(f"{r} {n}" for r, n in c.most_common())
                         + ")" for name, c in ranked)

    def ceiling_problem(self, max_fraction: float, max_unreadable: int) -> str | None:
        """One line when the data passes the ceiling, else None."""
        parts = []
        if len(self.unreadable) > max_unreadable:
            names = "; ".join(self.unreadable[s] for s in sorted(self.unreadable)[:WORST_SHARDS])
            parts.append(f"{len(self.unreadable)} shard(s) unreadable as tar, max_unreadable_shards allows "
                         f"{max_unreadable}: {names}")
        allowed = math.floor(max_fraction * self.samples + 1e-9)   # 0.3 * 10 is 2.9999999999999996
        unusable = self.unusable()
        if unusable > allowed:
            parts.append(f"{unusable} of {self.samples} samples unusable "
                         f"({100 * unusable / max(self.samples, 1):.2f}%), max_bad_sample_fraction "
                         f"{max_fraction:g} allows {allowed}; worst shards: {self.worst_shards()}")
        return "too much bad training data: " + "; ".join(parts) if parts else None

    def unusable(self) -> int:
        """Samples skipped because they break the contract (flagged ones are left out on purpose)."""
        return sum(1 for skip in self.bad.values() if skip.reason != FLAGGED)

    def summary(self) -> dict[str, Any]:
        return {"samples": self.samples, "unusable": self.unusable(), "by_reason": self.counts(),
                "unreadable_shards": {Path(s).name: d for s, d in sorted(self.unreadable.items())},
                "first": {r: list(v) for r, v in self.first.items()}}

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "bad": [asdict(s) for s in self.bad.values()],
                "unreadable": dict(self.unreadable), "first": self.first}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataQuality":
        quality = cls(data["samples"], unreadable=dict(data["unreadable"]), first=dict(data["first"]))
        for item in data["bad"]:
            skip = Skip(**item)
            quality.bad[f"{skip.shard}#{skip.index}"] = skip
        return quality
