"""Dataset-level steps around the shards: plan the build, then write the files that describe it.

``plan`` does everything that can stop a run before work starts (configuration, backends, source,
output folder); ``finalize`` writes sizes.json, stats.json, rejects.jsonl and the manifest once all
shards exist; when shards fail, ``build_failed`` writes the same reports for the shards done and
incomplete.json instead of the manifest. The Prefect flow and :func:`build_directly` both use them.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tokencompose import __version__
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import (BUILD_CONFIG_FILE, CARD_FILE, FORMAT_VERSION, INCOMPLETE_FILE, INDEX_DIR,
                                          LOCK_FILE, MANIFEST_FILE, REJECTS_FILE, SHARDS_DIR, SIZES_FILE, STATS_FILE,
                                          DatasetVersion, IncompleteRun, Manifest, ManifestShard, Reject, ShardIndex,
                                          ShardStats, ShardSummary, canonical_json, merge_stats, write_atomic)
from tokencompose.schemas.dataset_card import dataset_card
from tokencompose.schemas.sample import SCHEMA_VERSION, Provenance
from tokencompose.tasks.models import backends as backend_registry
from tokencompose.tasks.shards.identity import PACKAGE_ROOT, build_identity, code_fingerprint, identity_hash  # noqa: F401
from tokencompose.tasks.source.images import ImageProblem, image_path
from tokencompose.tasks.source.records import ImageRecord
from tokencompose.tasks.source.selection import select_images
from tokencompose.tasks.shards.shard_io import file_sha256
from tokencompose.tasks.shards.build import build_shard, shard_name, shard_number

MISSING_NAMED = 5  # file names a "source lost images" error lists


class ConfigurationError(ValueError):
    """The run cannot start: what is wrong and where, for every problem found."""


class OutputBusy(ConfigurationError):
    """Another build holds the output folder's lock."""


class BuildFailed(RuntimeError):
    """Shards failed; the reports of the finished ones and incomplete.json were written."""


@dataclass
class Plan:
    """What a run will do. ``batches`` are the shards to build now, numbered from ``first_index``;
    ``existing`` are the summaries of the shards a previous version holds (never rebuilt)."""

    config: BuildConfig
    config_hash: str
    batches: list[list[ImageRecord]]
    selection_rejects: list[Reject]
    seen: int
    first_index: int = 0
    existing: list[ShardSummary] = field(default_factory=list)
    previous: Manifest | None = None
    source_hash: str = ""
    selected: int = 0
    repairs: dict[int, list[ImageRecord]] = field(default_factory=dict)  # existing shards missing or damaged

    @property
    def new_images(self) -> int:
        return sum(len(b) for b in self.batches)

    def shard_indexes(self) -> list[int]:
        return [self.first_index + i for i in range(len(self.batches))]

    def jobs(self) -> dict[int, list[ImageRecord]]:
        """Every shard this run builds, by number: existing ones to repair, then the new ones."""
        return {**self.repairs, **dict(zip(self.shard_indexes(), self.batches))}


# ---- one writer per output folder ------------------------------------------------------------------

def read_lock(out_dir: Path) -> dict[str, Any] | None:
    """Who holds (or last held) the output folder's lock: pid, host, started; None if nobody wrote one."""
    try:
        data = json.loads((Path(out_dir) / LOCK_FILE).read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextmanager
def output_lock(out_dir: Path) -> Iterator[Path]:
    """Hold the output folder for this process: one build writes a folder at a time.

    The lock is ``OUT/.tokencompose.lock``, taken with ``flock`` (atomic; the kernel drops it when
    the holding process dies, so a killed run never blocks the next one) and holding the holder's
    pid, host and start time for the message another run gets. A second run does not wait: it
    raises :class:`OutputBusy` (the CLI exits 2). A file left by a dead run is simply taken over.
    When the folder did not exist and the run stops with a :class:`ConfigurationError`, the folder
    is removed again (a wrong configuration writes nothing).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigurationError(f"output.out_dir {out_dir} exists and is not a folder")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fd = _take_lock(out_dir, path)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)  # details a killed run left here are stale: ours replace them
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        yield path
    except ConfigurationError:
        if created and [p.name for p in out_dir.iterdir()] == [LOCK_FILE]:
            path.unlink()
            out_dir.rmdir()
        raise
    finally:
        try:
            if path.exists():
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock


def _take_lock(out_dir: Path, path: Path) -> int:
    """The open, flock-ed lock file (retried when the file was replaced while we waited for it)."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_lock(out_dir) or {}
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
                   if holder else "a process that has not yet written its details")
            raise OutputBusy(f"{out_dir} is being written by another build ({who}); wait for it to finish, "
                             f"or choose another output.out_dir") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the file we locked was removed (a failed first run cleaning up): lock the new one
    raise OutputBusy(f"cannot take the lock {path}: it keeps being replaced")


def batch_fingerprint(config: BuildConfig, records: Sequence[ImageRecord]) -> str:
    """Hash of a shard's inputs: the records and each image file's size and modification time."""
    digest = hashlib.sha256()
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


def check_output(config: BuildConfig, config_hash: str) -> None:
    """Refuse to mix two configurations in one output folder (unless overwrite is asked for)."""
    out = config.output.out_dir
    previous = out / BUILD_CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"output.out_dir {out} exists and is not a folder")
    if previous.is_file():
        try:
            old_hash = json.loads(previous.read_text())["config_hash"]
        except (ValueError, KeyError) as error:
            raise ConfigurationError(f"{previous} is unreadable ({error}); remove it or choose another out_dir") from None
        if old_hash != config_hash and not config.output.overwrite:
            raise ConfigurationError(
                f"{out} holds a dataset built with configuration {old_hash}, this run's is {config_hash}: "
                f"choose another output.out_dir, or set output.overwrite to replace it")
    elif out.is_dir() and any(p.name not in (".cache", LOCK_FILE) for p in out.iterdir()):
        raise ConfigurationError(f"output.out_dir {out} is not empty and holds no tokencompose dataset")


def clear_previous(config: BuildConfig) -> None:
    """With overwrite: remove the files of a dataset of another configuration (and stale temporaries)."""
    out = config.output.out_dir
    for folder in (SHARDS_DIR, INDEX_DIR):
        for path in (out / folder).glob("*") if (out / folder).is_dir() else ():
            if path.is_file():
                path.unlink()
    for name in (MANIFEST_FILE, STATS_FILE, SIZES_FILE, REJECTS_FILE, CARD_FILE, INCOMPLETE_FILE):
        (out / name).unlink(missing_ok=True)


def plan(config: BuildConfig) -> Plan:
    """Validate everything, select the images and cut the new ones into shard batches; no output yet.

    On a folder that holds a complete dataset of this configuration (a manifest), only images
    whose id no existing shard holds (as a sample or a reject) are new; they go to new shards
    numbered after the last one, cut by shard_size in selection order. A source that lost images
    the shards hold is refused."""
    from tokencompose.tasks.source.selection import SourceError

    config_hash = config.config_hash()
    problems = backend_registry.preflight(config)
    if problems:
        raise ConfigurationError("the backends cannot run:\n  - " + "\n  - ".join(problems))
    check_output(config, config_hash)
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
    batches = [images[i:i + size] for i in range(0, len(images), size)]
    return Plan(config, config_hash, batches, selection.rejects, selection.seen, first_index=len(existing),
                existing=existing, previous=previous, source_hash=source_hash(selection.images),
                selected=len(selection.images), repairs=repairs if previous is not None else {})


def _repairs(config: BuildConfig, existing: Sequence[ShardSummary], images: Sequence[ImageRecord],
             held: dict[int, str], dropped_by: dict[int, str]) -> dict[int, list[ImageRecord]]:
    """Existing shards that are missing or damaged on disk, with their batches (the images the
    shard's index names as samples or rejects, in selection order): built again, they must give
    the bytes the manifest records."""
    damaged = {s.shard: shard_number(s.shard) for s in existing if not shard_is_intact(config, s)}
    repairs: dict[int, list[ImageRecord]] = {number: [] for number in damaged.values()}
    for record in images:
        shard = held.get(record.image_id) or dropped_by.get(record.image_id)
        if shard in damaged:
            repairs[damaged[shard]].append(record)
    return repairs


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


def _index_path(config: BuildConfig, shard: str) -> Path:
    return config.output.out_dir / INDEX_DIR / shard.replace(".tar", ".json")


def _existing_summaries(config: BuildConfig, manifest: Manifest) -> list[ShardSummary]:
    """The summaries of a complete dataset's shards, from the manifest and the shard indexes."""
    added_in = {name: version for version in manifest.versions for name in version.added}
    summaries = []
    for shard in manifest.shards:
        try:
            index = ShardIndex.model_validate_json(_index_path(config, shard.name).read_bytes())
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
        index = ShardIndex.model_validate_json(_index_path(config, summary.shard).read_bytes())
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
        index = ShardIndex.model_validate_json(_index_path(config, shard).read_bytes())
        location = index.samples[sample_key(image_id)][JSON_FIELD]
        try:
            with open(config.output.out_dir / SHARDS_DIR / shard, "rb") as handle:
                handle.seek(location.offset)
                names.append(SampleRecord.from_json_bytes(handle.read(location.size)).file_name)
        except (OSError, ValueError):
            names.append(f"image id {image_id}")
    return names


def start_output(run_plan: Plan) -> None:
    """Mark the output folder with this configuration before the first shard is written."""
    config = run_plan.config
    out = config.output.out_dir
    previous = out / BUILD_CONFIG_FILE
    if previous.is_file() and json.loads(previous.read_text())["config_hash"] != run_plan.config_hash:
        clear_previous(config)
    # Temporaries of a run that died (this run holds the output lock, so no other run owns them).
    for folder in (out, out / SHARDS_DIR, out / INDEX_DIR):
        for stale in folder.glob(".*.tmp") if folder.is_dir() else ():
            if stale.is_file():
                stale.unlink()
    record = {"config_hash": run_plan.config_hash, "tokencompose": __version__,
              "config": config.model_dump(mode="json"), "content": config.content_dict()}
    write_atomic(previous, canonical_json(record))


def _write_reports(run_plan: Plan, summaries: Sequence[ShardSummary], **status) -> tuple[ShardStats, list[Reject]]:
    """sizes.json, rejects.jsonl and stats.json for these shards (``status``: extra keys for stats.json)."""
    out = run_plan.config.output.out_dir
    stats = merge_stats([s.stats for s in summaries])
    rejects = run_plan.selection_rejects + [r for s in summaries for r in s.rejects]
    write_atomic(out / SIZES_FILE, canonical_json({s.shard: s.samples for s in summaries}))
    write_atomic(out / REJECTS_FILE, b"".join(
        json.dumps(r.model_dump(), sort_keys=True, ensure_ascii=False).encode() + b"\n" for r in rejects))
    stats_doc = {"images_seen": run_plan.seen, "images_selected": run_plan.selected,
                 "rejects_by_reason": reject_counts(rejects), **stats.model_dump(), **status}
    write_atomic(out / STATS_FILE, canonical_json(stats_doc))
    return stats, rejects


def shared_provenance(summaries: Sequence[ShardSummary]) -> dict[str, Any] | None:
    """The provenance the shards of one run share (it is in every sample), None without shards."""
    provenances = {canonical_json(s.provenance): s.provenance for s in summaries}
    if len(provenances) > 1:
        raise RuntimeError(f"the shards of one run disagree on their provenance: {sorted(s.shard for s in summaries)}")
    return next(iter(provenances.values()), None)


def finalize(run_plan: Plan, summaries: Sequence[ShardSummary], provenance: Provenance | dict | None = None
             ) -> ShardStats:
    """Write sizes.json, stats.json, rejects.jsonl and the manifest (last: its presence means done).

    ``summaries``: the shards built (or found cached) by this run. The provenance comes from them
    (``provenance`` only for a run without new shards and no earlier version). A run that added shards
    records a new dataset version; a run that added none leaves the versions as they were."""
    out = run_plan.config.output.out_dir
    existing = {s.shard for s in run_plan.existing}
    new = sorted((s for s in summaries if s.shard not in existing), key=lambda s: s.shard)
    everything = sorted([*run_plan.existing, *new], key=lambda s: s.shard)  # a repaired shard is as recorded
    stats, rejects = _write_reports(run_plan, everything)
    versions = list(run_plan.previous.versions) if run_plan.previous else []
    latest = shared_provenance(new)
    if latest is None:
        latest = versions[-1].provenance if versions else (
            provenance.model_dump(mode="json") if isinstance(provenance, Provenance) else dict(provenance or {}))
    if new or not versions:
        versions.append(DatasetVersion(version=len(versions) + 1, shards={s.shard: s.sha256 for s in everything},
                                       added=[s.shard for s in new], samples=sum(s.samples for s in everything),
                                       source_hash=run_plan.source_hash, config_hash=run_plan.config_hash,
                                       provenance=latest))
    manifest = Manifest(
        tokencompose=__version__, schema_version=SCHEMA_VERSION, format_version=FORMAT_VERSION,
        config_hash=run_plan.config_hash, image_field=run_plan.config.output.image_field,
        samples=sum(s.samples for s in everything),
        shards=[ManifestShard(name=s.shard, sha256=s.sha256, bytes=s.bytes, samples=s.samples,
                              index=f"{INDEX_DIR}/{s.shard.replace('.tar', '.json')}") for s in everything],
        provenance=latest, versions=versions)
    share, grounded = (f"{s:.1%}" if s is not None else "n/a" for s in (stats.share_with_mask(),
                                                                          stats.share_with_mask(False)))
    card_stats = [f"- images seen: {run_plan.seen}; samples: {stats.samples}; rejected: {len(rejects)}",
                  f"- nouns: {stats.nouns}; with a mask: {stats.nouns_with_mask} ({share}; {grounded} of those "
                  f"not on the stop-list)",
                  f"- dataset version {versions[-1].version} (shard format {FORMAT_VERSION}); shards: {len(everything)}"]
    write_atomic(out / CARD_FILE, dataset_card(run_plan.config.output.image_field,
                                               manifest.provenance, manifest.samples, card_stats))
    (out / INCOMPLETE_FILE).unlink(missing_ok=True)
    write_atomic(out / MANIFEST_FILE, canonical_json(manifest.model_dump(mode="json")))
    return stats


def dataset_versions(out_dir: Path) -> list[DatasetVersion]:
    """The versions of the complete dataset in ``out_dir`` (oldest first); empty when there is none.
    For code without Prefect, e.g. scheduled retraining on the latest version."""
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        return []
    return list(Manifest.model_validate_json(path.read_bytes()).versions)


def version_shards(out_dir: Path, version: int | None = None) -> list[Path]:
    """The shard files of a dataset version (default: the latest), in shard order."""
    versions = dataset_versions(out_dir)
    if not versions:
        raise FileNotFoundError(f"{out_dir} holds no complete dataset (no {MANIFEST_FILE} with versions)")
    chosen = versions[-1] if version is None else next((v for v in versions if v.version == version), None)
    if chosen is None:
        raise KeyError(f"{out_dir} has versions {[v.version for v in versions]}, not {version}")
    return [Path(out_dir) / SHARDS_DIR / name for name in sorted(chosen.shards)]


def write_incomplete(run_plan: Plan, summaries: Sequence[ShardSummary], failed: dict[int, BaseException]) -> Path:
    """After shards failed: the reports of the shards done so far, stats.json marked incomplete, and
    incomplete.json. A first build's old manifest no longer describes the folder and goes; the manifest
    of an earlier complete version stays (its shards are untouched and still as it says)."""
    out = run_plan.config.output.out_dir
    summaries = sorted(summaries, key=lambda s: s.shard)
    done = [s.shard for s in summaries]
    failed_names = {shard_name(i): f"{type(e).__name__}: {e}"[:2000] for i, e in sorted(failed.items())}
    planned = [shard_name(i) for i in sorted(run_plan.jobs())]
    report = IncompleteRun(config_hash=run_plan.config_hash, shards_planned=len(planned), shards_done=done,
                           shards_failed=failed_names,
                           shards_not_built=[n for n in planned if n not in failed_names and n not in done])
    if run_plan.previous is None:
        (out / MANIFEST_FILE).unlink(missing_ok=True)
    existing = [s for s in run_plan.existing if s.shard not in done]
    _write_reports(run_plan, [*existing, *summaries], status="incomplete", shards_done=len(done),
                   shards_planned=len(planned))
    write_atomic(out / INCOMPLETE_FILE, canonical_json(report.model_dump()))
    return out / INCOMPLETE_FILE


def build_failed(run_plan: Plan, summaries: Sequence[ShardSummary], failed: dict[int, BaseException]) -> BuildFailed:
    """Write the incomplete run's reports; the exception to raise (chain it to the first failure)."""
    report = write_incomplete(run_plan, summaries, failed)
    first = min(failed)
    return BuildFailed(f"{len(failed)} of {len(run_plan.jobs())} shards failed (first: {shard_name(first)}: "
                       f"{type(failed[first]).__name__}: {failed[first]}); what was done is in {report}")


def reject_counts(rejects: Sequence[Reject]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reject in rejects:
        counts[reject.reason] = counts.get(reject.reason, 0) + 1
    return dict(sorted(counts.items()))


def shard_is_intact(config: BuildConfig, summary: ShardSummary) -> bool:
    """Whether the shard a (cached) summary describes is on disk with the recorded hash (read in chunks)."""
    path = config.output.out_dir / SHARDS_DIR / summary.shard
    index = _index_path(config, summary.shard)
    if not path.is_file() or not index.is_file() or path.stat().st_size != summary.bytes:
        return False
    return file_sha256(path) == summary.sha256


def build_directly(config: BuildConfig, on_shard: Callable[[ShardSummary], None] | None = None) -> ShardStats:
    """The whole build without Prefect (for benchmarks and debugging): same plan, shards and files."""
    with output_lock(config.output.out_dir):
        run_plan = plan(config)
        start_output(run_plan)
        identity = build_identity(config)
        summaries: list[ShardSummary] = []
        jobs = run_plan.jobs()
        if jobs:
            backends = backend_registry.load_backends(config)
            provenance = backends.provenance(run_plan.config_hash, identity)
            for index, batch in sorted(jobs.items()):
                try:
                    summaries.append(build_shard(config, backends, provenance, index, batch))
                except Exception as error:
                    raise build_failed(run_plan, summaries, {index: error}) from error
                if on_shard:
                    on_shard(summaries[-1])
        failed = check_repairs(run_plan, summaries)
        if failed:
            raise build_failed(run_plan, summaries, failed) from failed[min(failed)]
        return finalize(run_plan, summaries, identity_provenance(run_plan.config_hash, identity))


def identity_provenance(config_hash: str, identity: dict[str, Any]) -> dict[str, Any]:
    """The provenance a dataset without any shard records (no backend ran, none is loaded for it)."""
    return {"tokencompose": __version__, "config_hash": config_hash, "build": identity}
