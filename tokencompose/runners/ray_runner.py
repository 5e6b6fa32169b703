"""prefect-ray's task runner with the checks of :mod:`tokencompose.runners.checks`."""
from __future__ import annotations

import secrets
from typing import Any

import ray
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tokencompose.runners.checks import CheckedRunner, RunnerChecks, check_probes, prepare_folder, write_probe
from tokencompose.schemas.runner import RunnerConfig, RunnerError


class CheckedRayTaskRunner(CheckedRunner, RayTaskRunner):
    """prefect-ray's runner, plus the shared-folder check on start and ``num_gpus`` for GPU-tagged tasks."""

    __hash__ = RayTaskRunner.__hash__

    def __enter__(self):
        try:
            super().__enter__()
        except ConnectionError as error:
            raise RunnerError(f"cannot reach the Ray cluster at {self.address}: {error}") from error
        return self

    def _check_cluster(self) -> None:
        if self.checks is None or ray.get_runtime_context().worker.mode != ray.SCRIPT_MODE:  # inside a Ray worker
            return
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if not nodes:
            raise RunnerError("the Ray cluster has no live node")
        gpus = [float(n.get("Resources", {}).get("GPU", 0)) for n in nodes]
        self.settle_gpus(sum(gpus), max(gpus, default=0), "the Ray cluster")
        folder = prepare_folder(self.checks.shared_dir)
        token = secrets.token_hex(8)
        probe = ray.remote(num_cpus=0, max_retries=0)(write_probe)
        refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                                           ).remote(str(folder), token) for n in nodes}
        results: dict[str, Any] = {}
        for node, ref in refs.items():
            try:
                results[node] = ray.get(ref, timeout=self.checks.wait_for_workers_s)
            except Exception as error:  # RayTaskError wraps the worker's OSError; GetTimeoutError
                results[node] = getattr(error, "cause", None) or error
        check_probes(folder, results)

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        gpus = self.gpus_for(task)
        if not gpus:
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
        with remote_options(num_gpus=gpus):  # prefect-ray's documented way to give a task Ray options
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)


def ray_task_runner(runner: RunnerConfig, checks: RunnerChecks) -> CheckedRayTaskRunner:
    if runner.ray_address:
        return CheckedRayTaskRunner(address=runner.ray_address, checks=checks)
    init_kwargs: dict[str, Any] = {"include_dashboard": False}
    if runner.processes:
        init_kwargs["num_cpus"] = runner.processes
    return CheckedRayTaskRunner(init_kwargs=init_kwargs, checks=checks)
