"""Benchmark the viewer's catalogue: build time and memory per sample, searches, the training view.

    python bench/bench_viewer.py [--samples 4032] [--shard-size 500] [--repeats 3]

The dataset: the bundled sample built by the project (`build_directly`), each of its 7 records then
rescaled to 0.5x, 1x, 2x and 3x (image resized, masks decoded, resized and encoded again, boxes
scaled: images from 200 to 2,223 px wide, masks' run-length strings growing with them), and written
under new keys with the project's shard writer until --samples samples (9 shards of up to 500 by default).

In the same run, as baselines for the catalogue (interleaved, best of --repeats each, page cache warm):
  read    reading every JSON member through the index (bytes only)
  parse   the same, plus SampleRecord validation (pydantic), each record dropped at once: what any
          reader of the records must pay
  catalog Catalog.scan(): parse + the per-sample entry (noun texts, mask bits, codes and mask areas)
Memory per sample (tracemalloc, kept after the scan): the catalogue against keeping every parsed
SampleRecord, and against keeping only the raw JSON bytes. Prints a table, writes
bench/results/viewer.json.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

from tokencompose.schemas.sample import CocoRLE, SampleRecord
from tokencompose.tasks.grounding.masks import decode, encode
from tokencompose.tasks.shards.build import write_shard
from tokencompose.viewer.catalog import Catalog, Query, parse_record, read_member

RESULTS = Path(__file__).resolve().parent / "results" / "viewer.json"
SCALES = (0.5, 1.0, 2.0, 3.0)


def demo_records(work: Path) -> list[tuple[SampleRecord, bytes]]:
    from tokencompose.data import demo_settings
    from tokencompose.schemas.config import BuildConfig
    from tokencompose.tasks.shards.dataset import build_directly

    settings = demo_settings()
    settings["output"] = {"out_dir": str(work / "demo")}
    build_directly(BuildConfig.model_validate(settings))
    catalog = Catalog(work / "demo").scan()
    return [(catalog.record(e), catalog.image_bytes(e)[0]) for e in catalog.entries]


def rescaled(record: SampleRecord, image: bytes, scale: float) -> tuple[SampleRecord, bytes]:
    width, height = max(8, round(record.width * scale)), max(8, round(record.height * scale))
    with Image.open(io.BytesIO(image)) as picture:
        buffer = io.BytesIO()
        picture.convert("RGB").resize((width, height), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=85)
    sx, sy = width / record.width, height / record.height
    nouns = []
    for noun in record.nouns:
        update: dict = {}
        if noun.mask is not None:
            mask = decode(noun.mask.model_dump())
            resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
            update["mask"] = CocoRLE(**encode(np.asarray(resized) >= 128))
        if noun.box is not None:
            x, y, w, h = noun.box
            update["box"] = (x * sx, y * sy, w * sx, h * sy)
        update["boxes"] = [(x * sx, y * sy, w * sx, h * sy) for x, y, w, h in noun.boxes]
        nouns.append(noun.model_copy(update=update))
    data = record.model_copy(update={"width": width, "height": height, "nouns": nouns}).model_dump()
    return SampleRecord.model_validate(data), buffer.getvalue()


def write_dataset(root: Path, variants: list[tuple[SampleRecord, bytes]], samples: int, shard_size: int) -> None:
    for shard, start in enumerate(range(0, samples, shard_size)):
        batch = []
        for i in range(start, min(samples, start + shard_size)):
            record, image = variants[i % len(variants)]
            image_id = 10_000_000 + i
            batch.append((record.model_copy(update={"key": f"{image_id:012d}", "image_id": image_id}), image))
        write_shard(root, shard, batch, "jpg")


def best(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def json_members(root: Path) -> list[tuple[Path, list[tuple[str, int, int]]]]:
    shards = []
    for index_file in sorted((root / "index").glob("*.json")):
        samples = json.loads(index_file.read_bytes())["samples"]
        shards.append((root / "shards" / (index_file.stem + ".tar"),
                       [(key, m["json"]["offset"], m["json"]["size"]) for key, m in samples.items()]))
    return shards


def read_all(root: Path, parse: bool, keep: bool = True) -> list:
    """Every JSON member's bytes (or parsed record); ``keep=False`` drops each at once (timing: a
    growing list of objects would add the garbage collector's passes over it to the figure)."""
    kept = []
    for path, members in json_members(root):
        size = path.stat().st_size
        with open(path, "rb") as handle:
            for key, offset, length in members:
                data = read_member(handle, size, offset, length, 1 << 24)
                value = parse_record(data, key) if parse else data
                if keep:
                    kept.append(value)
    return kept


def kept_bytes(make) -> tuple[int, object]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    value = make()
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return kept, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4032)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--training-samples", type=int, default=28, help="sample pages timed for the training view")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as work_dir:
        work = Path(work_dir)
        records = demo_records(work)
        variants = [rescaled(r, image, scale) for scale in SCALES for r, image in records]
        root = work / "data"
        write_dataset(root, variants, args.samples, args.shard_size)
        n = args.samples
        widths = sorted(r.width for r, _ in variants)
        mask_chars = [len(m.mask.counts) for r, _ in variants for m in r.nouns if m.mask is not None]
        read_member_bytes = sum(size for _, members in json_members(root) for _, _, size in members)

        # interleaved, best of each: the three see the same machine load
        runs = {"read": lambda: read_all(root, parse=False, keep=False),
                "parse": lambda: read_all(root, parse=True, keep=False),
                "catalog": lambda: Catalog(root).scan()}
        timed = {name: float("inf") for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                timed[name] = min(timed[name], best(1, run))
        t_read, t_parse, t_catalog = timed["read"], timed["parse"], timed["catalog"]

        mem_catalog, catalog = kept_bytes(lambda: Catalog(root).scan())
        mem_records, records_kept = kept_bytes(lambda: read_all(root, parse=True))
        del records_kept
        mem_json, json_kept = kept_bytes(lambda: read_all(root, parse=False))
        del json_kept
        assert len(catalog.entries) == n and catalog.error_count == 0

        person = catalog.label_code("category", "person")
        searches = {
            "text 'spoon'": Query(text="spoon"),
            "category person": Query(category=person),
            "mask area >= 30%, largest first": Query(min_area=30.0, sort="area"),
        }
        search_us = {name: 1e6 * best(args.repeats, lambda q=q: catalog.search(q)) / n for name, q in searches.items()}

        from tokencompose.viewer.training_view import TrainingView, default_tokenizer

        start = time.perf_counter()
        default_tokenizer()
        tokenizer_s = time.perf_counter() - start
        view = TrainingView()
        page_ms = []
        for entry in catalog.entries[:args.training_samples]:
            record, image = catalog.record(entry), catalog.image_bytes(entry)[0]
            start = time.perf_counter()
            view._compute(record, image)
            page_ms.append(1e3 * (time.perf_counter() - start))

    result = {
        "command": "python bench/bench_viewer.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "dataset": {"samples": n, "shards": -(-n // args.shard_size), "distinct_records": len(variants),
                    "image_widths_px": [widths[0], widths[-1]], "scales": list(SCALES),
                    "mask_rle_chars": {"min": min(mask_chars), "median": int(statistics.median(mask_chars)),
                                       "max": max(mask_chars)},
                    "json_bytes_per_sample": round(read_member_bytes / n)},
        "catalog_build_us_per_sample": {"read_json": round(1e6 * t_read / n, 1), "parse_records": round(1e6 * t_parse / n, 1),
                                        "catalog_scan": round(1e6 * t_catalog / n, 1),
                                        "catalog_over_parse": round(t_catalog / t_parse, 2),
                                        "catalog_over_read": round(t_catalog / t_read, 2)},
        "memory_bytes_per_sample": {"catalog": round(mem_catalog / n), "parsed_records": round(mem_records / n),
                                    "raw_json": round(mem_json / n),
                                    "catalog_over_records": round(mem_catalog / mem_records, 3)},
        "search_us_per_sample": {k: round(v, 2) for k, v in search_us.items()},
        "training_view": {"tokenizer_load_s": round(tokenizer_s, 2),
                          "ms_per_sample_page_uncached": {"median": round(statistics.median(page_ms), 1),
                                                          "max": round(max(page_ms), 1)}},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    build, memory = result["catalog_build_us_per_sample"], result["memory_bytes_per_sample"]
    print(f"| {n} samples, images {widths[0]}-{widths[-1]} px wide | per sample |")
    print("|---|---|")
    print(f"| read the JSON members | {build['read_json']} µs |")
    print(f"| + validate (SampleRecord) | {build['parse_records']} µs |")
    print(f"| catalogue scan | {build['catalog_scan']} µs ({build['catalog_over_parse']}x parse) |")
    print(f"| catalogue memory | {memory['catalog']} B (records: {memory['parsed_records']} B, "
          f"raw JSON: {memory['raw_json']} B) |")
    for name, value in result["search_us_per_sample"].items():
        print(f"| search: {name} | {value} µs |")
    print(f"| training view, first look at a sample | {result['training_view']['ms_per_sample_page_uncached']['median']} ms |")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
