"""Dataset-level steps around the shards: plan the build, then write the files that describe it.

``plan`` does everything that can stop a run before work starts (configuration, backends, source,
output folder); ``finalize`` writes sizes.json, stats.json, rejects.jsonl and the manifest once all
shards exist. The Prefect flow and :func:`build_directly` both use them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tokencompose import __version__
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import (CARD_FILE, CONFIG_FILE, INDEX_DIR, MANIFEST_FILE, REJECTS_FILE, SHARDS_DIR,
                                          SIZES_FILE, STATS_FILE, Manifest, ManifestShard, Reject, ShardStats,
                                          ShardSummary, canonical_json, merge_stats, write_atomic)
from tokencompose.schemas.dataset_card import dataset_card
from tokencompose.schemas.sample import SCHEMA_VERSION, Provenance
from tokencompose.tasks import backends as backend_registry
from tokencompose.tasks.records import ImageRecord
from tokencompose.tasks.selection import select_images
from tokencompose.tasks.shards import build_shard

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class ConfigurationError(ValueError):
    """The run cannot start: what is wrong and where, for every problem found."""


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
            stat = (config.source.images_dir / record.file_name).stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
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
    for name in (MANIFEST_FILE, STATS_FILE, SIZES_FILE, REJECTS_FILE, CARD_FILE):
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
        stale.unlink()
    record = {"config_hash": run_plan.config_hash, "tokencompose": __version__,
              "config": config.model_dump(mode="json"), "content": config.content_dict()}
    write_atomic(previous, canonical_json(record))


def finalize(run_plan: Plan, summaries: Sequence[ShardSummary], provenance: Provenance) -> ShardStats:
    """Write sizes.json, stats.json, rejects.jsonl and the manifest (last: its presence means done)."""
    out = run_plan.config.output.out_dir
    summaries = sorted(summaries, key=lambda s: s.shard)
    stats = merge_stats([s.stats for s in summaries])
    rejects = run_plan.selection_rejects + [r for s in summaries for r in s.rejects]
    write_atomic(out / SIZES_FILE, canonical_json({s.shard: s.samples for s in summaries}))
    write_atomic(out / REJECTS_FILE, b"".join(
        json.dumps(r.model_dump(), sort_keys=True, ensure_ascii=False).encode() + b"\n" for r in rejects))
    stats_doc = {"images_seen": run_plan.seen, "images_selected": sum(len(b) for b in run_plan.batches),
                 "rejects_by_reason": reject_counts(rejects), **stats.model_dump()}
    write_atomic(out / STATS_FILE, canonical_json(stats_doc))
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
    write_atomic(out / MANIFEST_FILE, canonical_json(manifest.model_dump(mode="json")))
    return stats


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
        summaries.append(build_shard(config, backends, provenance, index, batch))
        if on_shard:
            on_shard(summaries[-1])
    return finalize(run_plan, summaries, provenance)
