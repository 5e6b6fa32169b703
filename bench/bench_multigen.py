"""MultiGen speed: images per second of generation and of detection, this project's way against the
authors' way, in one run.

generation  ours:    tokencompose.tasks.multigen.generation.generate_images -- batches of --batch-size
                     images (mixed prompts, per-image seeded noise), bf16 on a GPU (fp32 on the CPU),
                     SDPA attention (diffusers' AttnProcessor2_0), optional torch.compile (--compile).
            authors: the same pipeline in fp32, one image per call.
detection   ours:    tokencompose.tasks.multigen.detection.Detector, batches of --det-batch-size, bf16 on a GPU.
            authors: fp32, one image per call.
Both ways: PNDM, --steps steps, guidance 7.5, the same prompts and seeds; text queries
"a photo of a {category}" for the prompt's five categories.

CPU (default): tiny random-weight models (the tests' SD layout at 64 px, a 2-layer OWLv2 at 64 px); both
ways run fp32 there, so the CPU ratio shows batching only.
GPU: ``--device cuda --full-size`` builds SD1.4's architecture (UNet, VAE, CLIP ViT-L/14 text encoder) and
OWLv2-L/14 at 960 px with random weights (speed does not depend on weights).

    python bench/bench_multigen.py                                  # CPU, tiny models
    python bench/bench_multigen.py --device cuda --full-size --images 64 --batch-size 16 --det-batch-size 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

from tokencompose.tasks.multigen import detection as det  # noqa: E402
from tokencompose.tasks.multigen import generation as gen  # noqa: E402
from tokencompose.tasks.multigen.prompts import bundled  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, work) -> float:
    sync(device)
    start = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - start


def build_generators(args, scratch: Path):
    """(ours, authors') pipelines."""
    from tokencompose.tasks.multigen.toy import sd14_pipeline

    ours_dtype = gen.resolve_dtype(args.precision, args.device)
    if args.full_size:
        authors = sd14_pipeline().to(args.device)
        ours = sd14_pipeline(dtype=ours_dtype).to(args.device)
    else:
        from tokencompose.tasks.training.toy import save_random_pipeline

        folder = save_random_pipeline(scratch / "tiny-sd", "tiny")
        authors = gen.load_pipeline(folder, args.device, torch.float32)
        ours = gen.load_pipeline(folder, args.device, ours_dtype)
    for pipe in (authors, ours):
        pipe.set_progress_bar_config(disable=True)
    if args.compile:
        ours.unet = torch.compile(ours.unet)
    return ours, authors


def build_detectors(args, scratch: Path):
    from tokencompose.tasks.multigen.toy import owlv2_parts

    model, processor = owlv2_parts("large" if args.full_size else "tiny")
    ours = det.Detector.from_parts(model, processor, args.device, args.precision)
    model, processor = owlv2_parts("large" if args.full_size else "tiny")
    authors = det.Detector.from_parts(model, processor, args.device, "fp32")
    return ours, authors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-size", action="store_true", help="SD1.4 and OWLv2-L architectures (GPU)")
    parser.add_argument("--images", type=int, default=8, help="images generated and detected per way")
    parser.add_argument("--batch-size", type=int, default=8, help="ours: images per pipeline call")
    parser.add_argument("--det-batch-size", type=int, default=8, help="ours: images per detector call")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--resolution", type=int, default=None, help="default: 512 full size, 64 tiny")
    parser.add_argument("--precision", default="auto", help="ours: auto (bf16 on a GPU, fp32 on the CPU), fp16, bf16")
    parser.add_argument("--compile", action="store_true", help="ours: torch.compile the UNet")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on the CPU, where the "
                        "tiny models gain nothing from a thread pool and a shared machine makes it spin)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "multigen.json")
    args = parser.parse_args()
    resolution = args.resolution or (512 if args.full_size else 64)
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    prompts = bundled("coco")
    items = [(prompts[i % len(prompts)], i // len(prompts)) for i in range(args.images)]
    settings = dict(seed=0, steps=args.steps, guidance_scale=7.5, resolution=resolution)
    results: dict = {"device": args.device, "device_name": torch.cuda.get_device_name(0)
                     if args.device.startswith("cuda") else platform.processor() or "cpu",
                     "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "models": "SD1.4 + OWLv2-L/14 architectures" if args.full_size else "tiny (tests' layouts)",
                     "weights": "random", "images": args.images, "steps": args.steps, "resolution": resolution,
                     "precision_ours": str(gen.resolve_dtype(args.precision, args.device)).replace("torch.", ""),
                     "compile": args.compile}
    with tempfile.TemporaryDirectory() as scratch:
        ours, authors = build_generators(args, Path(scratch))
        # warm-up (first-call allocation, kernel selection, compilation), not timed
        gen.generate_images(ours, items[:args.batch_size], batch_size=args.batch_size, **{**settings, "steps": 2})
        gen.generate_images(authors, items[:1], batch_size=1, **{**settings, "steps": 2})
        images: list = []
        ours_s = timed(args.device, lambda: images.extend(gen.generate_images(ours, items, batch_size=args.batch_size,
                                                                               **settings)))
        authors_s = timed(args.device, lambda: gen.generate_images(authors, items, batch_size=1, **settings))
        results["generation"] = {
            "ours": {"batch_size": args.batch_size, "seconds": round(ours_s, 3),
                     "images_per_s": round(args.images / ours_s, 3), "nan_images": sum(i.nan for i in images)},
            "authors": {"batch_size": 1, "precision": "fp32", "seconds": round(authors_s, 3),
                        "images_per_s": round(args.images / authors_s, 3)},
            "speedup": round(authors_s / ours_s, 2)}
        print(json.dumps(results["generation"]), flush=True)
        ours = authors = None  # frees the pipelines before the detectors load
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

        from PIL import Image

        pictures = [Image.fromarray(i.image) for i in images]
        categories = [list(p.categories) for p, _ in items]
        ours_det, authors_det = build_detectors(args, Path(scratch))
        ours_det.score(pictures[:args.det_batch_size], categories[:args.det_batch_size])
        authors_det.score(pictures[:1], categories[:1])

        def run(detector, batch):
            for start in range(0, len(pictures), batch):
                detector.score(pictures[start:start + batch], categories[start:start + batch])

        ours_s = timed(args.device, lambda: run(ours_det, args.det_batch_size))
        authors_s = timed(args.device, lambda: run(authors_det, 1))
        size = ours_det.processor.image_processor.size
        results["detection"] = {
            "input": f"{size['height']}x{size['width']}",
            "ours": {"batch_size": args.det_batch_size, "seconds": round(ours_s, 3),
                     "images_per_s": round(len(pictures) / ours_s, 3)},
            "authors": {"batch_size": 1, "precision": "fp32", "seconds": round(authors_s, 3),
                        "images_per_s": round(len(pictures) / authors_s, 3)},
            "speedup": round(authors_s / ours_s, 2)}
        print(json.dumps(results["detection"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
