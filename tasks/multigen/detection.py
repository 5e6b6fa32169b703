"""MultiGen detection: OWLv2 (transformers) on every generated image, with the prompt's categories as
text queries ("a photo of a {category}").

Scores follow the processor's ``post_process_grounded_object_detection``: each predicted box takes its best
query (argmax over the queries) with score sigmoid(logit); a category's score is the best score of the
boxes that chose it, and the category is detected when that score is above the threshold (strictly,
as the processor's ``threshold``). Each image's row lists its detected categories and keeps every
category's best score and box (also below the threshold). Results go to one
JSON Lines file per image shard, written under a temporary name and renamed, its record beside it
naming the image shard's sha256 (resumable like the images; redone when broken or when its images
were generated again). Images whose generation gave NaNs are not detected; they are recorded as such.

``detection.detector: "world"`` chooses :class:`WorldDetector` instead, the exact detector of the
synthetic world (tasks/source/world.py): each category found from the pixels by its colour and shape,
with no learned weights, behind the same ``score`` interface (:func:`open_detector` picks).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable, Sequence

from tokencompose.tasks.multigen import integrity
from tokencompose.tasks.models.weights import missing_files, read_folder_config
from tokencompose.tasks.multigen.generation import read_shard, resolve_dtype
from tokencompose.tasks.shards.shard_io import file_sha256

ARCHITECTURE = "Owlv2ForObjectDetection"
WORLD_DETECTOR = "world"    # detection.detector naming the synthetic world's exact detector


def check_owlv2_folder(path: Path) -> list[str]:
    """What is wrong with ``path`` as an OWLv2 detector folder (empty: nothing)."""
    path = Path(path)
    config, problems = read_folder_config(path, "config.json", "no config.json (not a transformers model folder)")
    if problems:
        return problems
    config_file = path / "config.json"
    kind = config.get("model_type")
    architectures = config.get("architectures") or []
    if kind != "owlv2":
        problems.append(f"{config_file}: model_type is {kind!r}, the detector must be an OWLv2 ('owlv2', "
                        f"{ARCHITECTURE})")
    elif architectures and ARCHITECTURE not in architectures:
        problems.append(f"{config_file}: architectures {architectures} do not include {ARCHITECTURE}")
    needed = (("preprocessor_config.json",), ("model.safetensors", "pytorch_model.bin"),
              ("tokenizer.json", "vocab.json"))
    return problems + missing_files(path, needed)


class Detector:
    """An OWLv2 loaded once from a local folder; :meth:`score` runs a batch of images."""

    def __init__(self, path: Path, device: str = "cpu", precision: str = "auto",
                 query_template: str = "a photo of a {category}"):
        import torch
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        problems = check_owlv2_folder(path)
        if problems:
            from tokencompose.tasks.multigen.generation import ModelFolderError

            raise ModelFolderError("; ".join(problems))
        self.device = device
        self.dtype = resolve_dtype(precision, device)
        self.template = query_template
        self.processor = Owlv2Processor.from_pretrained(path, local_files_only=True, use_fast=False)
        self.model = Owlv2ForObjectDetection.from_pretrained(path, local_files_only=True,
                                                             dtype=self.dtype).to(device).eval()
        self._torch = torch

    @classmethod
    def from_parts(cls, model, processor, device: str = "cpu", precision: str = "auto",
                   query_template: str = "a photo of a {category}") -> "Detector":
        import torch

        detector = cls.__new__(cls)
        detector.device, detector.dtype, detector.template = device, resolve_dtype(precision, device), query_template
        detector.processor, detector._torch = processor, torch
        detector.model = model.to(device=device, dtype=detector.dtype).eval()
        return detector

    def score(self, images: Sequence, categories: Sequence[Sequence[str]]) -> list[dict[str, dict]]:
        """Per image: category -> {"score": best score or None, "box": [x0, y0, x1, y1] in pixels or None}."""
        torch = self._torch
        queries = [[self.template.format(category=c) for c in cats] for cats in categories]
        encoded = self.processor(text=queries, images=list(images), return_tensors="pt")
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in encoded.items()}
        with torch.inference_mode():
            outputs = self.model(**inputs)
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        # OWLv2 pads each image to a square: boxes are relative to the padded square
        sizes = [(max(im.size), max(im.size)) for im in images]
        found = self.processor.post_process_grounded_object_detection(outputs, threshold=-1.0, target_sizes=sizes)
        results = []
        for cats, result in zip(categories, found):
            best: dict[str, dict] = {c: {"score": None, "box": None} for c in cats}
            scores, labels, boxes = result["scores"].cpu(), result["labels"].cpu(), result["boxes"].cpu()
            for q, category in enumerate(cats):
                chosen = (labels == q).nonzero().flatten()
                if len(chosen):
                    top = chosen[scores[chosen].argmax()]
                    best[category] = {"score": round(float(scores[top]), 6),
                                      "box": [round(float(v), 2) for v in boxes[top].tolist()]}
            results.append(best)
        return results


class WorldDetector:
    """The synthetic world's exact detector. A pixel is a category's when it is saturated (S > 0.5,
    V > 0.35: no background is) and its hue is within ``hue_tolerance`` degrees of the category's; the
    category's object is the largest 8-connected region of such pixels. Its score is
    ``min(1, area / min_area) * max(0, 1 - |fill - expected fill| / fill_tolerance)``, where fill is
    the region's area over its box's and the expected fill is that of the category's drawn shape: a
    blob of the right colour but the wrong shape or too small scores low. Box: the region's
    [x0, y0, x1, y1] in pixels (x1, y1 exclusive)."""

    def __init__(self, hue_tolerance: float = 12.0, fill_tolerance: float = 0.25, min_area_fraction: float = 0.006):
        from tokencompose.tasks.source.world import BY_NAME, shape_mask

        self.categories = BY_NAME
        self.hue_tolerance, self.fill_tolerance, self.min_area_fraction = hue_tolerance, fill_tolerance, min_area_fraction
        self.expected_fill = {name: _fill(shape_mask(c.shape, 64)) for name, c in BY_NAME.items()}

    def score(self, images: Sequence, categories: Sequence[Sequence[str]]) -> list[dict[str, dict]]:
        """Per image: category -> {"score": 0..1 or None (nothing of its colour), "box": [x0, y0, x1, y1] or None}."""
        import numpy as np

        results = []
        for image, names in zip(images, categories):
            unknown = [n for n in names if n not in self.categories]
            if unknown:
                raise ValueError(f"the world detector knows {sorted(self.categories)}, not {unknown}")
            hsv = np.asarray(image.convert("HSV"), dtype=np.float64)
            hue, sat, val = hsv[..., 0] * 360.0 / 255.0, hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
            vivid = (sat > 0.5) & (val > 0.35)
            min_area = self.min_area_fraction * hue.size
            results.append({name: self._find(hue, vivid, name, min_area) for name in names})
        return results

    def _find(self, hue, vivid, name: str, min_area: float) -> dict:
        import numpy as np

        distance = np.abs((hue - self.categories[name].hue + 180.0) % 360.0 - 180.0)
        region = largest_region(vivid & (distance <= self.hue_tolerance))
        if region is None:
            return {"score": None, "box": None}
        area, fill = float(region.sum()), _fill(region)
        score = min(1.0, area / min_area) * max(0.0, 1.0 - abs(fill - self.expected_fill[name]) / self.fill_tolerance)
        ys, xs = np.nonzero(region)
        return {"score": round(float(score), 6),
                "box": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]}


def largest_region(mask):
    """The largest 8-connected region of a boolean mask (the first found among equals), or None."""
    import numpy as np

    height, width = mask.shape
    unseen = mask.copy()
    best: list[tuple[int, int]] = []
    for start in zip(*np.nonzero(mask)):
        if not unseen[start]:
            continue
        unseen[start] = False
        region, frontier = [start], [start]
        while frontier:
            y, x = frontier.pop()
            for ny in range(max(0, y - 1), min(height, y + 2)):
                for nx in range(max(0, x - 1), min(width, x + 2)):
                    if unseen[ny, nx]:
                        unseen[ny, nx] = False
                        region.append((ny, nx))
                        frontier.append((ny, nx))
        if len(region) > len(best):
            best = region
    if not best:
        return None
    out = np.zeros_like(mask)
    ys, xs = zip(*best)
    out[list(ys), list(xs)] = True
    return out


def _fill(mask) -> float:
    """A region's area over its bounding box's."""
    import numpy as np

    ys, xs = np.nonzero(mask)
    return float(mask.sum()) / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))


AnyDetector = Detector | WorldDetector


def open_detector(detector: Path | str, device: str = "cpu", precision: str = "auto",
                  query_template: str = "a photo of a {category}") -> AnyDetector:
    """The detector ``detection.detector`` names: the world's exact one, or an OWLv2 folder."""
    if str(detector) == WORLD_DETECTOR:
        return WorldDetector()
    return Detector(Path(detector), device, precision, query_template)


def detections_name(shard_name: str) -> str:
    return shard_name.replace(".tar", ".jsonl")


def detected_categories(categories: Sequence[str], scores: dict[str, dict] | None, threshold: float) -> list[str]:
    """The categories whose best box scores above ``threshold`` (strictly), in prompt order."""
    scores = scores or {}
    return [c for c in categories if (scores.get(c) or {}).get("score") is not None and scores[c]["score"] > threshold]


def detect_shard(detector: AnyDetector, shard: Path, out: Path, batch_size: int, threshold: float = 0.1,
                 made_from: str | None = None, advance: Callable[[int], None] | None = None) -> dict:
    """Detect every image of ``shard`` and write its detections file (``made_from``: the shard's sha256);
    ``advance(n)`` after each batch of n images scored."""
    from PIL import Image

    rows: list[dict] = []
    pending: list[tuple[dict, "Image.Image"]] = []

    def flush() -> None:
        if not pending:
            return
        scored = detector.score([im for _, im in pending], [meta["categories"] for meta, _ in pending])
        for (meta, _), categories in zip(pending, scored):
            rows[meta["_row"]]["categories_scores"] = categories
            rows[meta["_row"]]["detected"] = detected_categories(meta["categories"], categories, threshold)
        if advance:
            advance(len(pending))
        pending.clear()

    for meta, png in read_shard(shard):
        row = {"prompt_id": meta["prompt_id"], "image_index": meta["image_index"], "categories": meta["categories"],
               "nan": meta["nan"], "threshold": threshold, "detected": [], "categories_scores": None}
        rows.append(row)
        if meta["nan"]:
            continue
        pending.append(({**meta, "_row": len(rows) - 1}, Image.open(io.BytesIO(png)).convert("RGB")))
        if len(pending) == batch_size:
            flush()
    flush()
    made_from = made_from or shard_sha256(shard)
    write_detections(out, rows, made_from)
    return {"images": len(rows), "nan": sum(r["nan"] for r in rows)}


def write_detections(out: Path, rows: Sequence[dict], made_from: str) -> None:
    """JSON Lines under a temporary name, its record beside it (with the image shard's sha256), renamed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    tmp.write_bytes(data)
    integrity.write_record(out, hashlib.sha256(data).hexdigest(), len(data), made_from)
    tmp.replace(out)


def shard_sha256(shard: Path) -> str:
    """The image shard's sha256: from its record (checked when generation looked at it), else hashed."""
    record = integrity.read_record(shard)
    return record["sha256"] if record else file_sha256(shard)


def run_detection(detector: AnyDetector, shards: Sequence[Path], out_dir: Path, batch_size: int,
                  progress: Callable[[str, dict], None] | None = None, threshold: float = 0.1,
                  redone: Callable[[Path, str], None] | None = None) -> dict:
    """Detections of every shard without intact ones made from its current images (broken or stale:
    ``redone(path, why)`` once they are made again)."""
    from tokencompose.tasks.progress import Progress

    totals = {"shards_done": 0, "shards_skipped": 0, "images": 0}
    with Progress("detection", None, "image") as images:  # the shards' sizes are known only once read
        for shard in shards:
            out = Path(out_dir) / detections_name(shard.name)
            made_from = shard_sha256(shard)
            done, reason = integrity.status(out, made_from)
            if done:
                totals["shards_skipped"] += 1
                continue
            counts = detect_shard(detector, shard, out, batch_size, threshold, made_from, advance=images.advance)
            if reason is not None and redone:
                redone(out, reason)
            totals["shards_done"] += 1
            totals["images"] += counts["images"]
            if progress:
                progress(shard.name, counts)
    return totals


class DetectionsError(ValueError):
    """A detections file that cannot be read; the message names the file and line."""


def read_detections(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DetectionsError(f"{path}: line {number}: not JSON ({error})") from None
        if not isinstance(row, dict):
            raise DetectionsError(f"{path}: line {number}: not an object")
        rows.append(row)
    return rows
