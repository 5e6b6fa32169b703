"""build-grounded-coco on Dask and Ray (prefect-dask, prefect-ray, through tokencompose/runners/): the
same bytes as the local threads; GPU-tagged tasks ask for their GPUs; the shared-folder check.

Real engines only: a ``distributed.LocalCluster`` of 2 worker processes, a local Ray, a real Prefect
API (the ``prefect_api`` fixture) and real tars. The source is the bundled sample replicated to 64
images (16 shards of 4: enough shards that a worker can be killed mid-run, few images each).
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from tokencompose.data.replicate import replicate_sample
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.runner import GPU_TAG, RunnerConfig, RunnerError

COPIES, SHARD_SIZE = 8, 4  # 64 images, 56 samples in 16 shards


def _dataset_bytes(out: Path) -> dict[str, bytes]:
    """Every file of the dataset but config.json (it records the run's own settings: out_dir, runner)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file() and ".cache" not in p.parts and not p.name.startswith(".")}
    files.pop("config.json")
    return files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config(source: dict, out: Path, **runner) -> BuildConfig:
    return BuildConfig.model_validate({"source": source, "output": {"out_dir": str(out), "shard_size": SHARD_SIZE},
                                       "runner": runner})


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    return replicate_sample(tmp_path_factory.mktemp("source"), COPIES)


@pytest.fixture(scope="module")
def reference(prefect_api, source, tmp_path_factory) -> dict[str, bytes]:
    """The dataset as the local threads runner (the default) builds it."""
    from tokencompose.flows.build import build_on_runner

    out = tmp_path_factory.mktemp("threads") / "out"
    build_on_runner(_config(source, out))
    files = _dataset_bytes(out)
    assert len([n for n in files if n.endswith(".tar")]) == 16
    return files


@pytest.fixture(scope="module")
def cluster():
    """A Dask cluster of 2 worker processes, one (pretend) GPU each as a worker resource."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      resources={"GPU": 1}) as local, Client(local) as client:
        client.wait_for_workers(2, timeout=120)
        yield local, client


# --- the configuration ------------------------------------------------------------------------

def test_runner_is_part_of_the_run_not_of_the_dataset(tmp_path):
    source = {"images_dir": str(tmp_path), "captions_json": str(tmp_path / "c.json")}
    threads = _config(source, tmp_path / "o")
    dask = _config(source, tmp_path / "o", dask_address="tcp://10.0.0.5:8786")
    ray = _config(source, tmp_path / "o", kind="ray", processes=4, gpus_per_task=1)
    assert dask.runner.kind == "dask", "an address implies its kind"
    assert threads.config_hash() == dask.config_hash() == ray.config_hash()
    assert "runner" not in threads.content_dict()


@pytest.mark.parametrize("fields, message", [
    ({"dask_address": "10.0.0.5:8786"}, "tcp://host:8786"),
    ({"dask_address": "tcp://host:99999"}, "tcp://host:8786"),
    ({"ray_address": "http://head:10001"}, "ray://host:10001"),
    ({"kind": "ray", "dask_address": "tcp://h:8786"}, "for runner.kind 'dask'"),
    ({"kind": "threads", "processes": 2}, "runner.processes"),
    ({"dask_address": "tcp://h:8786", "processes": 2}, "runner.processes"),
    ({"kind": "spark"}, "kind"),
])
def test_bad_runner_settings_are_refused(fields, message):
    with pytest.raises(ValidationError) as error:
        RunnerConfig.model_validate(fields)
    assert message in str(error.value)


def test_runner_flags_come_from_the_model(tmp_path, capsys):
    from tokencompose.cli import main, parser_for
    from tokencompose.cli.build import demo_preset
    from tokencompose.cli.options import config_from_args

    def build_config_from_args(args):
        return config_from_args(BuildConfig, args, demo_preset(args))

    args = parser_for("build").parse_args(["build", "--demo", "--out", str(tmp_path / "o"), "--runner-kind", "dask",
                                           "--processes", "2", "--runner.gpus-per-task", "0"])
    runner = build_config_from_args(args).runner
    assert (runner.kind, runner.processes, runner.gpus_per_task) == ("dask", 2, 0)
    args = parser_for("build").parse_args(["build", "--demo", "--out", str(tmp_path / "o"),
                                           "--ray-address", "ray://head:10001"])
    assert build_config_from_args(args).runner.kind == "ray"
    assert main(["build", "--demo", "--out", str(tmp_path / "o"), "--dask-address", "head:8786"]) == 2
    assert "runner.dask_address" in capsys.readouterr().err


# --- Dask -------------------------------------------------------------------------------------

@pytest.mark.cluster
def test_new_local_cluster_of_two_processes_builds_the_same_bytes(prefect_api, source, reference, tmp_path):
    from tokencompose.flows.build import build_on_runner

    out = tmp_path / "dask"
    summary = build_on_runner(_config(source, out, kind="dask", processes=2))
    assert summary["shards"] == 16
    built = _dataset_bytes(out)
    assert _sha(built["manifest.json"]) == _sha(reference["manifest.json"])
    assert {n: _sha(b) for n, b in built.items()} == {n: _sha(b) for n, b in reference.items()}


@pytest.mark.cluster
def test_a_worker_killed_mid_shard_ends_with_the_same_bytes(prefect_api, source, reference, cluster, tmp_path):
    """SIGKILL one worker process while it runs a shard: Dask runs that shard again on a worker
    still alive (its nanny also starts a new process); the dataset ends complete and identical."""
    from tokencompose.flows.build import build_on_runner

    local, client = cluster
    pids = client.run(os.getpid)
    out = tmp_path / "killed"
    shards = out / "shards"
    killed: dict = {}
    stop = threading.Event()

    def kill_once_a_shard_exists() -> None:
        deadline = time.monotonic() + 240
        while not stop.is_set() and time.monotonic() < deadline:
            if shards.is_dir() and any(shards.glob("*.tar")):
                busy = {w: keys for w, keys in client.processing().items() if keys and w in pids}
                if busy:
                    worker, keys = sorted(busy.items())[0]
                    killed.update(worker=worker, keys=list(keys), tars=len(list(shards.glob("*.tar"))),
                                  manifest=(out / "manifest.json").exists())
                    os.kill(pids[worker], signal.SIGKILL)
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_once_a_shard_exists, daemon=True)
    watcher.start()
    try:
        summary = build_on_runner(_config(source, out, dask_address=local.scheduler_address))
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert killed, "no worker was killed: the run ended before a shard was written?"
    assert not killed["manifest"] and killed["tars"] < 16, f"the kill must land mid-run: {killed}"
    assert summary["shards"] == 16
    # The shard that the killed worker was running went to the processing state a second time.
    story = client.story(*killed["keys"])
    assert sum(1 for event in story if event[2] == "processing") >= 2, story
    assert _dataset_bytes(out) == reference


@pytest.mark.cluster
def test_gpu_tagged_tasks_ask_for_one_gpu_each(prefect_api, cluster, tmp_path):
    """Tasks tagged GPU_TAG run holding the worker's GPU resource (so at most one per GPU); other
    tasks never ask for it, whatever their name."""
    import cloudpickle
    from distributed import get_worker
    from prefect import flow, task

    from tokencompose.runners import make_task_runner

    local, client = cluster
    client.wait_for_workers(2, timeout=120)  # the killed worker's nanny restarts it

    @task(name="uses-a-model", tags={GPU_TAG})
    def gpu_task(i: int) -> tuple[str, float]:
        worker = get_worker()
        time.sleep(0.3)  # overlap the tasks, so that two on one worker would have to share its GPU
        return worker.address, worker.state.available_resources["GPU"]

    @task(name="generate")  # a GPU task's name, without the tag: no GPU
    def cpu_task() -> float:
        return get_worker().state.available_resources["GPU"]

    runner = make_task_runner(RunnerConfig(dask_address=local.scheduler_address), tmp_path / "out", gpu_tasks=True)

    @flow(task_runner=runner)
    def gpu_flow():
        futures = [gpu_task.submit(i) for i in range(4)]
        return [f.result() for f in futures], cpu_task.submit().result()

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    try:
        placed, cpu_free = gpu_flow()
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert [free for _, free in placed] == [0.0] * 4, "a GPU task runs holding its worker's one GPU"
    assert len({address for address, _ in placed}) == 2, "both GPUs work"
    assert cpu_free == 1.0, "a task without the tag does not take the GPU"


@pytest.mark.cluster
def test_asking_for_more_gpus_than_a_worker_has_stops_before_work(prefect_api, source, cluster, tmp_path):
    from tokencompose.runners import make_task_runner

    local, _ = cluster
    runner = make_task_runner(RunnerConfig(dask_address=local.scheduler_address, gpus_per_task=2),
                              tmp_path / "out", gpu_tasks=True)
    with pytest.raises(RunnerError, match="ask for 2 GPU"):
        with runner:
            pass


def _can_mount_privately() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.cluster
@pytest.mark.skipif(not _can_mount_privately(), reason="needs `unshare -m` (root) to give a worker its own filesystem")
def test_a_worker_that_does_not_share_the_output_folder_stops_the_run_before_work(prefect_api, source, tmp_path):
    """One worker sees its own (tmpfs) folder where the output should be: the probe it writes is
    not seen by the flow's process, so the run stops with the reason before any shard."""
    from distributed import Client, LocalCluster

    from tokencompose.flows.build import build_on_runner

    shared = tmp_path / "shared"
    shared.mkdir()
    dask_command = str(Path(sys.executable).parent / "dask")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as local, \
            Client(local) as client:
        script = f"mount -t tmpfs tmpfs {shared} && exec {dask_command} worker {local.scheduler_address} " \
                 f"--nthreads 1 --no-dashboard --local-directory {tmp_path / 'scratch'}"
        worker = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            client.wait_for_workers(2, timeout=120)
            with pytest.raises(RunnerError, match="must be on a filesystem every worker shares"):
                build_on_runner(_config(source, shared / "out", dask_address=local.scheduler_address))
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=60)
    assert not (shared / "out" / "shards").exists(), "no shard was started"
    assert not list((shared / "out").glob(".tokencompose-probe-*")), "probe files are removed"


# --- Ray --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the Ray tests (starting one is the slow part), declaring 2 GPUs as resources."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, namespace="prefect")
    yield ray
    ray.shutdown()


@pytest.mark.cluster
def test_local_ray_builds_the_same_bytes(prefect_api, source, reference, local_ray, tmp_path):
    from tokencompose.flows.build import build_on_runner

    out = tmp_path / "ray"
    summary = build_on_runner(_config(source, out, kind="ray"))
    assert summary["shards"] == 16
    assert _dataset_bytes(out) == reference


@pytest.mark.cluster
def test_ray_gpu_tagged_tasks_ask_for_one_gpu_each(prefect_api, local_ray, tmp_path):
    """On a Ray that declares 2 GPUs, each GPU-tagged task is given exactly one; other tasks none."""
    import cloudpickle
    from prefect import flow, task

    from tokencompose.runners import make_task_runner

    ray = local_ray

    @task(name="uses-a-model", tags={GPU_TAG})
    def gpu_task(i: int) -> dict:
        return ray.get_runtime_context().get_assigned_resources()

    @task(name="detect")  # a GPU task's name, without the tag: no GPU
    def cpu_task() -> dict:
        return ray.get_runtime_context().get_assigned_resources()

    runner = make_task_runner(RunnerConfig(kind="ray"), tmp_path / "out", gpu_tasks=True)

    @flow(task_runner=runner)
    def gpu_flow():
        futures = [gpu_task.submit(i) for i in range(3)]
        return [f.result() for f in futures], cpu_task.submit().result()

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this test module
    try:
        placed, cpu = gpu_flow()
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert [p.get("GPU") for p in placed] == [1.0] * 3
    assert "GPU" not in cpu


@pytest.mark.cluster
def test_cli_answers_cannot_start_when_the_scheduler_is_unreachable(prefect_api, tmp_path):
    import socket

    from prefect.settings import PREFECT_API_URL

    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    run = subprocess.run([sys.executable, "-m", "tokencompose", "build", "--demo", "--out", str(tmp_path / "o"),
                          "--dask-address", f"tcp://127.0.0.1:{port}"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"cannot start on dask at tcp://127.0.0.1:{port}: cannot reach the Dask scheduler" in run.stderr
    assert not (tmp_path / "o" / "shards").exists()


# --- the edit flows (flows/edit.py) on Dask and Ray ----------------------------------------------

EDIT_SAMPLER = {"steps": 2, "strength": 1.0, "resolution": 32, "background": "paste", "batch_size": 2}
PIE_ITEMS = 5  # one-batch edit tasks of 2, 2 and 1 items on a cluster (batches_per_task 1)


def _edit_hashes(out: Path) -> dict[str, str]:
    """The sha256 of every file the edits wrote; edit.json without its configuration (it records the run's
    out_dir)."""
    import json

    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    info = json.loads(files.pop("edit/edit.json"))
    del info["config"]
    files["edit/edit.json (without config)"] = json.dumps(info, sort_keys=True).encode()
    return {name: _sha(data) for name, data in files.items()}


@pytest.fixture(scope="module")
def edit_inputs(tiny_sd, tmp_path_factory) -> dict:
    """An image and mask file for edit-images, and a PIE-Bench plan of a few images (built directly: the
    scorers' weights play no part in the edits)."""
    import numpy as np
    from PIL import Image

    from tokencompose.schemas.editing import EditConfig, PieBenchConfig
    from tokencompose.tasks.editing.pie_bench import PieItem
    from tokencompose.tasks.editing.run import PieBenchPlan

    folder = tmp_path_factory.mktemp("edit-inputs")
    rng = np.random.default_rng(3)
    for index in range(PIE_ITEMS):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    common = {"sampler": EDIT_SAMPLER, "models": {"device": "cpu"}}
    edit = EditConfig.model_validate({"model": str(tiny_sd), "image": str(folder / "0.png"), "prompt": "a red cup",
                                      "mask": {"file": str(folder / "mask.png")}, **common})
    runs = tuple(v for row in range(128, 384) for v in (512 * row + 128, 256))
    items = tuple(PieItem(f"{index:012d}", folder / f"{index}.png", "a cat", f"a dog number {index}", "0", runs)
                  for index in range(PIE_ITEMS))
    bench = PieBenchConfig.model_validate({"root": str(folder), "pipelines": [str(tiny_sd)], "dino": str(folder),
                                           "clip_checkpoint": str(folder / "clip.pt"), "batches_per_task": 1,
                                           **common})
    return {"edit": edit, "plan": PieBenchPlan(bench, items, {"tiny-sd": tiny_sd})}


def _edits_on(runner: RunnerConfig, inputs: dict, out: Path) -> dict[str, str]:
    """edit-images through `tokencompose edit`'s entry, and the PIE-Bench edit tasks the way score-pie-bench
    runs them, on ``runner``."""
    from dataclasses import replace

    from prefect import flow
    from prefect.utilities.annotations import quote

    from tokencompose.flows.edit import edit_on_runner, pie_edit_task, run_tasks
    from tokencompose.runners import make_task_runner
    from tokencompose.tasks.editing.run import pie_bench_chunks

    edit_on_runner(inputs["edit"].model_copy(update={"out_dir": out / "edit", "runner": runner}))
    plan = replace(inputs["plan"], config=inputs["plan"].config.model_copy(update={"out_dir": out / "pie",
                                                                                    "runner": runner}))
    chunks = pie_bench_chunks(plan, runner.distributed)
    calls = [{"plan": quote(plan), "label": "tiny-sd", "start": start, "stop": stop} for start, stop in chunks]

    @flow(task_runner=make_task_runner(runner, out, gpu_tasks=True))
    def pie_bench_edits() -> list:
        return run_tasks(pie_edit_task, calls, runner)

    assert sum(pie_bench_edits(), []) == [item.key for item in plan.items]
    return _edit_hashes(out)


@pytest.fixture(scope="module")
def edit_reference(prefect_api, edit_inputs, tmp_path_factory) -> dict[str, str]:
    """The edits on the local threads runner (one PIE-Bench task for the model), torch on one thread as
    the Dask and Ray workers run it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        files = _edits_on(RunnerConfig(), edit_inputs, tmp_path_factory.mktemp("edit-threads"))
    finally:
        torch.set_num_threads(threads)
    assert {"edit/result.png", "edit/mask.png", "pie/tiny-sd/000000000004.png"} <= set(files)
    return files


@pytest.mark.cluster
def test_edits_on_dask_are_the_same_bytes_as_on_threads(prefect_api, edit_inputs, edit_reference, cluster,
                                                        tmp_path):
    from tokencompose.tasks.editing.run import pie_bench_chunks

    local, client = cluster
    client.wait_for_workers(2, timeout=120)  # a worker killed by an earlier test is restarted by its nanny
    runner = RunnerConfig(dask_address=local.scheduler_address)
    assert pie_bench_chunks(edit_inputs["plan"], runner.distributed) == [(0, 2), (2, 4), (4, 5)]
    assert _edits_on(runner, edit_inputs, tmp_path / "dask") == edit_reference


@pytest.mark.cluster
def test_edits_on_ray_are_the_same_bytes_as_on_threads(prefect_api, edit_inputs, edit_reference, local_ray,
                                                       tmp_path):
    assert _edits_on(RunnerConfig(kind="ray"), edit_inputs, tmp_path / "ray") == edit_reference

