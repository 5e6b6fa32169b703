"""The build-grounded-coco flow: select -> (caption, nouns, masks, shard) per batch -> reports.

One Prefect task per shard-sized batch, cached on the batch's inputs, the configuration, the
output folder and the build identity (code, resolved device and precisions, library versions,
weight digests), so a run started again skips every finished shard. One run writes an output
folder at a time (a lock file); on a dataset that exists, only new images get (new) shards.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.futures import as_completed
from prefect.utilities.annotations import quote

from tokencompose.runners import make_task_runner
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import ShardStats, ShardSummary
from tokencompose.schemas.runner import GPU_TAG
from tokencompose.tasks.progress import Progress
from tokencompose.tasks.models import backends as backend_registry
from tokencompose.tasks.shards.dataset import ShardResults, build_dataset
from tokencompose.tasks.shards.finalize import reject_counts
from tokencompose.tasks.shards.output import shard_is_intact
from tokencompose.tasks.shards.planning import Plan, batch_fingerprint
from tokencompose.tasks.shards.versions import dataset_versions
from tokencompose.tasks.shards.identity import build_identity, identity_hash
from tokencompose.schemas.records import ImageRecord
from tokencompose.tasks.shards.build import build_shard

FLOW_NAME = "build-grounded-coco"
CACHE_DIR = ".cache/prefect"
# Backends that load a model (on a GPU when there is one); the offline ones (consensus, spacy, coco) do not.
MODEL_BACKENDS = frozenset({"clip", "flair", "grounded_sam", "hybrid"})
# Shards in flight when the cluster bounds the concurrency (BuildConfig.workers caps at 64).
MAX_IN_FLIGHT = 64


def shard_key(config: BuildConfig, index: int, records, identity: dict[str, Any]) -> str:
    parts = [identity_hash(identity), config.config_hash(), str(config.output.out_dir.resolve()), str(index),
             batch_fingerprint(config, records)]
    return "shard-" + hashlib.sha256("|".join(parts).encode()).hexdigest()


def shard_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The shard's identity: the build identity (format, code, resolved device and precisions, library
    versions, weight digests; tasks/shards/identity.py), the configuration, the output folder, the shard number
    and the batch (records plus each image file's size and mtime). Computed where the task runs (a
    remote worker resolves its own device and libraries), without loading any model."""
    config: BuildConfig = parameters["config"]
    return shard_key(config, parameters["index"], parameters["records"], build_identity(config))


def is_transient(error: BaseException) -> bool:
    """Whether a second try can succeed: I/O errors and a GPU out of memory. Anything else comes from
    the shard's records or the code and would fail the same way again."""
    if isinstance(error, OSError):
        return True
    torch = sys.modules.get("torch")  # never imported here just to check: the offline profile has no torch
    return torch is not None and isinstance(error, torch.cuda.OutOfMemoryError)


def retry_only_transient(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn(task, task_run, state): retry a failed shard only for a transient error."""
    error = state.data
    if not isinstance(error, BaseException):
        error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


@task(name="build-shard", task_run_name="shard-{index:06d}", tags={GPU_TAG}, cache_key_fn=shard_cache_key,
      persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_only_transient)
def build_shard_task(config: BuildConfig, index: int, records: list[ImageRecord]) -> ShardSummary:
    backends = backend_registry.load_backends(config)
    provenance = backends.provenance(config.config_hash(), build_identity(config))
    summary = build_shard(config, backends, provenance, index, records)
    get_run_logger().info("%s: %d samples, %d rejects", summary.shard, summary.samples, len(summary.rejects))
    return summary


def summary_table(plan: Plan, stats: ShardStats, summaries: list[ShardSummary], version: int = 1
                  ) -> list[dict[str, Any]]:
    existing = {s.shard for s in plan.existing}
    shards = [*plan.existing, *(s for s in summaries if s.shard not in existing)]
    rejects = plan.selection_rejects + [r for s in shards for r in s.rejects]
    rows: list[tuple[str, int | float]] = [("images seen", plan.seen), ("images selected", plan.selected), ("new_images", plan.new_images),
            ("new shards", len([s for s in summaries if s.shard not in existing])), ("dataset version", version),
            ("samples written", stats.samples), ("shards", len(shards)),
            ("images rejected", len(rejects))]
    rows += [(f"rejected: {reason}", count) for reason, count in reject_counts(rejects).items()]
    per_caption = stats.nouns / stats.samples if stats.samples else 0.0
    rows += [("nouns per caption", round(per_caption, 3)),
             ("share of nouns with a mask", round(stats.share_with_mask() or 0.0, 3)),
             ("share of non-stop-list nouns with a mask", round(stats.share_with_mask(False) or 0.0, 3))]
    return [{"measure": name, "value": value} for name, value in rows]


def cache_storage(config: BuildConfig) -> LocalFileSystem:
    """Shard results live beside the dataset (out_dir/.cache/prefect), so its cache goes where it goes.
    Prefect only accepts saved blocks as result storage: one block per output folder."""
    basepath = (config.output.out_dir / CACHE_DIR).resolve()
    block = LocalFileSystem(basepath=str(basepath))
    block.save(f"tokencompose-cache-{hashlib.sha256(str(basepath).encode()).hexdigest()[:16]}", overwrite=True)
    return block


@flow(name=FLOW_NAME, log_prints=True, validate_parameters=True)
def build_grounded_coco(config: BuildConfig) -> dict[str, Any]:
    """Build a grounded COCO dataset as sharded WebDataset tars (see docs/architecture.md)."""
    logger = get_run_logger()
    built = build_dataset(config, submitted_shards)  # the sequence --no-prefect runs too, shards as tasks
    plan = built.plan
    versions = dataset_versions(config.output.out_dir)
    table = summary_table(plan, built.stats, built.summaries, versions[-1].version if versions else 0)
    create_table_artifact(table, key="build-grounded-coco-summary", description=f"dataset {config.output.out_dir}")
    if not plan.batches and plan.existing:
        logger.info("no new images: the dataset stays at version %d", versions[-1].version)
    logger.info("done: %s", ", ".join(f"{row['measure']}={row['value']}" for row in table))
    return {row["measure"]: row["value"] for row in table}


def submitted_shards(plan: Plan, identity: dict[str, Any]) -> ShardResults:
    """The plan's shards as Prefect tasks (build_dataset's ``run_shards``), with a progress artifact."""
    config = plan.config
    get_run_logger().info("config %s, build identity %s: %d new images of %d selected (%d seen), %d new shards "
                          "after %d", plan.config_hash, identity_hash(identity), plan.new_images, plan.selected,
                          plan.seen, len(plan.batches), len(plan.existing))
    shard_task = build_shard_task.with_options(result_storage=cache_storage(config))
    progress = create_progress_artifact(0.0, key="build-grounded-coco-progress",
                                        description=f"shards of {config.output.out_dir}")
    return _run_shards(config, plan, shard_task, progress)


def _run_shards(config: BuildConfig, plan: Plan, shard_task, progress) -> ShardResults:
    """Submit shards, at most ``config.workers`` at once; a cached result whose shard is not on disk
    intact is built again. After a shard fails (retries spent) no new shard starts; the running ones
    finish, so their work is kept and reported. Returns the summaries and the failures by shard."""
    logger = get_run_logger()
    waiting = sorted(plan.jobs().items())[::-1]
    running: dict[Any, int] = {}
    summaries: list[ShardSummary] = []
    failed: dict[int, BaseException] = {}
    total = max(len(plan.jobs()), 1)
    images = {index: len(batch) for index, batch in plan.jobs().items()}
    bar = Progress("build", total=sum(images.values()), unit="image", logger=logger)
    while running or (waiting and not failed):
        while waiting and not failed and len(running) < config.workers:
            index, batch = waiting.pop()
            # quote: Prefect would otherwise walk every record (and polygon) looking for futures
            running[shard_task.submit(config=config, index=index, records=quote(batch))] = index
        future = next(as_completed(list(running)))
        index = running.pop(future)
        try:
            summary = _checked_result(config, plan, shard_task, future, index)
        except Exception as error:
            logger.error("shard %06d failed: %s: %s", index, type(error).__name__, error)
            failed[index] = error
            continue
        summaries.append(summary)
        update_progress_artifact(progress, 100.0 * len(summaries) / total)
        bar.advance(images[index], postfix=f"{len(summaries)}/{len(plan.jobs())} shards")
    bar.close(failed=bool(failed))
    return summaries, failed


def _checked_result(config: BuildConfig, plan: Plan, shard_task, future, index: int) -> ShardSummary:
    summary = future.result()
    # A shard just built was hashed as it was written; only a cached result needs checking.
    if future.state.name == "Cached" and not shard_is_intact(config, summary):
        get_run_logger().warning("%s: cached result does not match the file on disk; building it again", summary.shard)
        summary = shard_task.with_options(refresh_cache=True)(
            config=config, index=index, records=quote(plan.jobs()[index]))
    return summary


# --- on the configuration's task runner: threads, Dask or Ray -----------------------------------

def loads_models(config: BuildConfig) -> bool:
    """Whether a stage's backend is a model (so the GPU-tagged shard task asks for a GPU on a cluster)."""
    return any(config.backend(stage) in MODEL_BACKENDS for stage in ("captions", "nouns", "grounding"))


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser().resolve()


def _absolute_dataset(dataset: str | None) -> str | None:
    """``source.dataset`` with its local path absolute (a hub name, not a folder here, is kept)."""
    if not dataset:
        return dataset
    kind, _, location = dataset.partition(":")
    path, hash_sign, split = location.partition("#") if kind == "hf" else (location, "", "")
    if kind == "hf" and not Path(path).expanduser().exists():
        return dataset
    return f"{kind}:{os.path.abspath(os.path.expanduser(path))}{hash_sign}{split}"


def for_workers(config: BuildConfig) -> BuildConfig:
    """The configuration as workers elsewhere need it: absolute paths (their working folder is not
    ours), and enough shards in flight for the cluster (it, not BuildConfig.workers, bounds how many
    run at once). Neither is part of the dataset's identity."""
    if not config.runner.distributed:
        return config
    source = config.source.model_copy(update={k: _absolute(getattr(config.source, k))
                                              for k in ("images_dir", "captions_json", "instances_json")})
    source = source.model_copy(update={"dataset": _absolute_dataset(source.dataset)})
    output = config.output.model_copy(update={"out_dir": _absolute(config.output.out_dir)})
    selection = config.selection.model_copy(update={"vsr_files": [_absolute(p) for p in config.selection.vsr_files]})
    grounding = config.grounding.model_copy(update={"noun_table": _absolute(config.grounding.noun_table)})
    in_flight = MAX_IN_FLIGHT if not config.runner.processes else min(MAX_IN_FLIGHT, 2 * config.runner.processes)
    return config.model_copy(update={"source": source, "output": output, "selection": selection,
                                     "grounding": grounding, "workers": max(config.workers, in_flight)})


def build_on_runner(config: BuildConfig) -> dict[str, Any]:
    """Build on the configuration's runner (what `tokencompose build` and the deployments run)."""
    config = for_workers(config)
    task_runner = make_task_runner(config.runner, config.output.out_dir, gpu_tasks=loads_models(config))
    flow_on_runner = build_grounded_coco if task_runner is None else build_grounded_coco.with_options(
        task_runner=task_runner)
    return flow_on_runner(config=config)


@flow(name="build-grounded-coco-on-runner", log_prints=True, validate_parameters=True)
def build_grounded_coco_on_runner(config: BuildConfig) -> dict[str, Any]:
    """For deployments: build-grounded-coco as a subflow on ``config.runner`` (Dask or Ray)."""
    return build_on_runner(config)
