"""VISOR (Gokhale et al., microsoft/VISOR): the SR2D spatial prompts and their scores from detections.

Prompts follow VISOR's ``create_spatial_phrases.py``: for every unordered pair (A, B) of the 80 COCO
categories, in ``itertools.combinations`` order of the categories' COCO id order, and for each relation
"to the left of", "to the right of", "above", "below" in that order, the prompt "A rel B" then "B rel A";
after a pair's eight spatial prompts come its two "and" prompts ("A and B", "B and A"); after all
pairs, one single-object prompt per category. Articles are ``inflect``'s ("an umbrella", "a tv").
Ids are the running count over all of them, as VISOR numbers its rows (31,680 in all), so our
ids match theirs; the 25,280 spatial prompts are the ones VISOR scores.

Scores follow VISOR's scoring (its ``visor.py`` and the notebook that makes the detection files):
- an image's detections are every box whose score is above the threshold (strictly; 0.1 by
  default), each labelled with its best query among the prompt's two objects;
- a box's centroid is the centre of (x0, y0, x1, y1), in image pixels with y growing downwards;
- the relation holds (``sra`` = 1) when both objects are detected and at least one pair of boxes
  (a box of A, a box of B) satisfies it strictly: left of: x_A < x_B; right of: x_A > x_B;
  above: y_A < y_B; below: y_A > y_B;
- OA = 100 x the share of images where both objects are detected (OA_A, OA_B for each alone);
  VISOR_cond = 100 x the share of those images whose relation holds; VISOR_uncond = VISOR_cond x OA
  / 100 = 100 x the share of all images whose relation holds; VISOR_n = 100 x the share of prompts
  with at least n images (of theirs) whose objects are both detected in the right relation, n = 1..4.
Images whose generation produced NaNs are counted apart and never scored (as MultiGen's metrics do).
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from itertools import combinations
from typing import Iterable, Mapping, Sequence

from tokencompose.data import DATA_DIR

RELATIONS = ("to the left of", "to the right of", "above", "below")
SPATIAL = "spatial"
AND = "and"
SINGLE = "single"
VISOR_LEVELS = (1, 2, 3, 4)
DEFAULT_THRESHOLD = 0.1
QUERY_TEMPLATE = "a photo of a {category}"


def coco_categories() -> list[str]:
    """The 80 COCO category names in COCO id order (the bundled table), VISOR's object list."""
    with open(DATA_DIR / "coco_categories.csv", newline="", encoding="utf-8") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: int(row["id"]))
    return [row["name"] for row in rows]


@dataclass(frozen=True)
class SpatialPrompt:
    """One SR2D row: ``subject`` ``relation`` ``object`` (``object`` is None for a single-object prompt)."""

    id: int
    text: str
    subject: str
    object: str | None
    relation: str
    kind: str

    @property
    def categories(self) -> tuple[str, ...]:
        return (self.subject,) if self.object is None else (self.subject, self.object)

    def to_row(self) -> dict:
        """The row as VISOR's ``text_spatial_rel_phrases.json`` writes it."""
        return {"unique_id": self.id, "num_objects": len(self.categories), "obj_1_attributes": [self.subject],
                "obj_2_attributes": [self.object], "rel_type": self.relation, "text": self.text}


def sr2d_prompts(categories: Sequence[str] | None = None) -> list[SpatialPrompt]:
    """Every SR2D prompt (spatial, "and", single) in VISOR's order and numbering."""
    import inflect

    names = list(categories) if categories is not None else coco_categories()
    if len(set(names)) != len(names):
        raise ValueError(f"VISOR categories must be distinct; repeated: {sorted({n for n in names if names.count(n) > 1})}")
    engine = inflect.engine()
    articled = {name: engine.a(name) for name in names}
    prompts: list[SpatialPrompt] = []

    def add(subject: str, obj: str | None, relation: str, kind: str) -> None:
        words = [articled[subject]] if obj is None else [articled[subject], relation, articled[obj]]
        prompts.append(SpatialPrompt(len(prompts), " ".join(words), subject, obj, relation, kind))

    for first, second in combinations(names, 2):
        for relation in RELATIONS:
            add(first, second, relation, SPATIAL)
            add(second, first, relation, SPATIAL)
        add(first, second, AND, AND)
        add(second, first, AND, AND)
    for name in names:
        add(name, None, SINGLE, SINGLE)
    return prompts


def spatial_prompts(categories: Sequence[str] | None = None) -> list[SpatialPrompt]:
    """The prompts VISOR scores: two objects in one of the four relations (25,280 for COCO's 80)."""
    return [p for p in sr2d_prompts(categories) if p.kind == SPATIAL]


def quick_prompts(prompts: Sequence[SpatialPrompt], count: int, seed: int = 0) -> list[SpatialPrompt]:
    """``count`` prompts drawn without replacement by a seeded RNG, in id order (the first rows of the
    full set all name "person", so a prefix would not be a fair quick run)."""
    if count >= len(prompts):
        return list(prompts)
    chosen = random.Random(seed).sample(range(len(prompts)), count)
    return [prompts[i] for i in sorted(chosen)]


@dataclass(frozen=True)
class Box:
    """One detected box: its label (the prompt object it matched best), score and (x0, y0, x1, y1)."""

    label: str
    score: float
    box: tuple[float, float, float, float]

    @property
    def centroid(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


def boxes_above(boxes: Iterable[Box], threshold: float = DEFAULT_THRESHOLD) -> list[Box]:
    return [b for b in boxes if b.score > threshold]


def boxes_from_rows(rows: Iterable[Mapping]) -> list[Box]:
    """Boxes from stored JSON rows ``{"label", "score", "box"}``; a bad row names its field."""
    boxes = []
    for number, row in enumerate(rows):
        try:
            x0, y0, x1, y1 = (float(v) for v in row["box"])
            boxes.append(Box(str(row["label"]), float(row["score"]), (x0, y0, x1, y1)))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"detection box {number}: expected label, score and a 4-number box ({error!r})") from None
    return boxes


def relation_holds(boxes: Sequence[Box], subject: str, obj: str, relation: str) -> bool:
    """Whether some (subject box, object box) pair's centroids satisfy ``relation`` strictly."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown VISOR relation {relation!r}; known: {', '.join(RELATIONS)}")
    for a in (b.centroid for b in boxes if b.label == subject):
        for o in (b.centroid for b in boxes if b.label == obj):
            dx, dy = a[0] - o[0], a[1] - o[1]
            if ((relation == "to the left of" and dx < 0) or (relation == "to the right of" and dx > 0)
                    or (relation == "above" and dy < 0) or (relation == "below" and dy > 0)):
                return True
    return False


@dataclass(frozen=True)
class ImageResult:
    prompt_id: int
    detected_subject: bool
    detected_object: bool
    relation_correct: bool

    @property
    def both(self) -> bool:
        return self.detected_subject and self.detected_object


def judge_image(prompt: SpatialPrompt, boxes: Sequence[Box], threshold: float = DEFAULT_THRESHOLD) -> ImageResult:
    """One image of a spatial prompt judged from its boxes (all of them; those above ``threshold`` count)."""
    if prompt.kind != SPATIAL or prompt.object is None:
        raise ValueError(f"prompt {prompt.id} ({prompt.text!r}) is not a spatial prompt; VISOR scores only those")
    kept = boxes_above(boxes, threshold)
    labels = {b.label for b in kept}
    has_subject, has_object = prompt.subject in labels, prompt.object in labels
    holds = has_subject and has_object and relation_holds(kept, prompt.subject, prompt.object, prompt.relation)
    return ImageResult(prompt.id, has_subject, has_object, holds)


@dataclass
class VisorScores:
    images: int
    scored: int
    nan: int
    prompts: int
    oa: float
    oa_subject: float
    oa_object: float
    visor_cond: float
    visor_uncond: float
    visor_n: dict[str, float] = field(default_factory=dict)
    per_relation: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"images": self.images, "scored": self.scored, "nan": self.nan, "prompts": self.prompts,
                "OA": self.oa, "OA_subject": self.oa_subject, "OA_object": self.oa_object,
                "VISOR_cond": self.visor_cond, "VISOR_uncond": self.visor_uncond, **self.visor_n,
                "per_relation": self.per_relation}


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else float("nan")


def aggregate(results: Sequence[ImageResult], relations: Mapping[int, str] | None = None,
              nan_images: int = 0) -> VisorScores:
    """OA, VISOR_cond, VISOR_uncond and VISOR_1-4 over judged images (``relations``: prompt id ->
    relation, for the per-relation OA and VISOR_cond)."""
    both = sum(r.both for r in results)
    correct = sum(r.both and r.relation_correct for r in results)
    per_prompt: dict[int, int] = {}
    for r in results:
        per_prompt[r.prompt_id] = per_prompt.get(r.prompt_id, 0) + int(r.both and r.relation_correct)
    scores = VisorScores(
        images=len(results) + nan_images, scored=len(results), nan=nan_images, prompts=len(per_prompt),
        oa=_percent(both, len(results)), oa_subject=_percent(sum(r.detected_subject for r in results), len(results)),
        oa_object=_percent(sum(r.detected_object for r in results), len(results)),
        visor_cond=_percent(correct, both), visor_uncond=_percent(correct, len(results)),
        visor_n={f"VISOR_{n}": _percent(sum(c >= n for c in per_prompt.values()), len(per_prompt))
                 for n in VISOR_LEVELS})
    if relations is not None:
        for relation in RELATIONS:
            members = [r for r in results if relations[r.prompt_id] == relation]
            if members:
                scores.per_relation[relation] = {
                    "images": len(members), "OA": _percent(sum(r.both for r in members), len(members)),
                    "VISOR_cond": _percent(sum(r.both and r.relation_correct for r in members),
                                           sum(r.both for r in members))}
    return scores


def score_rows(prompts: Sequence[SpatialPrompt], rows: Sequence[Mapping],
               threshold: float = DEFAULT_THRESHOLD) -> VisorScores:
    """VISOR scores of detection rows ``{"prompt_id", "image_index", "nan", "boxes": [{"label", "score",
    "box"}]}`` (every box the detector gave, below the threshold too); NaN images are counted apart."""
    by_id = {p.id: p for p in prompts}
    results, nan_images = [], 0
    for number, row in enumerate(rows):
        prompt = by_id.get(row["prompt_id"])
        if prompt is None:
            raise ValueError(f"detection row {number}: prompt_id {row['prompt_id']} is not among the VISOR prompts")
        if row.get("nan"):
            nan_images += 1
            continue
        results.append(judge_image(prompt, boxes_from_rows(row.get("boxes") or []), threshold))
    return aggregate(results, {p.id: p.relation for p in prompts}, nan_images)


def boxes_from_detection(scores: Sequence[float], labels: Sequence[int], boxes: Sequence[Sequence[float]],
                         queries: Sequence[str]) -> list[Box]:
    """Boxes from a transformers OWL-ViT/OWLv2 ``post_process_object_detection`` result (one image:
    each box's best query index ``labels[i]`` into ``queries``, the prompt's objects in order)."""
    out = []
    for score, label, box in zip(scores, labels, boxes):
        x0, y0, x1, y1 = (float(v) for v in box)
        out.append(Box(queries[int(label)], float(score), (x0, y0, x1, y1)))
    return out


def detect_boxes(model, processor, images: Sequence, objects: Sequence[Sequence[str]],
                 min_score: float = DEFAULT_THRESHOLD, template: str = QUERY_TEMPLATE) -> list[list[Box]]:
    """Every box scoring above ``min_score`` on each image, with an OWL-ViT (VISOR's detector) or OWLv2 from
    transformers: queries "a photo of a {object}" for the image's objects, each box labelled with its best
    query (the processor's ``post_process_grounded_object_detection``), in pixels of the image (OWLv2's
    boxes are relative to the image padded to a square, so its side is the target size)."""
    import torch

    if len(images) != len(objects):
        raise ValueError(f"VISOR detection needs the objects of every image: {len(images)} images, "
                         f"{len(objects)} object lists")
    queries = [[template.format(category=c) for c in names] for names in objects]
    inputs = processor(text=queries, images=list(images), return_tensors="pt")
    parameter = next(model.parameters())
    inputs = {k: (v.to(parameter.device, parameter.dtype) if v.is_floating_point() else v.to(parameter.device))
              for k, v in inputs.items()}
    with torch.inference_mode():
        outputs = model(**inputs)
    outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
    square = getattr(model.config, "model_type", "") == "owlv2"
    sizes = [(max(im.size), max(im.size)) if square else (im.size[1], im.size[0]) for im in images]
    found = processor.post_process_grounded_object_detection(outputs, threshold=min_score, target_sizes=sizes)
    return [boxes_above(boxes_from_detection(r["scores"].tolist(), r["labels"].tolist(), r["boxes"].tolist(), names),
                        min_score)
            for r, names in zip(found, objects)]
