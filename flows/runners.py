"""Run the flows' tasks on Dask or Ray through Prefect's own task runners (prefect-dask, prefect-ray).

Nothing here schedules, moves data or restarts work: the engines do. This module only

* turns a :class:`~tokencompose.schemas.runner.RunnerConfig` into a task runner
  (``DaskTaskRunner`` on a new ``distributed.LocalCluster`` of worker processes or on an existing
  scheduler; ``RayTaskRunner`` on a local Ray or an existing cluster);
* checks, once the cluster is up and before any task, that every worker can write to the output
  folder and that the flow's process sees what it wrote there (a shared filesystem): each worker
  writes a probe file, this process reads and removes it; a worker that cannot fails the run with
  one clear message (:class:`RunnerError`);
* asks for GPUs for the tasks that load models (Dask worker resource ``GPU``, Ray ``num_gpus``), so
  each GPU holds one model replica and several GPUs work in parallel.

The runner is not part of the dataset (``BuildConfig.content_dict`` leaves it out): the shards are
the same bytes whichever runner built them. See docs/scale-out.md.
"""
from __future__ import annotations

import os
import secrets
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.evaluation import EvaluateConfig
from tokencompose.schemas.runner import RunnerConfig, RunnerError

# Backends that load a model (on a GPU when there is one); the offline ones (consensus, spacy, coco) do not.
MODEL_BACKENDS = frozenset({"clip", "flair", "grounded_sam", "hybrid"})
BUILD_MODEL_TASKS = frozenset({"build-shard"})
EVALUATE_MODEL_TASKS = frozenset({"generate", "detect"})
PROBE_PREFIX = ".tokencompose-probe-"
# Shards in flight when the cluster bounds the concurrency (BuildConfig.workers caps at 64).
MAX_IN_FLIGHT = 64


def build_model_tasks(config: BuildConfig) -> frozenset[str]:
    """The build's tasks that load models: the shard task when a stage's backend is a model."""
    uses_models = any(config.backend(stage) in MODEL_BACKENDS for stage in ("captions", "nouns", "grounding"))
    return BUILD_MODEL_TASKS if uses_models else frozenset()


class PicklableQuote(quote):
    """Prefect's ``quote`` that survives pickling. prefect 3.8.8's annotations are tuple subclasses
    without ``__getnewargs__``, so a pickled ``quote(x)`` comes back as ``quote((x,))`` and the task
    receives ``(x,)``: what happens to every quoted parameter crossing to a Dask or Ray worker
    (the threads runner never pickles). This one pickles as ``PicklableQuote(x)``, any number of times."""

    __slots__ = ()

    def __getnewargs__(self) -> tuple[Any]:
        return (self.value,)


def picklable_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The task's parameters with each top-level ``quote`` made picklable (see PicklableQuote)."""
    return {name: PicklableQuote(value.value) if type(value) is quote else value for name, value in parameters.items()}


# --- the probe: runs on a worker --------------------------------------------------------------

def write_probe(folder: str, token: str) -> dict[str, str]:
    """On a worker: write a probe file into ``folder`` (read it back); the flow's process checks it
    sees the same file and removes it. Returns where the worker wrote, and from which host."""
    host = socket.gethostname()
    path = Path(folder) / f"{PROBE_PREFIX}{token}-{host}-{os.getpid()}"
    payload = f"{token} {host} {os.getpid()}"
    path.write_text(payload)
    if path.read_text() != payload:
        raise OSError(f"{path}: read back differs from what was written")
    return {"path": str(path), "payload": payload, "host": host}


def _check_probes(folder: Path, results: dict[str, Any]) -> None:
    """In the flow's process: every worker's probe must be visible here with its content; all removed."""
    problems = []
    try:
        for worker, result in sorted(results.items()):
            if isinstance(result, BaseException):
                problems.append(f"worker {worker} cannot write {folder}: {type(result).__name__}: {result}")
                continue
            path = Path(result["path"])
            seen = path.read_text() if path.is_file() else None
            if path.parent.resolve() != folder.resolve() or seen != result["payload"]:
                problems.append(f"worker {worker} (host {result['host']}) wrote {path}, which this process "
                                f"does not see in {folder}: not the same filesystem")
    finally:
        for stale in folder.glob(PROBE_PREFIX + "*"):
            stale.unlink(missing_ok=True)
    if problems:
        raise RunnerError("the output folder must be on a filesystem every worker shares (NFS, Lustre, a "
                          "mounted volume; same path everywhere):\n  - " + "\n  - ".join(problems))


def _prepare_folder(folder: Path) -> Path:
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _gpus_to_ask(wanted: int | None, cluster_gpus: float, per_worker_max: float, model_tasks: frozenset[str],
                 where: str) -> int:
    if not model_tasks or wanted == 0:
        return 0
    if wanted is None:
        return 1 if cluster_gpus > 0 else 0
    if per_worker_max < wanted:
        raise RunnerError(f"the model tasks ({', '.join(sorted(model_tasks))}) ask for {wanted} GPU(s) each, but "
                          f"no worker of {where} has that many (most per worker: {per_worker_max:g}); start workers "
                          "with GPU resources (dask worker --resources GPU=1, ray start --num-gpus 1) or set "
                          "runner.gpus_per_task 0")
    return wanted


# --- Dask -------------------------------------------------------------------------------------

def _inside_dask_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


class _RunnerChecks:
    """What both engines' runners add to Prefect's: the shared folder to probe, the model tasks and
    the GPUs to ask for them."""

    def __init__(self, *, shared_dir: str, model_tasks: Iterable[str] = (), gpus_per_task: int | None = None,
                 wait_for_workers_s: float = 120.0, **kwargs: Any):
        super().__init__(**kwargs)  # the engine's runner, next in the method resolution order
        self.shared_dir = str(shared_dir)
        self.model_tasks = frozenset(model_tasks)
        self.gpus_per_task = gpus_per_task
        self.wait_for_workers_s = wait_for_workers_s
        self.gpus_asked = 0

    def _check_settings(self) -> dict[str, Any]:
        return {"shared_dir": self.shared_dir, "model_tasks": self.model_tasks, "gpus_per_task": self.gpus_per_task,
                "wait_for_workers_s": self.wait_for_workers_s}

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and getattr(other, "shared_dir", None) == self.shared_dir


def _dask_runner_class():
    from prefect_dask import DaskTaskRunner

    class CheckedDaskTaskRunner(_RunnerChecks, DaskTaskRunner):
        """prefect-dask's runner, plus the shared-folder check on start and GPU resources for model tasks."""

        def duplicate(self):
            return type(self)(**self._check_settings(), address=self.address, cluster_class=self.cluster_class,
                              cluster_kwargs=self.cluster_kwargs, adapt_kwargs=self.adapt_kwargs,
                              client_kwargs=self.client_kwargs, performance_report_path=self.performance_report_path)

        __hash__ = DaskTaskRunner.__hash__

        def __enter__(self):
            super().__enter__()
            try:
                self._check_cluster()
            except BaseException:
                self.__exit__(*sys.exc_info())
                raise
            return self

        def _check_cluster(self) -> None:
            if _inside_dask_worker():  # a task's own engine re-enters the runner on its worker: checked already
                return
            try:
                client = self.client
            except OSError as error:  # distributed's connection timeouts and refusals
                raise RunnerError(f"cannot reach the Dask scheduler at {self.address}: {error}") from error
            try:
                client.wait_for_workers(1, timeout=self.wait_for_workers_s)
            except Exception as error:  # distributed's TimeoutError
                raise RunnerError(f"no Dask worker joined {client.scheduler.address} within "
                                  f"{self.wait_for_workers_s:g} s") from error
            workers = client.scheduler_info(n_workers=-1)["workers"]
            gpus = [float(w.get("resources", {}).get("GPU", 0)) for w in workers.values()]
            self.gpus_asked = _gpus_to_ask(self.gpus_per_task, sum(gpus), max(gpus, default=0), self.model_tasks,
                                           f"the Dask cluster at {client.scheduler.address}")
            folder = _prepare_folder(Path(self.shared_dir))
            token = secrets.token_hex(8)
            results = client.run(write_probe, str(folder), token, on_error="return")
            _check_probes(folder, results)

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            parameters = picklable_parameters(parameters)
            if self.gpus_asked and task.name in self.model_tasks:
                import dask

                with dask.annotate(resources={"GPU": self.gpus_asked}):
                    return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)

    return CheckedDaskTaskRunner


def local_gpu_count() -> int:
    """GPUs this process sees (CUDA_VISIBLE_DEVICES respected); 0 without torch or CUDA."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def dask_task_runner(runner: RunnerConfig, shared_dir: Path, model_tasks: frozenset[str]):
    cls = _dask_runner_class()
    common = dict(shared_dir=str(shared_dir), model_tasks=model_tasks, gpus_per_task=runner.gpus_per_task,
                  wait_for_workers_s=runner.probe_timeout_s)
    if runner.dask_address:
        return cls(address=runner.dask_address, **common)
    gpus = local_gpu_count() if model_tasks and runner.gpus_per_task != 0 else 0
    processes = runner.processes or (gpus if gpus else os.cpu_count() or 1)
    cluster_kwargs: dict[str, Any] = {"n_workers": processes, "threads_per_worker": 1, "processes": True,
                                      "dashboard_address": None}
    if gpus:
        # One GPU per worker process as a Dask resource: a model task (GPU=1) then runs on a worker
        # holding one. Which device each worker opens is CUDA_VISIBLE_DEVICES's business (dask-cuda's
        # LocalCUDACluster sets it per worker; see docs/scale-out.md).
        cluster_kwargs["resources"] = {"GPU": 1}
    return cls(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs, **common)


# --- Ray --------------------------------------------------------------------------------------

def _ray_runner_class():
    from prefect_ray import RayTaskRunner

    class CheckedRayTaskRunner(_RunnerChecks, RayTaskRunner):
        """prefect-ray's runner, plus the shared-folder check on start and num_gpus for model tasks."""

        def duplicate(self):
            return type(self)(**self._check_settings(), address=self.address, init_kwargs=self.init_kwargs)

        __hash__ = RayTaskRunner.__hash__

        def __enter__(self):
            try:
                super().__enter__()
            except ConnectionError as error:
                raise RunnerError(f"cannot reach the Ray cluster at {self.address}: {error}") from error
            try:
                self._check_cluster()
            except BaseException:
                self.__exit__(*sys.exc_info())
                raise
            return self

        def _check_cluster(self) -> None:
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            if ray.get_runtime_context().worker.mode != ray.SCRIPT_MODE:  # inside a Ray worker: checked already
                return
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            if not nodes:
                raise RunnerError("the Ray cluster has no live node")
            gpus = [float(n.get("Resources", {}).get("GPU", 0)) for n in nodes]
            self.gpus_asked = _gpus_to_ask(self.gpus_per_task, sum(gpus), max(gpus, default=0), self.model_tasks,
                                           "the Ray cluster")
            folder = _prepare_folder(Path(self.shared_dir))
            token = secrets.token_hex(8)
            probe = ray.remote(num_cpus=0, max_retries=0)(write_probe)
            refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                                               ).remote(str(folder), token) for n in nodes}
            results: dict[str, Any] = {}
            for node, ref in refs.items():
                try:
                    results[node] = ray.get(ref, timeout=self.wait_for_workers_s)
                except Exception as error:  # RayTaskError wraps the worker's OSError; GetTimeoutError
                    results[node] = getattr(error, "cause", None) or error
            _check_probes(folder, results)

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            parameters = picklable_parameters(parameters)
            if self.gpus_asked and task.name in self.model_tasks:
                from prefect_ray.context import remote_options

                with remote_options(num_gpus=self.gpus_asked):
                    return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)

    return CheckedRayTaskRunner


def ray_task_runner(runner: RunnerConfig, shared_dir: Path, model_tasks: frozenset[str]):
    cls = _ray_runner_class()
    common = dict(shared_dir=str(shared_dir), model_tasks=model_tasks, gpus_per_task=runner.gpus_per_task,
                  wait_for_workers_s=runner.probe_timeout_s)
    if runner.ray_address:
        return cls(address=runner.ray_address, **common)
    init_kwargs: dict[str, Any] = {"include_dashboard": False}
    if runner.processes:
        init_kwargs["num_cpus"] = runner.processes
    return cls(init_kwargs=init_kwargs, **common)


# --- the flows on a runner --------------------------------------------------------------------

def make_task_runner(runner: RunnerConfig, shared_dir: Path, model_tasks: Iterable[str] = ()):
    """The Prefect task runner for ``runner``; None for threads (the flow's own default)."""
    model_tasks = frozenset(model_tasks)
    if runner.kind == "dask":
        return dask_task_runner(runner, shared_dir, model_tasks)
    if runner.kind == "ray":
        return ray_task_runner(runner, shared_dir, model_tasks)
    return None


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser().resolve()


def for_workers(config: BuildConfig) -> BuildConfig:
    """The configuration as workers elsewhere need it: absolute paths (their working folder is not
    ours), and enough shards in flight for the cluster (it, not BuildConfig.workers, bounds how many
    run at once). Neither is part of the dataset's identity."""
    if not config.runner.distributed:
        return config
    source = config.source.model_copy(update={k: _absolute(getattr(config.source, k))
                                              for k in ("images_dir", "captions_json", "instances_json")})
    output = config.output.model_copy(update={"out_dir": _absolute(config.output.out_dir)})
    selection = config.selection.model_copy(update={"vsr_files": [_absolute(p) for p in config.selection.vsr_files]})
    grounding = config.grounding.model_copy(update={"noun_table": _absolute(config.grounding.noun_table)})
    in_flight = MAX_IN_FLIGHT if not config.runner.processes else min(MAX_IN_FLIGHT, 2 * config.runner.processes)
    return config.model_copy(update={"source": source, "output": output, "selection": selection,
                                     "grounding": grounding, "workers": max(config.workers, in_flight)})


def build_flow(config: BuildConfig):
    """build-grounded-coco with the configuration's task runner."""
    from tokencompose.flows.build import build_grounded_coco

    task_runner = make_task_runner(config.runner, config.output.out_dir, build_model_tasks(config))
    return build_grounded_coco if task_runner is None else build_grounded_coco.with_options(task_runner=task_runner)


def run_build(config: BuildConfig) -> dict[str, Any]:
    """Build on the configuration's runner (what `tokencompose build` and the deployment run)."""
    config = for_workers(config)
    return build_flow(config)(config=config)


def evaluate_flow(config: EvaluateConfig):
    """evaluate-multigen with the configuration's task runner."""
    from tokencompose.flows.evaluate import evaluate_multigen

    task_runner = make_task_runner(config.runner, Path(config.out_dir), EVALUATE_MODEL_TASKS)
    return evaluate_multigen if task_runner is None else evaluate_multigen.with_options(task_runner=task_runner)


def run_evaluate(config: EvaluateConfig) -> dict[str, Any]:
    if config.runner.distributed:
        config = config.model_copy(update={"out_dir": _absolute(config.out_dir)})
    return evaluate_flow(config)(config=config)


@flow(name="build-grounded-coco-on-runner", log_prints=True, validate_parameters=True)
def build_grounded_coco_on_runner(config: BuildConfig) -> dict[str, Any]:
    """For deployments: build-grounded-coco as a subflow on ``config.runner`` (Dask or Ray)."""
    return run_build(config)


@flow(name="evaluate-multigen-on-runner", log_prints=False)
def evaluate_multigen_on_runner(config: EvaluateConfig) -> dict[str, Any]:
    """For deployments: evaluate-multigen as a subflow on ``config.runner``."""
    return run_evaluate(config)
