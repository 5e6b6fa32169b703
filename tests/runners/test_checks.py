"""The runners without a cluster: what a runner carries through Prefect's duplicate(), which tasks ask
for GPUs, and quoted parameters surviving the pickling a Dask or Ray worker needs."""
from __future__ import annotations

import pickle

import cloudpickle
import pytest
from prefect import task
from prefect.utilities.annotations import quote

from tokencompose.runners import make_task_runner
from tokencompose.runners.checks import RunnerChecks, gpus_to_ask
from tokencompose.schemas.runner import GPU_TAG, RunnerConfig, RunnerError


@task(name="loads-a-model", tags={GPU_TAG})
def gpu_task() -> None:
    pass


@task(name="generate")
def plain_task() -> None:
    pass


def test_threads_need_no_runner(tmp_path):
    assert make_task_runner(RunnerConfig(), tmp_path) is None


def test_duplicate_keeps_the_engine_settings_and_the_checks(tmp_path):
    runner = make_task_runner(RunnerConfig(kind="dask", processes=3, gpus_per_task=2), tmp_path, gpu_tasks=True)
    twin = runner.duplicate()
    assert type(twin) is type(runner) and twin == runner
    assert twin.cluster_kwargs["n_workers"] == 3 and twin.cluster_class == "distributed.LocalCluster"
    assert twin.checks == RunnerChecks(shared_dir=str(tmp_path), gpu_tasks=True, gpus_per_task=2,
                                       wait_for_workers_s=120.0)
    other = make_task_runner(RunnerConfig(kind="dask", processes=3, gpus_per_task=2), tmp_path / "x", gpu_tasks=True)
    assert other != runner, "another shared folder is another runner"


def test_only_gpu_tagged_tasks_ask_for_the_gpus_the_cluster_check_settled(tmp_path):
    runner = make_task_runner(RunnerConfig(dask_address="tcp://127.0.0.1:8786"), tmp_path, gpu_tasks=True)
    assert runner.gpus_for(gpu_task) == 0, "nothing asked before the cluster was checked"
    runner.settle_gpus(cluster_gpus=2, per_worker_max=1, where="a test cluster")
    assert (runner.gpus_for(gpu_task), runner.gpus_for(plain_task)) == (1, 0)
    assert runner.gpus_for(gpu_task.with_options(name="renamed")) == 1, "the tag, not the name"


@pytest.mark.parametrize("gpu_tasks, wanted, cluster, per_worker, expected", [
    (False, None, 4, 1, 0),   # the run loads no model (offline profile)
    (True, 0, 4, 1, 0),       # never ask
    (True, None, 0, 0, 0),    # a CPU cluster runs the models on CPUs
    (True, None, 4, 1, 1),
    (True, 2, 4, 2, 2),
])
def test_gpus_to_ask(gpu_tasks, wanted, cluster, per_worker, expected):
    checks = RunnerChecks(shared_dir="/x", gpu_tasks=gpu_tasks, gpus_per_task=wanted)
    assert gpus_to_ask(checks, cluster, per_worker, "c") == expected


def test_more_gpus_than_any_worker_has_is_refused():
    with pytest.raises(RunnerError, match=f"tasks tagged '{GPU_TAG}' ask for 2 GPU"):
        gpus_to_ask(RunnerChecks(shared_dir="/x", gpu_tasks=True, gpus_per_task=2), 4, 1, "c")


@pytest.mark.parametrize("dumps, loads", [(pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)])
def test_a_quoted_parameter_survives_pickling_once_a_cluster_runner_exists(tmp_path, dumps, loads):
    records = [{"id": 1, "polygon": [[0.0, 1.0, 2.0]]}]
    make_task_runner(RunnerConfig(kind="dask", processes=1), tmp_path)
    back = loads(dumps(quote(records)))
    assert type(back) is quote and back.unquote() == records
    assert loads(dumps(loads(dumps(quote(records))))).unquote() == records, "any number of times"
