"""Benchmark Blended Latent Diffusion edits: edits/s batched vs one by one, in the same run.

    python bench/bench_editing.py [--resolution 512] [--edits 4] [--batch 4] [--steps 4] [--background none]

A tiny random Stable Diffusion (tokencompose.tasks.training.toy, the tests' model) edits N copies of a
photo with a box mask, first one image per call, then --batch images per call, best of --repeats each;
the ratio is batched / one by one. The figures are for this machine's CPU (named in the results);
GPU figures are "not measured" unless --device cuda is given on a machine with one. Writes
bench/results/editing.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "editing.json"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--edits", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--background", default="none", choices=["none", "paste", "optimize_decoder"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np
    from PIL import Image
    from skimage import data

    from tokencompose.schemas.editing import SamplerConfig
    from tokencompose.tasks.editing.blend import EditItem, edit_all
    from tokencompose.tasks.multigen.generation import load_pipeline, resolve_dtype
    from tokencompose.tasks.training.toy import save_random_pipeline

    side = args.resolution
    with tempfile.TemporaryDirectory() as tmp:
        model = save_random_pipeline(Path(tmp) / "tiny-sd", "tiny")
        pipe = load_pipeline(model, args.device, resolve_dtype("auto", args.device))
        photo = np.asarray(Image.fromarray(data.chelsea()).resize((side, side), Image.Resampling.BICUBIC))
        mask = np.zeros((side, side), bool)
        mask[side // 4:3 * side // 4, side // 8:side // 2] = True
        items = [EditItem(photo, mask, "a dog on a sofa", seed=i) for i in range(args.edits)]

        def rate(batch: int) -> float:
            sampler = SamplerConfig(steps=args.steps, strength=1.0, resolution=side, background=args.background,
                                    batch_size=batch)
            edit_all(pipe, items[:batch], sampler)                      # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                edit_all(pipe, items, sampler)
                best = min(best, time.perf_counter() - start)
            return args.edits / best

        one, batched = rate(1), rate(args.batch)
    result = {"machine": machine(), "device": args.device, "model": "tiny random SD (training/toy.py 'tiny')",
              "resolution": side, "steps": args.steps, "edits": args.edits, "batch": args.batch,
              "background": args.background, "edits_per_s_one_by_one": round(one, 4),
              "edits_per_s_batched": round(batched, 4), "batched_over_one_by_one": round(batched / one, 3),
              "load_average_1m_at_end": round(os.getloadavg()[0], 2),
              "gpu": "measured" if args.device.startswith("cuda") else "not measured (no GPU at hand)"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"| resolution | steps | one by one (edits/s) | batch {args.batch} (edits/s) | ratio |\n|---|---|---|---|---|\n"
          f"| {side} | {args.steps} | {one:.3f} | {batched:.3f} | {batched / one:.2f} |\n\n{result['machine']}; "
          f"GPU: {result['gpu']}")


if __name__ == "__main__":
    main()
