"""What tokencompose adds to the engines' task runners: the shared-folder probe and the GPUs to ask.

Before any task, each worker writes a probe file into the output folder (read back); the flow's
process checks that it sees the same file and removes it. A worker that cannot fails the run with
one clear message (:class:`~tokencompose.schemas.runner.RunnerError`).
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tokencompose.schemas.runner import GPU_TAG, RunnerError

PROBE_PREFIX = ".tokencompose-probe-"


@dataclass(frozen=True)
class RunnerChecks:
    """The settings both engines' runners add to Prefect's: the folder every worker must share,
    whether the GPU-tagged tasks load models, the GPUs each asks for (None: 1 when the cluster has
    GPUs) and how long to wait for a first worker."""

    shared_dir: str
    gpu_tasks: bool = False
    gpus_per_task: int | None = None
    wait_for_workers_s: float = 120.0


class CheckedRunner:
    """Mixed in before an engine's task runner: its checks, and the GPUs of GPU-tagged tasks.

    ``checks`` None is the engine's runner as it is: ``duplicate`` (which Prefect calls to start a
    flow run's own runner) lets the engine copy its own settings, then hands the checks over."""

    def __init__(self, *, checks: RunnerChecks | None = None, **engine_settings: Any):
        super().__init__(**engine_settings)  # the engine's runner, next in the method resolution order
        self.checks = checks
        self.gpus_asked = 0

    def duplicate(self) -> Any:
        twin = super().duplicate()  # type: ignore[misc]
        twin.checks = self.checks
        return twin

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and getattr(other, "checks", None) == self.checks

    _check_cluster: Callable[[], None]  # each engine's checks of its cluster, run once the engine has started

    def __enter__(self):
        super().__enter__()
        try:
            self._check_cluster()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def gpus_for(self, task: Any) -> int:
        """The GPUs ``task`` asks for: those the cluster check settled on, for a GPU-tagged task."""
        return self.gpus_asked if GPU_TAG in task.tags else 0

    def settle_gpus(self, cluster_gpus: float, per_worker_max: float, where: str) -> None:
        assert self.checks is not None
        self.gpus_asked = gpus_to_ask(self.checks, cluster_gpus, per_worker_max, where)


def gpus_to_ask(checks: RunnerChecks, cluster_gpus: float, per_worker_max: float, where: str) -> int:
    wanted = checks.gpus_per_task
    if not checks.gpu_tasks or wanted == 0:
        return 0
    if wanted is None:
        return 1 if cluster_gpus > 0 else 0
    if per_worker_max < wanted:
        raise RunnerError(f"the tasks tagged {GPU_TAG!r} ask for {wanted} GPU(s) each, but no worker of {where} "
                          f"has that many (most per worker: {per_worker_max:g}); start workers with GPU resources "
                          "(dask worker --resources GPU=1, ray start --num-gpus 1) or set runner.gpus_per_task 0")
    return wanted


def local_gpu_count() -> int:
    """GPUs this process sees (CUDA_VISIBLE_DEVICES respected); 0 without torch or CUDA."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


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


def check_probes(folder: Path, results: dict[str, Any]) -> None:
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


def prepare_folder(folder: str) -> Path:
    path = Path(folder).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
