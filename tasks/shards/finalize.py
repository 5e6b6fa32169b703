"""The files that describe a built dataset.

``finalize`` writes sizes.json, stats.json, rejects.jsonl, the dataset card and the manifest once all
shards exist; when shards failed, ``build_failed`` writes the same reports for the shards done and
incomplete.json instead of the manifest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from tokencompose import __version__
from tokencompose.schemas.dataset_card import dataset_card
from tokencompose.schemas.reports import (CARD_FILE, FORMAT_VERSION, INCOMPLETE_FILE, INDEX_DIR, MANIFEST_FILE,
                                          REJECTS_FILE, SIZES_FILE, STATS_FILE, DatasetVersion, IncompleteRun,
                                          Manifest, ManifestShard, Reject, ShardStats, ShardSummary, canonical_json,
                                          merge_stats, write_atomic)
from tokencompose.schemas.sample import SCHEMA_VERSION, Provenance
from tokencompose.tasks.shards.build import shard_name
from tokencompose.tasks.shards.planning import Plan
from tokencompose.tasks.shards.rejects import write_rejects


class BuildFailed(RuntimeError):
    """Shards failed; the reports of the finished ones and incomplete.json were written."""


def _write_reports(run_plan: Plan, summaries: Sequence[ShardSummary], **status) -> tuple[ShardStats, list[Reject]]:
    """sizes.json, rejects.jsonl and stats.json for these shards (``status``: extra keys for stats.json)."""
    out = run_plan.config.output.out_dir
    stats = merge_stats([s.stats for s in summaries])
    rejects = run_plan.selection_rejects + [r for s in summaries for r in s.rejects]
    write_atomic(out / SIZES_FILE, canonical_json({s.shard: s.samples for s in summaries}))
    write_rejects(out / REJECTS_FILE, rejects)
    stats_doc = {"images_seen": run_plan.seen, "images_selected": run_plan.selected_images(summaries),
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


def identity_provenance(config_hash: str, identity: dict[str, Any]) -> dict[str, Any]:
    """The provenance a dataset without any shard records (no backend ran, none is loaded for it)."""
    return {"tokencompose": __version__, "config_hash": config_hash, "build": identity}
