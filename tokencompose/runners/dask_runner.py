"""prefect-dask's task runner with the checks of :mod:`tokencompose.runners.checks`."""
from __future__ import annotations

import os
import secrets
from typing import Any

import dask
from distributed import get_worker
from prefect_dask import DaskTaskRunner

from tokencompose.runners.checks import CheckedRunner, RunnerChecks, check_probes, local_gpu_count, prepare_folder, \
    write_probe
from tokencompose.schemas.runner import RunnerConfig, RunnerError


def _inside_dask_worker() -> bool:
    try:
        get_worker()
    except ValueError:
        return False
    return True


class CheckedDaskTaskRunner(CheckedRunner, DaskTaskRunner):
    """prefect-dask's runner, plus the shared-folder check on start and the Dask resource ``GPU`` for
    GPU-tagged tasks."""

    __hash__ = DaskTaskRunner.__hash__

    def _check_cluster(self) -> None:
        if self.checks is None or _inside_dask_worker():  # a task's own engine re-enters the runner on its worker
            return
        try:
            client = self.client
        except OSError as error:  # distributed's connection timeouts and refusals
            raise RunnerError(f"cannot reach the Dask scheduler at {self.address}: {error}") from error
        try:
            client.wait_for_workers(1, timeout=self.checks.wait_for_workers_s)
        except Exception as error:  # distributed's TimeoutError
            raise RunnerError(f"no Dask worker joined {client.scheduler.address} within "
                              f"{self.checks.wait_for_workers_s:g} s") from error
        workers = client.scheduler_info(n_workers=-1)["workers"]
        gpus = [float(w.get("resources", {}).get("GPU", 0)) for w in workers.values()]
        self.settle_gpus(sum(gpus), max(gpus, default=0), f"the Dask cluster at {client.scheduler.address}")
        folder = prepare_folder(self.checks.shared_dir)
        results = client.run(write_probe, str(folder), secrets.token_hex(8), on_error="return")
        check_probes(folder, results)

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        gpus = self.gpus_for(task)
        if not gpus:
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
        with dask.annotate(resources={"GPU": gpus}):  # prefect-dask's documented way to ask for resources
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)


def dask_task_runner(runner: RunnerConfig, checks: RunnerChecks) -> CheckedDaskTaskRunner:
    if runner.dask_address:
        return CheckedDaskTaskRunner(address=runner.dask_address, checks=checks)
    gpus = local_gpu_count() if checks.gpu_tasks and runner.gpus_per_task != 0 else 0
    processes = runner.processes or (gpus if gpus else os.cpu_count() or 1)
    cluster_kwargs: dict[str, Any] = {"n_workers": processes, "threads_per_worker": 1, "processes": True,
                                      "dashboard_address": None}
    if gpus:
        # One GPU per worker process as a Dask resource: a GPU task (GPU=1) then runs on a worker
        # holding one. Which device each worker opens is CUDA_VISIBLE_DEVICES's business (dask-cuda's
        # LocalCUDACluster sets it per worker; see docs/scale-out.md).
        cluster_kwargs["resources"] = {"GPU": 1}
    return CheckedDaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs,
                                 checks=checks)
