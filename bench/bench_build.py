"""Benchmark build-grounded-coco: the Prefect flow vs the same stages called directly, and time per stage.

    python bench/bench_build.py --images 2000 [--shard-size 250] [--repeats 2]
    python bench/bench_build.py --only-runners --images 1600 --shard-size 100 --runners threads,dask:1,dask:2

Builds N images (the bundled sample replicated) three ways in one run: the flow (with a Prefect API
already up, as under a deployment: server start-up is not counted), `build_directly` (same plan,
shards and reports, no Prefect), and the stages one by one for the time per stage. The best of
--repeats is kept for each. Prints a markdown table and writes bench/results/build.json.

--runners also times the flow on each task runner (tokencompose/runners/): `threads[:W]` (this process,
BuildConfig.workers W), `dask:N` (a distributed.LocalCluster of N worker processes, one thread each)
and `ray:N` (a local Ray of N CPUs). Each cluster is started, and its workers load the backends,
before the clock starts; the figure is the scaling between runners, not the absolute speed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from tokencompose.data.replicate import replicate_sample
from tokencompose.schemas.config import BuildConfig
from tokencompose.tasks.models import backends as backend_registry
from tokencompose.tasks.shards.dataset import build_directly
from tokencompose.tasks.shards.planning import plan
from tokencompose.tasks.shards.build import ShardBuilder, write_shard

RESULTS = Path(__file__).resolve().parent / "results" / "build.json"


def _config(source: dict, out: Path, shard_size: int, runner: dict | None = None, workers: int = 1) -> BuildConfig:
    return BuildConfig.model_validate({"source": source, "output": {"out_dir": str(out), "shard_size": shard_size},
                                       "runner": runner or {}, "workers": workers})


def _fresh(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)


def time_flow(source: dict, work: Path, shard_size: int, repeats: int) -> float:
    """The flow as `tokencompose build` runs it: against Prefect's temporary server (its own process),
    started by a first small run so that server start-up is not counted."""
    from tokencompose.data import demo_settings
    from tokencompose.flows.build import build_grounded_coco

    warm = BuildConfig.model_validate({**demo_settings(), "output": {"out_dir": str(work / "flow-warm")}})
    build_grounded_coco(config=warm)
    best = float("inf")
    for _ in range(repeats):
        _fresh(work / "flow")
        start = time.perf_counter()
        build_grounded_coco(config=_config(source, work / "flow", shard_size))
        best = min(best, time.perf_counter() - start)
    return best


def time_direct(source: dict, work: Path, shard_size: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        _fresh(work / "direct")
        start = time.perf_counter()
        build_directly(_config(source, work / "direct", shard_size))
        best = min(best, time.perf_counter() - start)
    return best


def time_stages(source: dict, work: Path, shard_size: int) -> dict[str, float]:
    config = _config(source, work / "stages", shard_size)
    _fresh(work / "stages")
    start = time.perf_counter()
    run_plan = plan(config)
    seconds: Counter[str] = Counter({"selection": time.perf_counter() - start})
    backends = backend_registry.load_backends(config)
    provenance = backends.provenance(run_plan.config_hash)
    for index, batch in enumerate(run_plan.batches):
        builder = ShardBuilder(config, backends, provenance)
        samples, _ = builder.build(batch)
        seconds.update(builder.seconds)
        start = time.perf_counter()
        write_shard(config.output.out_dir, index, samples, config.output.image_field)
        seconds["write"] += time.perf_counter() - start
    return dict(seconds)


def time_runner(spec: str, source: dict, work: Path, shard_size: int, repeats: int) -> float:
    """Best wall time of the flow on one runner (see the module docstring for ``spec``), with the
    cluster already up and its workers' backends loaded."""
    from contextlib import ExitStack

    from tokencompose.flows.build import build_on_runner as run_build

    kind, _, count = spec.partition(":")
    count_n = int(count or 1)
    with ExitStack() as stack:
        runner: dict = {}
        workers = 1
        if kind == "threads":
            workers = count_n
        elif kind == "dask":
            from distributed import Client, LocalCluster

            cluster = stack.enter_context(LocalCluster(n_workers=count_n, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
            client.wait_for_workers(count_n, timeout=300)
            client.run(backend_registry.load_backends, _config(source, work / "warm", shard_size))
            runner = {"dask_address": cluster.scheduler_address}
        elif kind == "ray":
            import ray

            ray.init(num_cpus=count_n, include_dashboard=False, namespace="prefect")
            stack.callback(ray.shutdown)
            runner = {"kind": "ray"}
        else:
            raise SystemExit(f"unknown runner {spec!r}: threads[:W], dask:N or ray:N")
        out = work / f"runner-{kind}-{count_n}"
        best = float("inf")
        for _ in range(repeats):
            _fresh(out)
            start = time.perf_counter()
            run_build(_config(source, out, shard_size, runner, workers))
            best = min(best, time.perf_counter() - start)
        return best


def bench_runners(specs: list[str], source: dict, work: Path, shard_size: int, repeats: int,
                  images: int) -> dict[str, dict[str, float]]:
    from prefect.testing.utilities import prefect_test_harness

    results = {}
    with prefect_test_harness(server_startup_timeout=300):  # a real API in its own process, reached by every worker
        for spec in specs:
            load_before = os.getloadavg()[0]
            seconds = time_runner(spec, source, work, shard_size, repeats)
            # The 1-minute load average around the run: on a machine shared with other work, processes
            # compete for the same cores and the scaling says little when it is well above the core count.
            results[spec] = {"seconds": round(seconds, 3), "images_per_s": round(images / seconds, 1),
                             "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
            print(f"{spec}: {seconds:.2f} s, {images / seconds:.1f} images/s", flush=True)
    base = results.get("dask:1")
    for spec, row in results.items():
        if base:
            row["vs_dask_1"] = round(row["images_per_s"] / base["images_per_s"], 3)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runners", default="threads,dask:1,dask:2",
                        help="comma-separated task runners to time: threads[:W], dask:N, ray:N (empty: none)")
    parser.add_argument("--only-runners", action="store_true",
                        help="time only the runners; the other figures of build.json are kept")
    args = parser.parse_args(argv)
    specs = [s.strip() for s in args.runners.split(",") if s.strip()]
    if args.only_runners:
        return _main_runners(args, specs)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        copies = max(1, args.images // 8)
        source = replicate_sample(work / "source", copies)
        images = copies * 8
        backend_registry.load_backends(_config(source, work / "warm", args.shard_size))  # models loaded once, as in a worker
        direct = time_direct(source, work, args.shard_size, args.repeats)
        flow = time_flow(source, work, args.shard_size, args.repeats)
        stages = time_stages(source, work, args.shard_size)
        runners = bench_runners(specs, source, work, args.shard_size, args.repeats, images) if specs else {}

    result = {"images": images, "shard_size": args.shard_size, "repeats": args.repeats,
              "flow_seconds": round(flow, 3), "direct_seconds": round(direct, 3),
              "flow_images_per_s": round(images / flow, 1), "direct_images_per_s": round(images / direct, 1),
              "overhead_ratio": round(flow / direct, 3), "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
              "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    if runners:
        result["runners"] = {"images": images, "shard_size": args.shard_size, "repeats": args.repeats, **runners}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print("| images | flow img/s | direct img/s | flow/direct time (target <= 1.10) |")
    print("|---|---|---|---|")
    print(f"| {images} | {result['flow_images_per_s']} | {result['direct_images_per_s']} | {result['overhead_ratio']} |")
    print()
    print("| stage | seconds | ms/image |")
    print("|---|---|---|")
    for stage, seconds in stages.items():
        print(f"| {stage} | {seconds:.2f} | {1000 * seconds / images:.2f} |")
    return 0



def _main_runners(args: argparse.Namespace, specs: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        copies = max(1, args.images // 8)
        source = replicate_sample(work / "source", copies)
        images = copies * 8
        backend_registry.load_backends(_config(source, work / "warm", args.shard_size))
        runners = bench_runners(specs, source, work, args.shard_size, args.repeats, images)
    result = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    result["runners"] = {"images": images, "shard_size": args.shard_size, "repeats": args.repeats,
                         "cpu_count": os.cpu_count(), **runners}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print("| runner | seconds | images/s | vs dask:1 |")
    print("|---|---|---|---|")
    for spec, row in runners.items():
        print(f"| {spec} | {row['seconds']} | {row['images_per_s']} | {row.get('vs_dask_1', '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
