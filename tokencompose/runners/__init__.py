"""Prefect task runners on Dask or Ray (prefect-dask, prefect-ray), checked before any task runs.

A task-runner concern, not a flow: the flows take a task runner from :func:`make_task_runner` and
stay the same whichever engine runs their tasks. Nothing here schedules, moves data or restarts
work: the engines do. This package only

* turns a :class:`~tokencompose.schemas.runner.RunnerConfig` into a task runner
  (``DaskTaskRunner`` on a new ``distributed.LocalCluster`` of worker processes or on an existing
  scheduler; ``RayTaskRunner`` on a local Ray or an existing cluster);
* checks, once the cluster is up and before any task, that every worker can write to the output
  folder and that the flow's process sees what it wrote there (a shared filesystem; ``checks.py``);
* gives each task tagged :data:`~tokencompose.schemas.runner.GPU_TAG` its GPUs through the engine's
  own resource annotation (``dask.annotate(resources={"GPU": n})``, prefect-ray's
  ``remote_options(num_gpus=n)``), so each GPU holds one model replica and several GPUs work in parallel.

The runner is not part of the dataset (``BuildConfig.content_dict`` leaves it out): the shards are
the same bytes whichever runner built them. See docs/scale-out.md.
"""
from __future__ import annotations

import copyreg
from pathlib import Path
from typing import Any

from prefect.utilities.annotations import quote

from tokencompose.runners.checks import RunnerChecks
from tokencompose.schemas.runner import RunnerConfig


def _reduce_quote(value: Any) -> tuple[type, tuple[Any]]:
    return quote, (value.value,)


def make_task_runner(runner: RunnerConfig, shared_dir: Path, gpu_tasks: bool = False) -> Any:
    """The Prefect task runner for ``runner``; None for threads (the flow's own default).
    ``gpu_tasks``: whether this run's GPU-tagged tasks load models (so ask for GPUs, and size a new
    local cluster by the GPUs it has)."""
    if not runner.distributed:
        return None
    # prefect 3.8.8's annotations are tuple subclasses without __getnewargs__: a pickled quote(x)
    # comes back as quote((x,)) and the task receives the tuple (x,), which is what happens to every
    # quoted parameter sent to a Dask or Ray worker (threads never pickle). Neither Prefect nor
    # prefect-dask/prefect-ray offers a setting for it (prefect-dask issue #43 is this bug), so the
    # stdlib's copyreg says how to pickle a quote: quote(x), which the worker unwraps as Prefect does.
    copyreg.pickle(quote, _reduce_quote)
    checks = RunnerChecks(shared_dir=str(shared_dir), gpu_tasks=gpu_tasks, gpus_per_task=runner.gpus_per_task,
                          wait_for_workers_s=runner.probe_timeout_s)
    if runner.kind == "dask":
        from tokencompose.runners.dask_runner import dask_task_runner

        return dask_task_runner(runner, checks)
    from tokencompose.runners.ray_runner import ray_task_runner

    return ray_task_runner(runner, checks)
