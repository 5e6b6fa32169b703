"""Dataset-level steps around the shards: plan the build, then write the files that describe it.

``plan`` does everything that can stop a run before work starts (configuration, backends, source,
output folder); ``finalize`` writes sizes.json, stats.json, rejects.jsonl and the manifest once all
shards exist; when shards fail, ``build_failed`` writes the same reports for the shards done and
incomplete.json instead of the manifest. The Prefect flow and :func:`build_directly` both use them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tokencompose import __version__
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import (CARD_FILE, CONFIG_FILE, INCOMPLETE_FILE, INDEX_DIR, MANIFEST_FILE,
                                          REJECTS_FILE, SHARDS_DIR, SIZES_FILE, STATS_FILE, IncompleteRun, Manifest,
                                          ManifestShard, Reject, ShardStats, ShardSummary, canonical_json, merge_stats,
                                          write_atomic)
from tokencompose.schemas.dataset_card import dataset_card
from tokencompose.schemas.sample import SCHEMA_VERSION, Provenance
from tokencompose.tasks import backends as backend_registry
from tokencompose.tasks.images import ImageProblem, image_path
from tokencompose.tasks.records import ImageRecord
from tokencompose.tasks.selection import select_images
from tokencompose.tasks.shards import build_shard, shard_name

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class ConfigurationError(ValueError):
    """The run cannot start: what is wrong and where, for every problem found."""


class BuildFailed(RuntimeError):
    """Shards failed; the reports of the finished ones and incomplete.json were written."""


@dataclass
class Plan:
    config: BuildConfig
    config_hash: str
    batches: list[list[ImageRecord]]
    selection_rejects: list[Reject]
    seen: int


def code_fingerprint() -> str:
    """Hash of the code and tables that decide a shard's bytes (stages, schemas, bundled tables)."""
    digest = hashlib.sha256()
    files = sorted([*PACKAGE_ROOT.glob("tasks/*.py"), *PACKAGE_ROOT.glob("schemas/*.py"),
                    *PACKAGE_ROOT.glob("data/*.csv")])
    for path in files:
        digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


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
    previous = out / CONFIG_FILE
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
    elif out.is_dir() and any(p.name != ".cache" for p in out.iterdir()):
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
    """Validate everything, select the images and cut them into shard batches; no output yet."""
    from tokencompose.tasks.selection import SourceError

    config_hash = config.config_hash()
    problems = backend_registry.preflight(config)
    if problems:
        raise ConfigurationError("the backends cannot run:\n  - " + "\n  - ".join(problems))
    check_output(config, config_hash)
    try:
        selection = select_images(config)
    except SourceError as error:
        raise ConfigurationError(f"source: {error}") from None
    size = config.output.shard_size
    batches = [selection.images[i:i + size] for i in range(0, len(selection.images), size)]
    return Plan(config, config_hash, batches, selection.rejects, selection.seen)


def start_output(run_plan: Plan) -> None:
    """Mark the output folder with this configuration before the first shard is written."""
    config = run_plan.config
    out = config.output.out_dir
    previous = out / CONFIG_FILE
    if previous.is_file() and json.loads(previous.read_text())["config_hash"] != run_plan.config_hash:
        clear_previous(config)
    for stale in (out / SHARDS_DIR).glob(".*.tmp") if (out / SHARDS_DIR).is_dir() else ():
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
    stats_doc = {"images_seen": run_plan.seen, "images_selected": sum(len(b) for b in run_plan.batches),
                 "rejects_by_reason": reject_counts(rejects), **stats.model_dump(), **status}
    write_atomic(out / STATS_FILE, canonical_json(stats_doc))
    return stats, rejects


def finalize(run_plan: Plan, summaries: Sequence[ShardSummary], provenance: Provenance) -> ShardStats:
    """Write sizes.json, stats.json, rejects.jsonl and the manifest (last: its presence means done)."""
    out = run_plan.config.output.out_dir
    summaries = sorted(summaries, key=lambda s: s.shard)
    stats, rejects = _write_reports(run_plan, summaries)
    manifest = Manifest(
        tokencompose=__version__, schema_version=SCHEMA_VERSION, config_hash=run_plan.config_hash,
        image_field=run_plan.config.output.image_field, samples=sum(s.samples for s in summaries),
        shards=[ManifestShard(name=s.shard, sha256=s.sha256, bytes=s.bytes, samples=s.samples,
                              index=f"{INDEX_DIR}/{s.shard.replace('.tar', '.json')}") for s in summaries],
        provenance=provenance.model_dump(mode="json"))
    share = f"{stats.nouns_with_mask / stats.nouns:.1%}" if stats.nouns else "n/a"
    card_stats = [f"- images seen: {run_plan.seen}; samples: {stats.samples}; rejected: {len(rejects)}",
                  f"- nouns: {stats.nouns}; with a mask: {stats.nouns_with_mask} ({share})"]
    write_atomic(out / CARD_FILE, dataset_card(run_plan.config.output.image_field,
                                               manifest.provenance, manifest.samples, card_stats))
    (out / INCOMPLETE_FILE).unlink(missing_ok=True)
    write_atomic(out / MANIFEST_FILE, canonical_json(manifest.model_dump(mode="json")))
    return stats


def write_incomplete(run_plan: Plan, summaries: Sequence[ShardSummary], failed: dict[int, BaseException]) -> Path:
    """After shards failed: the reports of the shards done so far, stats.json marked incomplete, and
    incomplete.json in place of the manifest (an old manifest no longer describes the folder)."""
    out = run_plan.config.output.out_dir
    summaries = sorted(summaries, key=lambda s: s.shard)
    done = [s.shard for s in summaries]
    failed_names = {shard_name(i): f"{type(e).__name__}: {e}"[:2000] for i, e in sorted(failed.items())}
    planned = [shard_name(i) for i in range(len(run_plan.batches))]
    report = IncompleteRun(config_hash=run_plan.config_hash, shards_planned=len(planned), shards_done=done,
                           shards_failed=failed_names,
                           shards_not_built=[n for n in planned if n not in failed_names and n not in done])
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    _write_reports(run_plan, summaries, status="incomplete", shards_done=len(done), shards_planned=len(planned))
    write_atomic(out / INCOMPLETE_FILE, canonical_json(report.model_dump()))
    return out / INCOMPLETE_FILE


def build_failed(run_plan: Plan, summaries: Sequence[ShardSummary], failed: dict[int, BaseException]) -> BuildFailed:
    """Write the incomplete run's reports; the exception to raise (chain it to the first failure)."""
    report = write_incomplete(run_plan, summaries, failed)
    first = min(failed)
    return BuildFailed(f"{len(failed)} of {len(run_plan.batches)} shards failed (first: {shard_name(first)}: "
                       f"{type(failed[first]).__name__}: {failed[first]}); what was done is in {report}")


def reject_counts(rejects: Sequence[Reject]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reject in rejects:
        counts[reject.reason] = counts.get(reject.reason, 0) + 1
    return dict(sorted(counts.items()))


def shard_is_intact(config: BuildConfig, summary: ShardSummary) -> bool:
    """Whether the shard a (cached) summary describes is on disk with the recorded hash."""
    path = config.output.out_dir / SHARDS_DIR / summary.shard
    index = config.output.out_dir / INDEX_DIR / summary.shard.replace(".tar", ".json")
    if not path.is_file() or not index.is_file() or path.stat().st_size != summary.bytes:
        return False
    return hashlib.sha256(path.read_bytes()).hexdigest() == summary.sha256


def build_directly(config: BuildConfig, on_shard: Callable[[ShardSummary], None] | None = None) -> ShardStats:
    """The whole build without Prefect (for benchmarks and debugging): same plan, shards and files."""
    run_plan = plan(config)
    start_output(run_plan)
    backends = backend_registry.load_backends(config)
    provenance = backends.provenance(run_plan.config_hash)
    summaries = []
    for index, batch in enumerate(run_plan.batches):
        try:
            summaries.append(build_shard(config, backends, provenance, index, batch))
        except Exception as error:
            raise build_failed(run_plan, summaries, {index: error}) from error
        if on_shard:
            on_shard(summaries[-1])
    return finalize(run_plan, summaries, provenance)
