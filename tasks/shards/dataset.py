"""The build's sequence, once: lock the output folder, plan, mark the folder, build the shards, write
the reports (or, when shards failed, the reports of the shards done and incomplete.json).

How the shards get built is passed in: the Prefect flow (flows/build.py) submits one task per shard;
:func:`build_directly` maps them one after the other in this process (``tokencompose build
--no-prefect``, benchmarks, debugging). The steps are in their own modules: ``output`` (the folder
and its lock), ``planning``, ``finalize`` (the reports), ``versions``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import ShardStats, ShardSummary
from tokencompose.tasks.models import backends as backend_registry
from tokencompose.tasks.progress import Progress
from tokencompose.tasks.shards.build import build_shard
from tokencompose.tasks.shards.finalize import build_failed, finalize, identity_provenance
from tokencompose.tasks.shards.identity import build_identity
from tokencompose.tasks.shards.output import output_lock, start_output
from tokencompose.tasks.shards.planning import Plan, check_repairs, plan

# The shards built (or found cached) and the failures by shard number.
ShardResults = tuple[list[ShardSummary], dict[int, BaseException]]
# Builds every job of a plan, given the build identity; after a failure it starts no new shard.
ShardRunner = Callable[[Plan, dict[str, Any]], ShardResults]


@dataclass
class BuiltDataset:
    """A finished build: its plan, the shards this run built (or found cached), the dataset's stats."""

    plan: Plan
    summaries: list[ShardSummary]
    stats: ShardStats


def build_dataset(config: BuildConfig, run_shards: ShardRunner) -> BuiltDataset:
    """The whole build with ``run_shards`` building the planned shards. Raises ConfigurationError before
    anything is written, BuildFailed after writing the reports of what was done."""
    with output_lock(config.output.out_dir):
        run_plan = plan(config)
        start_output(config, run_plan.config_hash)
        # Identity without loading a model: what, besides the records, decides the shards' bytes.
        identity = build_identity(config)
        summaries, failed = run_shards(run_plan, identity)
        failed = failed or check_repairs(run_plan, summaries)
        if failed:
            raise build_failed(run_plan, summaries, failed) from failed[min(failed)]
        # The provenance comes from the shard summaries: no backend is loaded here.
        stats = finalize(run_plan, summaries, identity_provenance(run_plan.config_hash, identity))
    return BuiltDataset(run_plan, summaries, stats)


def serial_shards(on_shard: Callable[[ShardSummary], None] | None = None) -> ShardRunner:
    """Build the plan's shards one after the other in this process, the models loaded once; the
    first failure ends the map."""

    def run(run_plan: Plan, identity: dict[str, Any]) -> ShardResults:
        summaries: list[ShardSummary] = []
        jobs = run_plan.jobs()
        if not jobs:
            return summaries, {}
        config = run_plan.config
        backends = backend_registry.load_backends(config)
        provenance = backends.provenance(run_plan.config_hash, identity)
        with Progress("build", total=sum(len(batch) for batch in jobs.values()), unit="image") as bar:
            for index, batch in sorted(jobs.items()):
                try:
                    summaries.append(build_shard(config, backends, provenance, index, batch))
                except Exception as error:
                    bar.close(failed=True)
                    return summaries, {index: error}
                bar.advance(len(batch), postfix=f"{len(summaries)}/{len(jobs)} shards")
                if on_shard:
                    on_shard(summaries[-1])
        return summaries, {}

    return run


def build_directly(config: BuildConfig, on_shard: Callable[[ShardSummary], None] | None = None) -> ShardStats:
    """The whole build without Prefect (for benchmarks and debugging): same plan, shards and files."""
    return build_dataset(config, serial_shards(on_shard)).stats
