"""Grounded-SAM stage speed: this project's way against the authors' way, in one run.

ours:     GroundedSam.ground -- images batched (GroundingDINO by equal resized size, SAM-HQ image
          encoder by batch), fp16 autocast on a GPU, models loaded once and kept on the device.
authors:  one image at a time, fp32, GroundingDINO and SAM-HQ moved to the device on every call
          (as groundingdino.util.inference.predict does with ``model.to(device)``), SamPredictor
          set_image + predict_torch with all boxes of the image.

Both use full-size architectures with random weights (no weights can be downloaded here):
GroundingDINO SwinT-OGC with a bert-base-sized text encoder (12 layers, hidden 768, small
vocabulary) and SAM-HQ of the chosen variant. Random detectors score every query alike, so a box
threshold is calibrated first to keep about --boxes boxes per image, the same for both ways.

CPU: use --sam vit_tiny; both ways run fp32 there (CPU half precision is slow or unsupported),
so the CPU ratio shows batching and load-once only. GPU: --device cuda --sam vit_h.

    python bench/bench_grounding.py                       # CPU, vit_tiny, 4 sample images
    python bench/bench_grounding.py --device cuda --sam vit_h --images 16 --batch-size 8
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tokencompose.tasks import grounded_sam as gs  # noqa: E402
from tokencompose.tasks.token_assignment import assign_boxes, build_prompt, select_boxes  # noqa: E402

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


def sample_images(count: int):
    from PIL import Image

    files = sorted((ROOT / "tokencompose" / "data" / "sample" / "images").glob("*.jpg"))
    return [Image.open(files[i % len(files)]).convert("RGB") for i in range(count)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def authors_way(grounder: gs.GroundedSam, images, nouns, device: str) -> int:
    """One image at a time, fp32, models moved to the device on every call."""
    from segment_anything_hq import SamPredictor

    dino, sam = grounder.dino, grounder.sam
    boxes_total = 0
    for image, image_nouns in zip(images, nouns):
        prompt = build_prompt(image_nouns)
        tensor = grounder.transform(image, None)[0]
        dino = dino.to(device)
        with torch.no_grad():
            out = dino(tensor[None].to(device), captions=[prompt.text])
        probs = out["pred_logits"].cpu().sigmoid()[0].numpy()
        cxcywh = out["pred_boxes"].cpu()[0].numpy()
        keep = select_boxes(probs, grounder.box_threshold)
        owners = grounder.prompt_owners(prompt)
        assigned = assign_boxes(probs[keep], owners, grounder.text_threshold) >= 0
        boxes = gs.boxes_to_pixels(cxcywh[keep][assigned].astype(np.float64), *image.size)
        if len(boxes):
            predictor = SamPredictor(sam.to(device))
            predictor.set_image(np.asarray(image))
            transformed = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32),
                                                                np.asarray(image).shape[:2]).to(device)
            masks, _, _ = predictor.predict_torch(point_coords=None, point_labels=None, boxes=transformed,
                                                  multimask_output=False)
            masks.cpu()
        boxes_total += len(boxes)
    sync(device)
    return boxes_total


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sam", default="vit_tiny", choices=("vit_tiny", "vit_b", "vit_l", "vit_h"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--boxes", type=float, default=3.0, help="boxes per image to calibrate for")
    parser.add_argument("--short-side", type=int, default=800)
    parser.add_argument("--max-side", type=int, default=1333)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "grounding.json"))
    args = parser.parse_args(argv)

    half = args.device.startswith("cuda")
    images = sample_images(args.images)
    nouns = [NOUNS[i % len(NOUNS)] for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_models(Path(tmp), args.sam)
        grounder = gs.GroundedSam(paths["dino"], paths["bert"], paths["sam"], args.sam, device=args.device,
                                  half_precision=half, batch_size=args.batch_size, short_side=args.short_side,
                                  max_side=args.max_side, box_threshold=0.0, text_threshold=0.0)
        scores = np.concatenate([d.scores for d in grounder.detect(images, [build_prompt(n) for n in nouns])])
        threshold = float(np.sort(scores)[::-1][min(len(scores) - 1, int(args.boxes * len(images)))])
        grounder.box_threshold, grounder.text_threshold = threshold, threshold / 2
        # warm-up both paths on one image (kernel selection, allocator)
        grounder.ground(images[:1], [None], nouns[:1])
        authors_way(grounder, images[:1], nouns[:1], args.device)

        result = {}
        ours_s = timed(lambda: result.setdefault("ours", grounder.ground(images, [None] * len(images), nouns)),
                       args.device)
        ours_boxes = sum(len(g.boxes) for image in result["ours"] for g in image)
        boxes_box: list[int] = []
        authors_s = timed(lambda: boxes_box.append(authors_way(grounder, images, nouns, args.device)), args.device)
        if args.device != "cpu":
            grounder.dino.to("cpu"), grounder.sam.to("cpu")  # the authors' way left them anywhere

    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    report = {
        "device": args.device, "device_name": device_name, "torch_threads": torch.get_num_threads(),
        "sam": args.sam, "detector": "GroundingDINO SwinT-OGC (bert-base-sized text encoder)",
        "weights": "random", "images": args.images, "batch_size": args.batch_size,
        "resize": [args.short_side, args.max_side], "box_threshold": round(threshold, 4),
        "ours": {"precision": "fp16-autocast" if half else "fp32", "seconds": round(ours_s, 3),
                 "per_image_s": round(ours_s / args.images, 3), "boxes": ours_boxes},
        "authors": {"precision": "fp32", "seconds": round(authors_s, 3),
                    "per_image_s": round(authors_s / args.images, 3), "boxes": boxes_box[0]},
        "speedup": round(authors_s / ours_s, 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| way | precision | batch | s/image | boxes |\n|---|---|---|---|---|\n"
          f"| authors (one by one, .to(device) per call) | fp32 | 1 | {report['authors']['per_image_s']} | "
          f"{report['authors']['boxes']} |\n"
          f"| ours (batched, loaded once) | {report['ours']['precision']} | {args.batch_size} | "
          f"{report['ours']['per_image_s']} | {ours_boxes} |\n\n"
          f"speed-up {report['speedup']}x on {args.device} ({device_name}), SAM-HQ {args.sam}, "
          f"{args.images} images at short side {args.short_side}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
