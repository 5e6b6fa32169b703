"""Grounded-SAM stage speed: this project's way against the authors' way, in one run.

ours:     GroundedSam.ground -- images of mixed sizes batched together (GroundingDINO on a padded
          batch with its padding masks, SAM-HQ on images padded to its square input), decode and
          resize on a pool of CPU workers ahead of the device, autocast at --precision (bf16 by
          default on a GPU), models loaded once and kept on the device.
authors:  one image at a time, fp32, GroundingDINO and SAM-HQ moved to the device on every call
          (as groundingdino.util.inference.predict does with ``model.to(device)``), SamPredictor
          set_image + predict_torch with all boxes of the image.

Images: the bundled sample photos resized to COCO-like mixed sizes (640x480, 480x640, 640x427,
500x375, 612x612, 427x640, 333x501, 640x360), cycled. Reported per way: images/s of each stage
(CPU prep: decode, resize, normalise; detector; segmenter; each as summed stage time, so overlapped
CPU prep is counted in full) and of the whole call (wall clock).

Both use full-size architectures with random weights (no weights can be downloaded here):
GroundingDINO SwinT-OGC with a bert-base-sized text encoder (12 layers, hidden 768, small
vocabulary) and SAM-HQ of the chosen variant. Random detectors score every query alike, so a box
threshold is calibrated first to keep about --boxes boxes per image, the same for both ways.

CPU: use --sam vit_tiny and a small --short-side; fp32 on both ways, so the CPU ratio shows batching,
overlap and load-once only. GPU: --device cuda --sam vit_h (bf16 by default).

    python bench/bench_grounding.py --images 8 --short-side 320 --max-side 533     # CPU, small
    python bench/bench_grounding.py --device cuda --sam vit_h --images 32 --batch-size 8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import string
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from tokencompose.tasks.grounding import grounded_sam as gs
from tokencompose.tasks.grounding.token_assignment import assign_boxes, build_prompt, select_boxes

ROOT = Path(__file__).resolve().parent.parent

NOUNS = [["man", "dog", "cup"], ["cat", "bed"], ["astronaut", "flag", "helmet"], ["coffee", "spoon", "table"]]


def write_bert_base(folder: Path) -> Path:
    """bert-base-uncased's architecture (12 layers, hidden 768) with random weights and a small vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for nouns in NOUNS for n in nouns for w in n.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?"] + words + list(string.ascii_lowercase)
    vocab += ["##" + c for c in string.ascii_lowercase]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(dict.fromkeys(vocab)))).save_pretrained(folder)
    return folder


def build_models(root: Path, sam_variant: str) -> dict[str, Path]:
    from segment_anything_hq import sam_model_registry

    bert = write_bert_base(root / "bert-base-uncased")
    torch.manual_seed(0)
    dino = gs.build_dino(bert)
    with torch.no_grad():
        dino.transformer.decoder.norm.weight.mul_(0.03)  # spread the random scores (see tests)
    torch.save({"model": dino.state_dict()}, root / "groundingdino_swint_ogc.pth")
    torch.save(sam_model_registry[sam_variant](checkpoint=None).state_dict(), root / f"sam_hq_{sam_variant}.pth")
    return {"dino": root / "groundingdino_swint_ogc.pth", "bert": bert, "sam": root / f"sam_hq_{sam_variant}.pth"}


COCO_SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (612, 612), (427, 640), (333, 501), (640, 360)]


def sample_jpegs(count: int) -> list[bytes]:
    """The bundled sample photos at COCO-like mixed sizes (width x height), as JPEG files."""
    import io

    from PIL import Image

    from tokencompose.data import demo_settings

    files = sorted(Path(demo_settings()["source"]["images_dir"]).glob("*.jpg"))
    jpegs = []
    for i in range(count):
        photo = Image.open(files[i % len(files)]).convert("RGB").resize(COCO_SIZES[i % len(COCO_SIZES)])
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def opened(jpegs: list[bytes]):
    """Fresh, not yet decoded images: each way pays the JPEG decode in its prep stage."""
    import io

    from PIL import Image

    return [Image.open(io.BytesIO(data)) for data in jpegs]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def authors_way(grounder: gs.GroundedSam, images, nouns, device: str, stages: dict | None = None) -> int:
    """One image at a time, fp32, models moved to the device on every call; stage seconds into ``stages``."""
    from segment_anything_hq import SamPredictor

    stages = {} if stages is None else stages
    dino, sam = grounder.dino, grounder.sam
    boxes_total = 0

    def add(stage: str, start: float) -> float:
        sync(device)
        now = time.perf_counter()
        stages[stage] = stages.get(stage, 0.0) + now - start
        return now

    for image, image_nouns in zip(images, nouns):
        start = time.perf_counter()
        image = image.convert("RGB")
        prompt = build_prompt(image_nouns)
        tensor = grounder.transform(image, None)[0]
        array = np.asarray(image)
        start = add("prep", start)
        dino = dino.to(device)
        with torch.no_grad():
            out = dino(tensor[None].to(device), captions=[prompt.text])
        probs = out["pred_logits"].cpu().sigmoid()[0].numpy()
        cxcywh = out["pred_boxes"].cpu()[0].numpy()
        keep = select_boxes(probs, grounder.box_threshold)
        owners = grounder.prompt_owners(prompt)
        assigned = assign_boxes(probs[keep], owners, grounder.text_threshold) >= 0
        boxes = gs.boxes_to_pixels(cxcywh[keep][assigned].astype(np.float64), *image.size)
        start = add("detector", start)
        if len(boxes):
            predictor = SamPredictor(sam.to(device))
            predictor.set_image(array)  # includes SAM's resize on the CPU, as the authors ran it
            transformed = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32),
                                                                array.shape[:2]).to(device)
            masks, _, _ = predictor.predict_torch(point_coords=None, point_labels=None, boxes=transformed,
                                                  multimask_output=False)
            masks.cpu()
        add("segmenter", start)
        boxes_total += len(boxes)
    sync(device)
    return boxes_total


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def rates(count: int, stages: dict, wall: float) -> dict:
    out = {f"{stage}_images_per_s": round(count / seconds, 3) if seconds else None
           for stage, seconds in stages.items()}
    out.update({f"{stage}_s": round(seconds, 3) for stage, seconds in stages.items()})
    out.update(total_s=round(wall, 3), total_images_per_s=round(count / wall, 3))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sam", default="vit_tiny", choices=("vit_tiny", "vit_b", "vit_l", "vit_h"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                        help="ours' autocast dtype (default: bf16 on a GPU, fp32 on the CPU)")
    parser.add_argument("--prep-workers", type=int, default=2)
    parser.add_argument("--boxes", type=float, default=3.0, help="boxes per image to calibrate for")
    parser.add_argument("--short-side", type=int, default=800)
    parser.add_argument("--max-side", type=int, default=1333)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "grounding.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    jpegs = sample_jpegs(args.images)
    images = opened(jpegs)
    nouns = [NOUNS[i % len(NOUNS)] for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_models(Path(tmp), args.sam)
        grounder = gs.GroundedSam(paths["dino"], paths["bert"], paths["sam"], args.sam, device=args.device,
                                  batch_size=args.batch_size, short_side=args.short_side, max_side=args.max_side,
                                  box_threshold=0.0, text_threshold=0.0, precision=args.precision,
                                  prep_workers=args.prep_workers)
        scores = np.concatenate([d.scores for d in grounder.detect(images, [build_prompt(n) for n in nouns])])
        ranked = np.sort(scores)[::-1]
        keep = min(len(ranked) - 1, max(1, int(args.boxes * len(images))))
        # midway between two scores: a threshold equal to a box's score keeps or drops it on a rounding
        threshold = float((ranked[keep - 1] + ranked[keep]) / 2)
        grounder.box_threshold, grounder.text_threshold = threshold, threshold / 2
        # warm-up both paths on one image (kernel selection, allocator)
        grounder.ground(images[:1], [None], nouns[:1])
        authors_way(grounder, images[:1], nouns[:1], args.device)

        result = {}
        grounder.timings.clear()
        images = opened(jpegs)
        ours_s = timed(lambda: result.setdefault("ours", grounder.ground(images, [None] * len(images), nouns)),
                       args.device)
        ours_stages = {k: grounder.timings[k] for k in ("prep", "detector", "segmenter")}
        ours_boxes = sum(len(g.boxes) for image in result["ours"] for g in image)
        boxes_box: list[int] = []
        authors_stages: dict = {}
        images = opened(jpegs)
        authors_s = timed(lambda: boxes_box.append(authors_way(grounder, images, nouns, args.device, authors_stages)),
                          args.device)
        if args.device != "cpu":
            grounder.dino.to("cpu"), grounder.sam.to("cpu")  # the authors' way left them anywhere

    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    report = {
        "device": args.device, "device_name": device_name, "torch_threads": torch.get_num_threads(),
        "sam": args.sam, "detector": "GroundingDINO SwinT-OGC (bert-base-sized text encoder)",
        "weights": "random", "images": args.images, "sizes": [f"{w}x{h}" for w, h in COCO_SIZES[:args.images]],
        "batch_size": args.batch_size, "prep_workers": args.prep_workers,
        "resize": [args.short_side, args.max_side], "box_threshold": round(threshold, 4),
        "ours": {"precision": grounder.precision, "boxes": ours_boxes, **rates(args.images, ours_stages, ours_s)},
        "authors": {"precision": "fp32", "boxes": boxes_box[0], **rates(args.images, authors_stages, authors_s)},
        "speedup": round(authors_s / ours_s, 2),
        "note": "stage figures sum each stage's own time; ours overlaps CPU prep with the device",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    rows = []
    for way, label, batch in (("authors", "authors (one by one, .to(device) per call)", 1),
                              ("ours", "ours (mixed sizes batched, overlapped prep)", args.batch_size)):
        r = report[way]
        rows.append(f"| {label} | {r['precision']} | {batch} | {r['prep_images_per_s']} | "
                    f"{r['detector_images_per_s']} | {r['segmenter_images_per_s']} | {r['total_images_per_s']} | "
                    f"{r['boxes']} |")
    print("| way | precision | batch | CPU prep img/s | detector img/s | segmenter img/s | total img/s | boxes |\n"
          "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
          f"\n\nspeed-up {report['speedup']}x on {args.device} ({device_name}), SAM-HQ {args.sam}, "
          f"{args.images} images of mixed sizes at short side {args.short_side}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
