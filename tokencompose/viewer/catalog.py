"""The viewer's catalogue: what is in a shard set, found through the per-shard indexes.

Nothing here joins user input into a path. The shard names come from the manifest (or a listing of
the shard folder) and must look like a plain file name; every sample is then found by its key in an
in-memory dictionary, and its bytes are read by seeking to the offset the index gives.

Memory: the catalogue keeps one small :class:`Entry` per sample (key, shard number, two member
locations, the caption and the noun texts, a bit set of which nouns have a mask, 8 bytes of facts per
noun (category, mask source and reason as codes into the catalogue's label lists, the mask's area),
an error text or None). Images are never read to build it; only the JSON members are, one at a time. See
docs/viewer.md for the measured bound.
"""
from __future__ import annotations

import json
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from tokencompose.viewer.render import quick_area, size_problem

from tokencompose.schemas.reports import (INDEX_DIR, MANIFEST_FILE, REJECTS_FILE, SHARDS_DIR, STATS_FILE, Manifest,
                                          ShardIndex)
from tokencompose.schemas.sample import JSON_FIELD, SampleRecord
from tokencompose.tasks.shards.rejects import read_rejects
from tokencompose.tasks.shards.shard_io import scan_members

SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}\.tar$")
SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
MAX_JSON_BYTES = 16 * 1024 * 1024  # a sample JSON larger than this is reported, not read
MAX_IMAGE_BYTES = 256 * 1024 * 1024
NOUN_SEPARATOR = "\x1f"
NOUN_FACTS = struct.Struct("<4H")  # per noun: category code, source code, reason code, area in 1/10,000
NO_AREA = 0xFFFF  # no mask, or a damaged one
LABEL_KINDS = ("category", "source", "reason")
MAX_LABELS = 0xFFFE  # codes past this share the last one ("other"): a hostile dataset cannot grow the lists
SORTS = {"": "shard order", "key": "key", "nouns": "most nouns", "-nouns": "fewest nouns",
         "area": "largest mask", "-area": "smallest mask", "unmasked": "most nouns without a mask"}
IMAGE_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
               "gif": "image/gif", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff"}


class SampleError(Exception):
    """A sample cannot be read or does not match the schema; the text says why."""


class Entry:
    """One sample in the catalogue; kept small (slots, no per-entry dicts)."""

    __slots__ = ("key", "shard", "position", "json_offset", "json_size", "image_ext", "image_offset", "image_size",
                 "caption", "nouns", "masked", "facts", "error")

    def __init__(self, key: str, shard: int):
        self.key = key
        self.shard = shard
        self.position = -1  # place in Catalog.entries
        self.json_offset = self.json_size = self.image_offset = self.image_size = -1
        self.image_ext = ""
        self.caption = ""
        self.nouns = ""  # noun texts joined by NOUN_SEPARATOR, lower case
        self.masked = 0  # bit i set: noun i has a mask
        self.facts = b""  # NOUN_FACTS per noun
        self.error: str | None = None

    @property
    def noun_texts(self) -> list[str]:
        return self.nouns.split(NOUN_SEPARATOR) if self.nouns else []

    @property
    def noun_count(self) -> int:
        return self.nouns.count(NOUN_SEPARATOR) + 1 if self.nouns else 0

    @property
    def has_unmasked(self) -> bool:
        return self.masked != (1 << self.noun_count) - 1

    def noun_has_mask(self, index: int) -> bool:
        return bool(self.masked >> index & 1)

    def noun_facts(self) -> list[tuple[int, int, int, int]]:
        """(category code, source code, reason code, area in 1/10,000 of the image or NO_AREA) per noun."""
        return list(NOUN_FACTS.iter_unpack(self.facts))

    def areas(self) -> list[int]:
        """Mask areas in 1/10,000 of the image, of the nouns with an intact mask."""
        return [area for *_, area in NOUN_FACTS.iter_unpack(self.facts) if area != NO_AREA]


@dataclass
class ShardInfo:
    name: str
    path: Path
    samples: int = 0
    errors: list[str] = field(default_factory=list)  # shard-level problems (index, unreadable tar)
    from_index: bool = True  # False: the index was missing or broken and the tar headers were scanned


@dataclass(frozen=True)
class Query:
    text: str = ""
    unmasked: bool = False
    errors: bool = False
    min_nouns: int | None = None
    max_nouns: int | None = None
    shard: int | None = None
    # noun-level filters: a sample matches when one of its nouns meets all of them
    category: int | None = None  # codes into Catalog.labels[...]
    source: int | None = None
    reason: int | None = None
    min_area: float | None = None  # percent of the image covered by the noun's mask
    max_area: float | None = None
    sort: str = ""  # a key of SORTS

    @property
    def noun_level(self) -> bool:
        return any(v is not None for v in (self.category, self.source, self.reason, self.min_area, self.max_area))


class Catalog:
    """The samples of one shard set. Build it with :meth:`scan` (or :meth:`start_background_scan`)."""

    def __init__(self, root: Path):
        self.root, self.shards_dir, self.index_dir = resolve_layout(Path(root))
        self.manifest: Manifest | None = None
        self.problems: list[str] = []  # dataset-level problems (manifest, duplicate keys)
        self.duplicates: dict[str, list[str]] = {}  # key -> the shards where it appears again (not shown)
        self.shards: list[ShardInfo] = []
        self.entries: list[Entry] = []
        self.by_key: dict[str, Entry] = {}
        self.shards_done = 0
        self.error_count = 0  # entries with an error
        # the distinct categories, mask sources and reasons; code 0 is "none"
        self.labels: dict[str, list[str]] = {kind: [""] for kind in LABEL_KINDS}
        self._codes: dict[str, dict[str, int]] = {kind: {"": 0} for kind in LABEL_KINDS}
        self.finished = threading.Event()
        self._find_shards()

    # ---- which shards ------------------------------------------------------------------------------

    def _find_shards(self) -> None:
        manifest_path = self.root / MANIFEST_FILE
        names: list[str] = []
        if manifest_path.is_file():
            try:
                self.manifest = Manifest.model_validate_json(manifest_path.read_bytes())
                names = [s.name for s in self.manifest.shards]
            except (OSError, ValidationError, ValueError) as error:
                self.problems.append(f"manifest.json is unreadable ({_short(error)}); listing the shard folder")
        if self.manifest is None and self.shards_dir.is_dir():
            names = sorted(p.name for p in self.shards_dir.iterdir() if p.suffix == ".tar")
        seen = set()
        for name in names:
            if not SHARD_NAME.match(name) or name in seen:
                self.problems.append(f"skipped shard name {name!r}")
                continue
            seen.add(name)
            info = ShardInfo(name=name, path=self.shards_dir / name)
            if not info.path.is_file():
                info.errors.append("shard file is missing")
            self.shards.append(info)

    def code(self, kind: str, label: str | None) -> int:
        """The code of a label (adding it), 0 for None; labels past MAX_LABELS share the last code."""
        if not label:
            return 0
        codes = self._codes[kind]
        code = codes.get(label)
        if code is None:
            if len(codes) > MAX_LABELS:
                return MAX_LABELS
            code = codes[label] = len(self.labels[kind])
            self.labels[kind].append(label[:200])
        return code

    def label_code(self, kind: str, label: str) -> int | None:
        """The code of a label seen in the catalogue, None if there is no such label (no adding)."""
        return self._codes[kind].get(label) if kind in self._codes and isinstance(label, str) else None

    def shard_number(self, name: str) -> int | None:
        for number, info in enumerate(self.shards):
            if info.name == name:
                return number
        return None

    # ---- building the catalogue --------------------------------------------------------------------

    def scan(self) -> "Catalog":
        """Read every shard's index and the JSON members it points at (never the images)."""
        try:
            for number in range(len(self.shards)):
                self._scan_shard(number)
                self.shards_done = number + 1
        finally:
            self.finished.set()
        return self

    def start_background_scan(self) -> threading.Thread:
        thread = threading.Thread(target=self.scan, name="viewer-catalog", daemon=True)
        thread.start()
        return thread

    def _scan_shard(self, number: int) -> None:
        info = self.shards[number]
        if not info.path.is_file():
            return
        locations = self._read_index(info)
        if locations is None:
            locations = self._scan_tar_headers(info)
        try:
            size = info.path.stat().st_size
            handle = open(info.path, "rb")
        except OSError as error:
            info.errors.append(f"cannot open the shard: {_short(error)}")
            return
        with handle:
            ordered = sorted(locations.items(), key=lambda kv: kv[1].get(JSON_FIELD, (0, 0))[0])
            for key, members in ordered:
                if not SAFE_KEY.match(key):
                    info.errors.append(f"skipped a sample whose key has unsafe characters: {key[:80]!r}")
                    continue
                if key in self.by_key:
                    self.problems.append(f"key {key} appears again in {info.name}; the first one is shown")
                    self.duplicates.setdefault(key, []).append(info.name)
                    continue
                entry = self._entry(number, key, members, handle, size)
                entry.position = len(self.entries)
                self.entries.append(entry)
                self.by_key[key] = entry
                info.samples += 1
                self.error_count += entry.error is not None

    def _read_index(self, info: ShardInfo) -> dict[str, dict[str, tuple[int, int]]] | None:
        path = self.index_dir / (info.name[:-len(".tar")] + ".json")
        try:
            index = ShardIndex.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            info.errors.append("no index file; scanned the tar headers instead")
        except (OSError, ValidationError, ValueError) as error:
            info.errors.append(f"index is unreadable ({_short(error)}); scanned the tar headers instead")
        else:
            return {key: {ext: (loc.offset, loc.size) for ext, loc in members.items()}
                    for key, members in index.samples.items()}
        info.from_index = False
        return None

    @staticmethod
    def _scan_tar_headers(info: ShardInfo) -> dict[str, dict[str, tuple[int, int]]]:
        """Fallback without an index: walk the tar headers (the build's shard_io.scan_members)."""
        locations, problem = scan_members(info.path)
        if problem is not None:
            info.errors.append(f"tar is damaged ({problem[:300]}); {len(locations)} samples found before it")
        return locations

    def _entry(self, number: int, key: str, members: dict[str, tuple[int, int]], handle, size: int) -> Entry:
        entry = Entry(key, number)
        images = [ext for ext in members if ext != JSON_FIELD]
        preferred = self.manifest.image_field if self.manifest else None
        if images:
            entry.image_ext = preferred if preferred in members else sorted(images)[0]
            entry.image_offset, entry.image_size = members[entry.image_ext]
        if JSON_FIELD not in members:
            entry.error = "the sample has no JSON member"
            return entry
        entry.json_offset, entry.json_size = members[JSON_FIELD]
        try:
            record = parse_record(read_member(handle, size, entry.json_offset, entry.json_size, MAX_JSON_BYTES), key)
        except SampleError as error:
            entry.error = str(error)
            return entry
        entry.error = record_problem(record)
        if entry.error:
            return entry
        entry.caption = record.caption
        entry.nouns = NOUN_SEPARATOR.join(n.text.lower().replace(NOUN_SEPARATOR, " ") for n in record.nouns)
        entry.masked = sum(1 << i for i, n in enumerate(record.nouns) if n.mask is not None)
        pixels = record.width * record.height
        facts = []
        for noun in record.nouns:
            area = quick_area(noun.mask.model_dump()) if noun.mask is not None else None
            share = NO_AREA if area is None or pixels <= 0 else min(10_000, round(10_000 * area / pixels))
            facts.append(NOUN_FACTS.pack(self.code("category", noun.category), self.code("source", noun.source),
                                         self.code("reason", noun.reason), share))
        entry.facts = b"".join(facts)
        if not images:
            entry.error = "the sample has no image member"
        elif entry.image_offset < 0 or entry.image_offset + entry.image_size > size:
            entry.error = "the image member lies outside the shard file (truncated shard?)"
        return entry

    # ---- reading one sample -------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """The entry for a key, or None; the only way from a URL to a sample."""
        return self.by_key.get(key) if isinstance(key, str) else None

    def record(self, entry: Entry) -> SampleRecord:
        """The full record (read again from the shard: the catalogue keeps only the light fields), checked
        as the scan checked it (the file may have changed since)."""
        if entry.error:
            raise SampleError(entry.error)
        data = self._read(entry, entry.json_offset, entry.json_size, MAX_JSON_BYTES)
        record = parse_record(data, entry.key)
        problem = record_problem(record)
        if problem:
            raise SampleError(problem)
        return record

    def image_bytes(self, entry: Entry) -> tuple[bytes, str]:
        """The original image bytes and their media type."""
        if entry.image_offset < 0:
            raise SampleError("the sample has no image member")
        data = self._read(entry, entry.image_offset, entry.image_size, MAX_IMAGE_BYTES)
        return data, IMAGE_TYPES.get(entry.image_ext.lower(), "application/octet-stream")

    def image_readable(self, entry: Entry) -> bool:
        """Whether the image member lies inside the shard file (for showing it beside a broken JSON)."""
        try:
            size = self.shards[entry.shard].path.stat().st_size
        except OSError:
            return False
        return 0 <= entry.image_offset and entry.image_offset + entry.image_size <= size

    def _read(self, entry: Entry, offset: int, size: int, limit: int) -> bytes:
        path = self.shards[entry.shard].path
        try:
            with open(path, "rb") as handle:
                return read_member(handle, path.stat().st_size, offset, size, limit)
        except OSError as error:
            raise SampleError(f"cannot read the shard: {_short(error)}") from None

    # ---- gallery -------------------------------------------------------------------------------------

    def search(self, query: Query) -> list[Entry]:
        """The entries that match, in catalogue order (one pass over the catalogue; see SearchCache)."""
        needle = query.text.strip().lower()
        if not needle and query == Query(text=query.text, sort=query.sort):
            return sort_entries(list(self.entries), query.sort)
        noun_level = query.noun_level
        low = None if query.min_area is None else query.min_area * 100  # percent -> 1/10,000
        high = None if query.max_area is None else query.max_area * 100
        found = []
        for entry in list(self.entries):
            if query.shard is not None and entry.shard != query.shard:
                continue
            if query.errors and not entry.error:
                continue
            if query.unmasked and (entry.error or not entry.has_unmasked):
                continue
            count = entry.noun_count
            if query.min_nouns is not None and count < query.min_nouns:
                continue
            if query.max_nouns is not None and count > query.max_nouns:
                continue
            if needle and needle not in entry.key and needle not in entry.caption.lower() and needle not in entry.nouns:
                continue
            if noun_level and not _some_noun_matches(entry, query, low, high):
                continue
            found.append(entry)
        return sort_entries(found, query.sort)


    def neighbours(self, entry: Entry) -> tuple[Entry | None, Entry | None]:
        entries, position = self.entries, entry.position
        return (entries[position - 1] if position > 0 else None,
                entries[position + 1] if position + 1 < len(entries) else None)

    # ---- dataset files ---------------------------------------------------------------------------------

    def stats(self) -> tuple[dict | None, str | None]:
        """stats.json as a dict, or (None, why not)."""
        path = self.root / STATS_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None, "stats.json is missing"
        except (OSError, ValueError) as error:
            return None, f"stats.json is unreadable ({_short(error)})"
        if not isinstance(data, dict):
            return None, "stats.json is not an object"
        return data, None

    def rejects(self, keep: int = 200) -> dict:
        """Counts of rejects.jsonl by reason and stage, read line by line; the first ``keep`` kept."""
        read = read_rejects(self.root / REJECTS_FILE, keep)
        return {"total": read.total, "by_reason": read.by_reason, "by_stage": read.by_stage, "first": read.rows,
                "bad_lines": read.bad_lines, "missing": read.missing}


def _some_noun_matches(entry: Entry, query: Query, low: float | None, high: float | None) -> bool:
    for category, source, reason, area in NOUN_FACTS.iter_unpack(entry.facts):
        if query.category is not None and category != query.category:
            continue
        if query.source is not None and source != query.source:
            continue
        if query.reason is not None and reason != query.reason:
            continue
        if (low is not None or high is not None) and area == NO_AREA:
            continue
        if low is not None and area < low:
            continue
        if high is not None and area > high:
            continue
        return True
    return False


def sort_entries(entries: list[Entry], sort: str) -> list[Entry]:
    """``entries`` in the order SORTS names; ties (and samples without the figure) keep shard order."""
    if sort == "key":
        entries.sort(key=lambda e: e.key)
    elif sort in ("nouns", "-nouns"):
        entries.sort(key=lambda e: e.noun_count, reverse=sort == "nouns")
    elif sort == "unmasked":
        entries.sort(key=lambda e: e.noun_count - bin(e.masked).count("1"), reverse=True)
    elif sort == "area":
        entries.sort(key=lambda e: max(e.areas(), default=-1), reverse=True)
    elif sort == "-area":
        entries.sort(key=lambda e: min(e.areas(), default=10**6))
    return entries


class SearchCache:
    """The last few searches' results, so that paging through one search does not repeat it.

    Only used once the catalogue is complete (results of a growing catalogue would go stale). Each
    result is a list of references: 8 bytes per matching sample.
    """

    def __init__(self, catalog: Catalog, size: int = 8):
        self.catalog = catalog
        self.size = size
        self._results: dict[Query, list[Entry]] = {}
        self._lock = threading.Lock()

    def search(self, query: Query) -> list[Entry]:
        if not self.catalog.finished.is_set():
            return self.catalog.search(query)
        query = Query(**{**query.__dict__, "text": query.text.strip().lower()})
        with self._lock:
            found = self._results.pop(query, None)
            if found is not None:
                self._results[query] = found  # most recent last
                return found
        found = self.catalog.search(query)
        with self._lock:
            self._results[query] = found
            while len(self._results) > self.size:
                self._results.pop(next(iter(self._results)))
        return found


def resolve_layout(root: Path) -> tuple[Path, Path, Path]:
    """(dataset root, shard folder, index folder) for DIR = the build output or its shards/ folder."""
    root = root.resolve()
    if (root / SHARDS_DIR).is_dir():
        return root, root / SHARDS_DIR, root / INDEX_DIR
    if root.name == SHARDS_DIR and (root.parent / INDEX_DIR).is_dir():
        return root.parent, root, root.parent / INDEX_DIR
    return root, root, root / INDEX_DIR


def read_member(handle, file_size: int, offset: int, size: int, limit: int) -> bytes:
    if offset < 0 or size < 0:
        raise SampleError("the index gives a negative offset or size")
    if size > limit:
        raise SampleError(f"the member is {size} bytes, more than the viewer reads ({limit})")
    if offset + size > file_size:
        raise SampleError("the member lies outside the shard file (truncated shard?)")
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise SampleError("the shard ended early")
    return data


def parse_record(data: bytes, key: str) -> SampleRecord:
    try:
        record = SampleRecord.model_validate_json(data)
    except ValidationError as error:
        if any(e["type"] == "json_invalid" for e in error.errors()):
            raise SampleError(f"the JSON is unreadable: {error.errors()[0]['msg']}") from None
        raise SampleError(f"the JSON does not match the sample schema: {_short(error)}") from None
    except ValueError as error:
        raise SampleError(f"the JSON is unreadable: {_short(error)}") from None
    if record.key != key:
        raise SampleError(f"the JSON says key {record.key!r}, the index says {key!r}")
    return record


def record_problem(record: SampleRecord) -> str | None:
    """What makes a schema-valid record unusable for drawing (a size no image has, a noun span outside
    the caption), or None."""
    size = size_problem(record.width, record.height, "the record's size")
    if size:
        return size
    for noun in record.nouns:
        start, end = noun.span
        if not 0 <= start <= end <= len(record.caption):
            return (f"noun {noun.text[:80]!r} has the span [{start}, {end}), outside the caption "
                    f"({len(record.caption)} characters)")
    return None


def _short(error: Exception, limit: int = 300) -> str:
    if isinstance(error, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in error.errors()[:3]]
        more = error.error_count() - 3
        text = "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    else:
        text = str(error) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "…"
