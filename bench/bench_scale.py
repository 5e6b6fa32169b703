"""Benchmark the build of a dataset source on 1, 2 and 4 Dask workers: images/s and the ratio to 1 worker.

    PYTHONPATH=. python bench/bench_scale.py [--images 48] [--shard-size 4] [--workers 1,2,4] [--target-seconds 600]

The source is a folder of small JPEGs with captions.jsonl (tests/support/dataset_sources.py); the masks
come from Grounded-SAM with random-weight models (GroundingDINO SwinT-OGC with a tiny BERT, SAM-HQ
vit_tiny; tests/support/paper_models.py), captions from consensus ranking, nouns from spaCy, on the CPU.
Each worker count runs the build-grounded-coco flow on a ``distributed.LocalCluster`` of that many
worker processes (one thread each), with the cluster up and every worker's backends loaded before the
clock starts. The figures are ratios against 1 worker measured in the same run; each row records the
1-minute load average before and after it (a load above the core count means the workers shared cores
with other work). Also printed: the measured seconds per image on one worker and the shard size that
would make one shard take ``--target-seconds`` (shards are cut by count, which keeps the bytes
reproducible; the count is chosen from measured time, docs/scale-out.md). Writes bench/results/scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"


def shard_size_for(target_seconds: float, seconds_per_image: float) -> int:
    """Images per shard so that one shard takes about ``target_seconds`` on one worker."""
    return max(1, int(target_seconds // seconds_per_image))


def machine() -> dict:
    """What the figures were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"node": platform.node(), "cpu": model, "cpu_count": os.cpu_count(), "memory_gib": round(memory, 1),
            "python": platform.python_version(), "gpu": "none (CPU only)"}


def _load_backends(config) -> None:
    """Load a worker's backends (returning them would send the models back to this process)."""
    from tokencompose.tasks.models import backends as backend_registry

    backend_registry.load_backends(config)


def _peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_workers(count: int, settings: dict, work: Path, repeats: int) -> dict:
    """The best build time on ``count`` workers, the workers' peak memory, or the error that stopped it
    (a worker over Dask's memory budget, total memory / workers, is restarted; a shard that kills four
    workers fails the build)."""
    from distributed import Client, LocalCluster

    from tokencompose.flows.build import build_on_runner
    from tokencompose.schemas.config import BuildConfig

    with ExitStack() as stack:
        cluster = stack.enter_context(LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                                   dashboard_address=None))
        client = stack.enter_context(Client(cluster))
        client.wait_for_workers(count, timeout=600)
        warm = BuildConfig.model_validate({**settings, "output": {**settings["output"], "out_dir": str(work / "warm")}})
        client.run(_load_backends, warm)
        best = float("inf")
        for _ in range(repeats):
            out = work / f"workers-{count}"
            shutil.rmtree(out, ignore_errors=True)
            config = BuildConfig.model_validate({**settings, "output": {**settings["output"], "out_dir": str(out)},
                                                 "runner": {"dask_address": cluster.scheduler_address}})
            start = time.perf_counter()
            try:
                build_on_runner(config)
            except Exception as error:  # noqa: BLE001 - the row records why this count could not run
                return {"error": " ".join(str(error).split())[:400], "memory_limit_gib": round(
                    cluster.workers[next(iter(cluster.workers))].memory_manager.memory_limit / 2**30, 2)}
            best = min(best, time.perf_counter() - start)
        peaks = client.run(_peak_rss_gib)
        return {"seconds": best, "worker_peak_rss_gib": round(max(peaks.values()), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--target-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    from prefect.testing.utilities import prefect_test_harness

    from tests.support.dataset_sources import dataset_settings, rows, write_folder

    counts = [int(c) for c in args.workers.split(",")]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=300):
        work = Path(tmp)
        dataset = f"folder:{write_folder(work / 'source', rows(args.images))}"
        settings = dataset_settings(dataset, work / "out", output={"shard_size": args.shard_size})
        for count in counts:
            load_before = os.getloadavg()[0]
            row = time_workers(count, settings, work, args.repeats)
            load = {"load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
            if "error" in row:
                results[str(count)] = {**row, **load}
                print(f"{count} worker(s): failed: {row['error']}", flush=True)
                continue
            seconds = row["seconds"]
            results[str(count)] = {"seconds": round(seconds, 2), "images_per_s": round(args.images / seconds, 3),
                                   "worker_peak_rss_gib": row["worker_peak_rss_gib"], **load}
            print(f"{count} worker(s): {seconds:.1f} s, {args.images / seconds:.2f} images/s, "
                  f"worker peak {row['worker_peak_rss_gib']} GiB", flush=True)
    base = results.get("1")
    for row in results.values():
        if base and "images_per_s" in row and "images_per_s" in base:
            row["vs_1_worker"] = round(row["images_per_s"] / base["images_per_s"], 3)
    seconds_per_image = 1 / base["images_per_s"] if base and "images_per_s" in base else None
    report = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
              "images": args.images, "shard_size": args.shard_size, "repeats": args.repeats,
              "models": "random weights: GroundingDINO SwinT-OGC + tiny BERT, SAM-HQ vit_tiny; consensus; spaCy",
              "grounding_input": "short side 224, long side <= 320", "workers": results,
              "seconds_per_image_1_worker": round(seconds_per_image, 3) if seconds_per_image else None,
              "shard_size_for_target": {"target_seconds": args.target_seconds, "shard_size": shard_size_for(
                  args.target_seconds, seconds_per_image) if seconds_per_image else None}}
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print("| workers | seconds | images/s | vs 1 worker | load 1m before/after |")
    print("|---|---|---|---|---|")
    for count, row in results.items():
        print(f"| {count} | {row.get('seconds', 'failed')} | {row.get('images_per_s', '')} | "
              f"{row.get('vs_1_worker', '')} | {row['load_average_1m'][0]} / {row['load_average_1m'][1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
