"""Start-up of a dataset-source build: time from opening a source of many rows to its first shard's records.

    PYTHONPATH=. python bench/bench_plan_startup.py [--rows 1000000] [--shard-size 500] [--kinds folder,hf]
                                                    [--no-listing] [--out bench/results/plan_startup.json]

Writes a synthetic source of ``--rows`` tiny rows of each kind (a folder's captions.jsonl; an hf dataset
written with ``datasets``' save_to_disk, an empty image column and a caption), then measures, each in a
fresh open of the source:

* plan: ``planning.row_range_plan`` (all of ``plan()`` but the backends' preflight, which reads no row)
  and the first shard's rows (``streams.range_records``): what runs before the first shard task starts;
* listing: every row turned into a record (``streams.dataset_records``), what a plan that keeps a record
  per row has to do first.

Also recorded: the plan's shard count and the peak of Python allocations while planning (tracemalloc, in a
second, untimed plan).
Writes bench/results/plan_startup.json (``--out``) with the machine and its load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "plan_startup.json"


def write_sources(folder: Path, rows: int) -> dict[str, str]:
    """A folder source and an hf source of ``rows`` rows each: their ``source.dataset``."""
    import datasets
    import pyarrow as pa

    (folder / "folder").mkdir(parents=True)
    with open(folder / "folder" / "captions.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"image": f"images/{i}.jpg", "caption": "a dog on a bed"}) + "\n"
                          for i in range(rows))
    table = pa.table({"image": pa.array([None] * rows, pa.binary()), "caption": ["a dog on a bed"] * rows})
    datasets.Dataset(table).save_to_disk(str(folder / "hf"))
    return {"folder": f"folder:{folder / 'folder'}", "hf": f"hf:{folder / 'hf'}"}


def measure_plan(dataset: str, out_dir: Path, shard_size: int) -> dict:
    from tokencompose.schemas.config import BuildConfig
    from tokencompose.tasks.shards.planning import row_range_plan
    from tokencompose.tasks.source.streams import _open, range_records

    _open.cache_clear()
    config = BuildConfig.model_validate({"source": {"dataset": dataset},
                                         "output": {"out_dir": str(out_dir), "shard_size": shard_size}})
    start = time.perf_counter()
    run_plan = row_range_plan(config, config.config_hash())
    planned = time.perf_counter() - start
    records, rejects = range_records(config, run_plan.batches[0])
    first_shard = time.perf_counter() - start
    _open.cache_clear()
    tracemalloc.start()  # a second plan, measured for memory only: tracemalloc slows every allocation
    row_range_plan(config, config.config_hash())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"plan_seconds": round(planned, 3), "first_shard_records_seconds": round(first_shard, 3),
            "shards": len(run_plan.batches), "rows": run_plan.seen, "plan_peak_python_bytes": peak,
            "first_shard": {"records": len(records), "rejects": len(rejects)}}


def measure_listing(dataset: str) -> float:
    from tokencompose.schemas.config import SourceConfig
    from tokencompose.tasks.source.streams import _open, dataset_records, open_dataset

    _open.cache_clear()
    start = time.perf_counter()
    for _ in dataset_records(open_dataset(SourceConfig(dataset=dataset))):
        pass
    return round(time.perf_counter() - start, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--kinds", default="folder,hf")
    parser.add_argument("--no-listing", action="store_true", help="skip listing every row (minutes at 10M rows)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-plan-startup-") as tmp:
        start = time.perf_counter()
        sources = write_sources(Path(tmp), args.rows)
        print(f"wrote {args.rows} rows of each kind in {time.perf_counter() - start:.1f} s")
        for kind in args.kinds.split(","):
            load_before = os.getloadavg()[0]
            result = measure_plan(sources[kind], Path(tmp) / f"out-{kind}", args.shard_size)
            if not args.no_listing:
                result["listing_seconds"] = measure_listing(sources[kind])
            result["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            results[kind] = result
            print(kind, json.dumps(result))
    machine = {"processor": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
               "note": "CPU only; the machine was shared with other work (load averages per kind)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": args.rows, "shard_size": args.shard_size, "machine": machine,
                                   "results": results}, indent=2) + "\n")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
