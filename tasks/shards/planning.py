"""Planning a build: validate everything, select the images and cut the new ones into shard batches.

``plan`` does everything that can stop a run before work starts (configuration, backends, source,
output folder) and writes nothing. On a folder holding a complete dataset of the same configuration
only new images are planned, and existing shards missing or damaged on disk are planned again.

A dataset source taken whole is planned as row ranges (``RowRange``): the plan reads the number of rows,
not the rows, and holds one range per shard; each shard task reads its own rows (docs/scale-out.md).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence, Union

from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import (FORMAT_VERSION, MANIFEST_FILE, SHARDS_DIR, Manifest, Reject, ShardIndex,
                                          ShardStats, ShardSummary)
from tokencompose.tasks.models import backends as backend_registry
from tokencompose.tasks.shards.build import shard_number
from tokencompose.tasks.shards.output import ConfigurationError, check_output, index_path, shard_is_intact
from tokencompose.tasks.source.coco_json import SourceError
from tokencompose.tasks.source.dataset_rows import RowRange
from tokencompose.tasks.source.images import ImageProblem, image_path
from tokencompose.schemas.records import ImageRecord
from tokencompose.tasks.source.selection import select_images

MISSING_NAMED = 5  # file names a "source lost images" error lists

# A shard's input: its image records, or the row range of a dataset source its task reads.
Batch = Union[list[ImageRecord], RowRange]


@dataclass
class Plan:
    """What a run will do. ``batches`` are the shards to build now, numbered from ``first_index``;
    ``existing`` are the summaries of the shards a previous version holds (never rebuilt). With
    ``row_ranges`` every batch is a RowRange, ``seen`` the source's rows and the source's rejects are
    found by the shards (``selection_rejects`` is empty)."""

    config: BuildConfig
    config_hash: str
    batches: list[Batch]
    selection_rejects: list[Reject]
    seen: int
    first_index: int = 0
    existing: list[ShardSummary] = field(default_factory=list)
    previous: Manifest | None = None
    source_hash: str = ""
    selected: int = 0
    repairs: dict[int, Batch] = field(default_factory=dict)  # existing shards missing or damaged
    row_ranges: bool = False

    @property
    def new_images(self) -> int:
        return sum(len(b) for b in self.batches)

    def shard_indexes(self) -> list[int]:
        return [self.first_index + i for i in range(len(self.batches))]

    def jobs(self) -> dict[int, Batch]:
        """Every shard this run builds, by number: existing ones to repair, then the new ones."""
        return {**self.repairs, **dict(zip(self.shard_indexes(), self.batches))}

    def selected_images(self, summaries: Sequence[ShardSummary]) -> int:
        """The images selected: with row ranges only the shards know (the rows their source did not reject)."""
        return sum(s.stats.images_in for s in summaries) if self.row_ranges else self.selected


def batch_fingerprint(config: BuildConfig, records: Batch) -> str:
    """Hash of a shard's inputs: the records (a row range: its rows read now, rejects included) and each
    image file's size and modification time."""
    digest = hashlib.sha256()
    if config.source.dataset:
        from tokencompose.tasks.source.streams import open_dataset, range_records

        source = open_dataset(config.source)
        images, rejects = range_records(config, records) if isinstance(records, RowRange) else (records, [])
        for record in images:
            digest.update(repr(record).encode() + source.fingerprint(record.file_name).encode())
        for reject in rejects:
            digest.update(repr(reject).encode())
        return digest.hexdigest()
    assert config.source.images_dir is not None and not isinstance(records, RowRange)  # a COCO source
    for record in records:
        digest.update(repr(record).encode())
        try:
            stat = image_path(config.source.images_dir, record.file_name).stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        except ImageProblem:
            digest.update(b"unsafe")
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()


def plan(config: BuildConfig) -> Plan:
    """Validate everything, select the images and cut the new ones into shard batches; no output yet.

    On a folder that holds a complete dataset of this configuration (a manifest), only images
    whose id no existing shard holds (as a sample or a reject) are new; they go to new shards
    numbered after the last one, cut by shard_size in selection order. A source that lost images
    the shards hold is refused."""
    from tokencompose.tasks.source.streams import dataset_problems, plans_row_ranges

    config_hash = config.config_hash()
    problems = backend_registry.preflight(config)
    if config.source.dataset:
        problems += dataset_problems(config)
    if problems:
        raise ConfigurationError("the backends cannot run:\n  - " + "\n  - ".join(problems))
    check_output(config, config_hash)
    if plans_row_ranges(config):
        return row_range_plan(config, config_hash)
    try:
        selection = select_images(config)
    except SourceError as error:
        raise ConfigurationError(f"source: {error}") from None
    previous = _previous_manifest(config, config_hash)
    existing = _existing_summaries(config, previous) if previous else []
    images = selection.images
    if previous is not None:
        held, dropped = _held_image_ids(config, existing)
        present = {record.image_id for record in images}
        lost = [image_id for image_id in held if image_id not in present]
        if lost:
            names = _file_names(config, lost[:MISSING_NAMED])
            raise ConfigurationError(
                f"the source lost {len(lost)} image(s) that shards of {config.output.out_dir} hold (first: "
                f"{', '.join(names)}); shards are never rewritten: restore the images, or build into another "
                f"output.out_dir (or set output.overwrite to rebuild this one)")
        repairs = _repairs(config, existing, images, held, dropped)
        images = [record for record in images if record.image_id not in held and record.image_id not in dropped]
    size = config.output.shard_size
    batches: list[Batch] = [images[i:i + size] for i in range(0, len(images), size)]
    return Plan(config, config_hash, batches, selection.rejects, selection.seen, first_index=len(existing),
                existing=existing, previous=previous, source_hash=source_hash(selection.images),
                selected=len(selection.images), repairs=repairs if previous is not None else {})


def row_range_plan(config: BuildConfig, config_hash: str) -> Plan:
    """A dataset source taken whole: ranges of ``shard_size`` rows after the rows existing shards hold;
    only the number of rows is read. A source with fewer rows than the shards hold is refused."""
    from tokencompose.tasks.source.streams import content_fingerprint, open_dataset, row_count

    try:
        source = open_dataset(config.source)
        total = row_count(source)
    except SourceError as error:
        raise ConfigurationError(f"source: {error}") from None
    previous = _previous_manifest(config, config_hash)
    existing = _existing_summaries(config, previous) if previous else []
    spans = _row_spans(config, existing)
    covered = max((span.stop for span in spans.values()), default=0)
    if total < covered:
        raise ConfigurationError(
            f"the source has {total} rows, but shards of {config.output.out_dir} hold rows up to {covered - 1}; "
            f"shards are never rewritten: restore the rows, or build into another output.out_dir (or set "
            f"output.overwrite to rebuild this one)")
    repairs: dict[int, Batch] = {shard_number(s.shard): spans[s.shard] for s in existing
                                 if s.shard in spans and not shard_is_intact(config, s)}
    size = config.output.shard_size
    batches: list[Batch] = [RowRange(start, min(start + size, total)) for start in range(covered, total, size)]
    digest = hashlib.sha256(f"{source.description}|{total}|{content_fingerprint(source)}".encode())
    return Plan(config, config_hash, batches, [], total, first_index=len(existing), existing=existing,
                previous=previous, source_hash=digest.hexdigest()[:16], selected=total, repairs=repairs,
                row_ranges=True)


def _row_spans(config: BuildConfig, summaries: Sequence[ShardSummary]) -> dict[str, RowRange]:
    """The rows each existing shard holds (as samples or rejects), one index in memory at a time."""
    spans = {}
    for summary in summaries:
        index = ShardIndex.model_validate_json(index_path(config, summary.shard).read_bytes())
        rows = [int(key) for key in index.samples] + [r.image_id for r in summary.rejects if r.image_id is not None]
        if rows:
            spans[summary.shard] = RowRange(min(rows), max(rows) + 1)
    return spans


def _repairs(config: BuildConfig, existing: Sequence[ShardSummary], images: Sequence[ImageRecord],
             held: dict[int, str], dropped_by: dict[int, str]) -> dict[int, Batch]:
    """Existing shards that are missing or damaged on disk, with their batches (the images the
    shard's index names as samples or rejects, in selection order): built again, they must give
    the bytes the manifest records."""
    damaged = {s.shard: shard_number(s.shard) for s in existing if not shard_is_intact(config, s)}
    repairs: dict[int, list[ImageRecord]] = {number: [] for number in damaged.values()}
    for record in images:
        shard = held.get(record.image_id) or dropped_by.get(record.image_id)
        if shard in damaged:
            repairs[damaged[shard]].append(record)
    return {number: batch for number, batch in repairs.items()}


def check_repairs(run_plan: Plan, summaries: Sequence[ShardSummary]) -> dict[int, BaseException]:
    """Repaired shards whose bytes differ from what the manifest records (by shard number)."""
    recorded = {s.shard: s.sha256 for s in run_plan.existing}
    return {number: RuntimeError(
        f"{s.shard} was missing or damaged and built again, but its sha256 {s.sha256[:16]} differs from the "
        f"manifest's {recorded[s.shard][:16]} (code, libraries or weights changed since it was built): restore "
        f"it from a copy, or rebuild the dataset with output.overwrite")
        for number, s in ((shard_number(s.shard), s) for s in summaries) if s.shard in recorded
        and s.sha256 != recorded[s.shard]}


def source_hash(records: Sequence[ImageRecord]) -> str:
    """Hash of what the source gave for the selected images (ids, file names, sizes, captions, annotations)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(repr(record).encode() + b"\n")
    return digest.hexdigest()[:16]


def _previous_manifest(config: BuildConfig, config_hash: str) -> Manifest | None:
    """The manifest of a complete dataset of this configuration in the output folder, if any."""
    path = config.output.out_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValueError as error:
        raise ConfigurationError(f"{path} is unreadable ({error}); remove it or choose another out_dir") from None
    if manifest.config_hash != config_hash:
        return None  # another configuration: refused by check_output, or replaced under overwrite
    if manifest.format_version != FORMAT_VERSION or not manifest.versions:
        raise ConfigurationError(
            f"{config.output.out_dir} holds a dataset in format {manifest.format_version} without versions; this "
            f"build writes format {FORMAT_VERSION}: set output.overwrite to rebuild it, or choose another out_dir")
    return manifest


def _existing_summaries(config: BuildConfig, manifest: Manifest) -> list[ShardSummary]:
    """The summaries of a complete dataset's shards, from the manifest and the shard indexes."""
    added_in = {name: version for version in manifest.versions for name in version.added}
    summaries = []
    for shard in manifest.shards:
        try:
            index = ShardIndex.model_validate_json(index_path(config, shard.name).read_bytes())
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"index of {shard.name} is unreadable ({error}); the dataset cannot grow: set "
                                     f"output.overwrite to rebuild it") from None
        version = added_in.get(shard.name)
        summaries.append(ShardSummary(shard=shard.name, sha256=shard.sha256, bytes=shard.bytes, samples=shard.samples,
                                      stats=index.stats or ShardStats(samples=shard.samples), rejects=index.rejects,
                                      provenance=version.provenance if version else manifest.provenance))
    return summaries


def _held_image_ids(config: BuildConfig, summaries: Sequence[ShardSummary]
                    ) -> tuple[dict[int, str], dict[int, str]]:
    """Image ids the shards hold as samples, and the ids their builds rejected (id -> shard)."""
    held: dict[int, str] = {}
    for summary in summaries:
        index = ShardIndex.model_validate_json(index_path(config, summary.shard).read_bytes())
        for key in index.samples:
            held[int(key)] = summary.shard
    dropped = {r.image_id: s.shard for s in summaries for r in s.rejects if r.image_id is not None}
    return held, dropped


def _file_names(config: BuildConfig, image_ids: Sequence[int]) -> list[str]:
    """The file names of held samples (read from their JSON members), for a message."""
    from tokencompose.schemas.sample import JSON_FIELD, SampleRecord, sample_key

    held, _ = _held_image_ids(config, _existing_summaries(config, Manifest.model_validate_json(
        (config.output.out_dir / MANIFEST_FILE).read_bytes())))
    names = []
    for image_id in image_ids:
        shard = held[image_id]
        index = ShardIndex.model_validate_json(index_path(config, shard).read_bytes())
        location = index.samples[sample_key(image_id)][JSON_FIELD]
        try:
            with open(config.output.out_dir / SHARDS_DIR / shard, "rb") as handle:
                handle.seek(location.offset)
                names.append(SampleRecord.from_json_bytes(handle.read(location.size)).file_name)
        except (OSError, ValueError):
            names.append(f"image id {image_id}")
    return names
