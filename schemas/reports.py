"""What the build writes beside the shards: per-shard index, stats, rejects, manifest."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tokencompose.schemas.base import StrictRecord
from tokencompose.schemas.reasons import NounReason, RejectReason

SHARDS_DIR = "shards"
INDEX_DIR = "index"
MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"
SIZES_FILE = "sizes.json"
REJECTS_FILE = "rejects.jsonl"
BUILD_CONFIG_FILE = "config.json"  # the build configuration, beside the manifest
CARD_FILE = "README.md"
INCOMPLETE_FILE = "incomplete.json"
LOCK_FILE = ".tokencompose.lock"  # one writer per output folder (tasks/shards/dataset.py: output_lock)

# The byte layout of the shards. 1: webdataset's TarWriter (a PAX header before every member).
# 2: plain ustar headers with fixed metadata (tasks/shards/shard_io.py), sha256 and offsets taken while writing.
FORMAT_VERSION = 2


class MemberLocation(StrictRecord):
    """Where one tar member's bytes lie: ``offset`` is the first data byte in the tar file."""

    offset: int
    size: int


class ShardIndex(StrictRecord):
    """Random access into one shard: sample key -> member extension -> location."""

    shard: str
    samples: dict[str, dict[str, MemberLocation]]
    rejects: list[Reject] = Field(default_factory=list, description="images of this shard's batch that were "
                                    "dropped (format 2): with the samples, every image id the shard holds")
    stats: ShardStats | None = Field(default=None, description="the shard's counts (format 2)")


class Reject(StrictRecord):
    image_id: int | None
    file_name: str | None
    stage: str
    reason: RejectReason
    detail: str = ""


class ShardStats(StrictRecord):
    """Counts for one shard; :func:`merge_stats` adds them up for the dataset."""

    images_in: int = 0
    samples: int = 0
    nouns: int = 0
    nouns_with_mask: int = 0
    nouns_per_caption: dict[str, int] = Field(default_factory=dict, description="histogram: count -> samples")
    nouns_without_mask_by_reason: dict[str, int] = Field(default_factory=dict)
    noun_texts_with_mask: dict[str, int] = Field(default_factory=dict)
    noun_texts_without_mask: dict[str, int] = Field(default_factory=dict)

    def share_with_mask(self, stop_listed_too: bool = True) -> float | None:
        """Nouns with a mask over all nouns, or over those not on the stop-list (the ones grounding
        is asked about); None without nouns."""
        nouns = self.nouns if stop_listed_too else self.nouns - self.nouns_without_mask_by_reason.get(NounReason.STOP_LIST, 0)
        return self.nouns_with_mask / nouns if nouns else None


class ShardSummary(StrictRecord):
    """What building one shard returns; it is the cached task result."""

    shard: str
    sha256: str
    bytes: int
    samples: int
    stats: ShardStats
    rejects: list[Reject]
    provenance: dict[str, Any] = Field(description="the Provenance in every sample of the shard")


class ManifestShard(StrictRecord):
    name: str
    sha256: str
    bytes: int
    samples: int
    index: str


class DatasetVersion(StrictRecord):
    """One build that added shards: version 1 is the first build, each later build that found new
    images in the source adds one. ``shards`` is every shard of the version (name -> sha256)."""

    version: int
    shards: dict[str, str]
    added: list[str]
    samples: int
    source_hash: str
    config_hash: str
    provenance: dict[str, Any]

    def shard_paths(self, out_dir: Path) -> list[str]:
        """The version's shard files in the dataset folder ``out_dir``, in shard order."""
        return [str(Path(out_dir) / SHARDS_DIR / name) for name in sorted(self.shards)]


class Manifest(StrictRecord):
    tokencompose: str
    schema_version: int
    format_version: int = Field(default=1, description="shard byte layout (FORMAT_VERSION); absent: 1")
    config_hash: str
    image_field: str
    shards: list[ManifestShard]
    samples: int
    provenance: dict[str, Any] = Field(description="the provenance of the latest version's samples")
    versions: list[DatasetVersion] = Field(default_factory=list)


class IncompleteRun(StrictRecord):
    """Written in place of the manifest when a run fails: which shards are done (their rows are in
    rejects.jsonl, stats.json and sizes.json), which failed and why, which were not built. A later
    successful run of the same configuration removes it and writes the manifest."""

    status: Literal["failed"] = "failed"
    config_hash: str
    shards_planned: int
    shards_done: list[str]
    shards_failed: dict[str, str] = Field(description="shard -> the error that stopped it")
    shards_not_built: list[str]


def _add_counts(total: dict[str, int], part: dict[str, int]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value


def merge_stats(parts: list[ShardStats]) -> ShardStats:
    total = ShardStats()
    for part in parts:
        total.images_in += part.images_in
        total.samples += part.samples
        total.nouns += part.nouns
        total.nouns_with_mask += part.nouns_with_mask
        for name in ("nouns_per_caption", "nouns_without_mask_by_reason", "noun_texts_with_mask",
                     "noun_texts_without_mask"):
            _add_counts(getattr(total, name), getattr(part, name))
    return total


def canonical_json(data: Any) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def temporary_name(name: str) -> str:
    """A hidden temporary name for ``name``, unique per process and call: two writers never share one."""
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name))
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


ShardIndex.model_rebuild()  # it names Reject and ShardStats, defined after it
