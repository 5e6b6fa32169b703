"""VISOR prompts (SR2D as create_spatial_phrases.py numbers them) and scores against a re-statement of
VISOR's own scoring (its detection post-processing and visor.py) on crafted, seeded detections."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from tokencompose.tasks.evaluation.visor import (RELATIONS, Box, boxes_from_detection, coco_categories, judge_image,
                                                 quick_prompts, relation_holds, score_rows, spatial_prompts,
                                                 sr2d_prompts)


def test_sr2d_has_visors_counts_numbering_and_articles():
    prompts = sr2d_prompts()
    assert len(prompts) == 31_680 and [p.id for p in prompts] == list(range(31_680))
    spatial = spatial_prompts()
    assert len(spatial) == 25_280 == 3_160 * 4 * 2
    assert [p.text for p in prompts[:10]] == [
        "a person to the left of a bicycle", "a bicycle to the left of a person",
        "a person to the right of a bicycle", "a bicycle to the right of a person",
        "a person above a bicycle", "a bicycle above a person", "a person below a bicycle", "a bicycle below a person",
        "a person and a bicycle", "a bicycle and a person"]
    assert prompts[-1].to_row() == {"unique_id": 31_679, "num_objects": 1, "obj_1_attributes": ["toothbrush"],
                                    "obj_2_attributes": [None], "rel_type": "single", "text": "a toothbrush"}
    texts = {p.text for p in spatial}
    assert "an umbrella above an elephant" in texts and "a tv below an oven" in texts
    assert {(p.subject, p.object) for p in spatial} == set(itertools.permutations(coco_categories(), 2))


def test_quick_prompts_are_a_seeded_spread_in_id_order():
    spatial = spatial_prompts()
    first, again, other = (quick_prompts(spatial, 50, seed) for seed in (0, 0, 1))
    assert first == again and first != other
    assert [p.id for p in first] == sorted(p.id for p in first)
    assert len({p.subject for p in first}) > 10


# --- VISOR's scoring, re-stated from its code: per image the kept boxes' labels and centroids, ``sra``
# from the first box pair that follows the relation; then visor.py's sums.
def reference_detection(boxes, obj1, obj2, rel, threshold=0.1):
    labels, centroids = [], []
    for b in boxes:
        if b.score > threshold:
            labels.append(b.label)
            centroids.append(((b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2))
    sra = 0
    if obj1 in labels and obj2 in labels:
        idx1 = [i for i, label in enumerate(labels) if label == obj1]
        idx2 = [i for i, label in enumerate(labels) if label == obj2]
        for i1, i2 in itertools.product(idx1, idx2):
            xdist = centroids[i1][0] - centroids[i2][0]
            ydist = centroids[i1][1] - centroids[i2][1]
            if (rel == "to the left of" and xdist < 0) or (rel == "to the right of" and xdist > 0) or \
                    (rel == "above" and ydist < 0) or (rel == "below" and ydist > 0):
                sra = 1
                break
    return {"classes": labels, "sra": sra}


def reference_visor(results, prompts_by_id):
    objacc_both = objacc_a = objacc_b = correct = both_count = count = 0
    by_uniq: dict[int, list[int]] = {}
    for img_id, rr in results.items():
        uniq_id = int(img_id.split("_")[0])
        p = prompts_by_id[uniq_id]
        detected = rr["classes"]
        det_both = int(p.subject in detected and p.object in detected)
        objacc_both += det_both
        objacc_a += int(p.subject in detected)
        objacc_b += int(p.object in detected)
        correct += det_both * rr["sra"]
        both_count += det_both
        count += 1
        by_uniq.setdefault(uniq_id, []).append(det_both * rr["sra"])
    visor_cond = 100 * correct / both_count
    objacc = [100 * objacc_a / count, 100 * objacc_b / count, 100 * objacc_both / count]
    visor_n = [100 * sum(sum(s) >= n for s in by_uniq.values()) / len(by_uniq) for n in (1, 2, 3, 4)]
    return {"OA": objacc[2], "OA_subject": objacc[0], "OA_object": objacc[1], "VISOR_cond": visor_cond,
            "VISOR_uncond": 0.01 * visor_cond * objacc[2], "visor_n": visor_n}


def crafted_boxes(rng: random.Random, prompt, size=64):
    """0-4 boxes per image, labels from the prompt's objects or another category, scores around 0.1 (some
    exactly 0.1), coordinates on a coarse grid so equal centroids (ties) happen."""
    boxes = []
    for _ in range(rng.randrange(5)):
        label = rng.choice([prompt.subject, prompt.object, prompt.object, "other"])
        score = rng.choice([0.05, 0.1, 0.1000001, 0.3, 0.9])
        x0, y0 = rng.randrange(0, size, 8), rng.randrange(0, size, 8)
        boxes.append(Box(label, score, (x0, y0, x0 + rng.randrange(8, 32, 8), y0 + rng.randrange(8, 32, 8))))
    return boxes


def test_scores_equal_visors_on_crafted_detections():
    rng = random.Random(7)
    prompts = quick_prompts(spatial_prompts(), 40, seed=3)
    rows, results = [], {}
    for p in prompts:
        for index in range(4):
            boxes = crafted_boxes(rng, p)
            rows.append({"prompt_id": p.id, "image_index": index, "nan": False,
                         "boxes": [{"label": b.label, "score": b.score, "box": list(b.box)} for b in boxes]})
            results[f"{p.id}_{index}"] = reference_detection(boxes, p.subject, p.object, p.relation)
    expected = reference_visor(results, {p.id: p for p in prompts})
    ours = score_rows(prompts, rows).to_dict()
    assert 0 < expected["OA"] < 100 and 0 < expected["VISOR_cond"] < 100      # the case is not degenerate
    for key in ("OA", "OA_subject", "OA_object", "VISOR_cond", "VISOR_uncond"):
        assert ours[key] == pytest.approx(expected[key], rel=1e-12), key
    assert [ours[f"VISOR_{n}"] for n in (1, 2, 3, 4)] == pytest.approx(expected["visor_n"], rel=1e-12)
    assert sum(ours["per_relation"][r]["images"] for r in RELATIONS) == len(rows)


def test_relation_rules_are_strict_centroid_comparisons_and_any_pair_suffices():
    a_left = [Box("cat", 0.5, (0, 0, 10, 10)), Box("dog", 0.5, (20, 0, 30, 10))]   # cat centroid x 5, dog x 25
    assert relation_holds(a_left, "cat", "dog", "to the left of")
    assert not relation_holds(a_left, "cat", "dog", "to the right of")
    same = [Box("cat", 0.5, (0, 0, 10, 10)), Box("dog", 0.5, (0, 0, 10, 10))]
    assert not any(relation_holds(same, "cat", "dog", r) for r in RELATIONS)
    # y grows downwards: a box higher in the image is "above"
    stacked = [Box("cat", 0.5, (0, 0, 10, 10)), Box("dog", 0.5, (0, 40, 10, 50)), Box("dog", 0.5, (0, -40, 10, -30))]
    assert relation_holds(stacked, "cat", "dog", "above") and relation_holds(stacked, "cat", "dog", "below")


def test_a_box_at_the_threshold_is_not_a_detection_and_nan_images_are_apart():
    prompt = next(p for p in spatial_prompts() if p.relation == "to the left of")
    assert prompt.object is not None
    boxes = [Box(prompt.subject, 0.1, (0, 0, 10, 10)), Box(prompt.object, 0.5, (20, 0, 30, 10))]
    result = judge_image(prompt, boxes)
    assert (result.detected_subject, result.detected_object, result.relation_correct) == (False, True, False)
    rows = [{"prompt_id": prompt.id, "image_index": 0, "nan": True, "boxes": []},
            {"prompt_id": prompt.id, "image_index": 1, "nan": False,
             "boxes": [{"label": prompt.subject, "score": 0.2, "box": [0, 0, 10, 10]},
                       {"label": prompt.object, "score": 0.2, "box": [20, 0, 30, 10]}]}]
    scores = score_rows([prompt], rows)
    assert (scores.images, scores.scored, scores.nan, scores.oa, scores.visor_cond) == (2, 1, 1, 100.0, 100.0)
    nobody = score_rows([prompt], rows[1:], threshold=0.5)
    assert nobody.oa == 0 and math.isnan(nobody.visor_cond) and nobody.visor_uncond == 0


def test_bad_rows_name_what_is_wrong():
    prompt = spatial_prompts()[0]
    with pytest.raises(ValueError, match="detection box 0"):
        score_rows([prompt], [{"prompt_id": prompt.id, "nan": False, "boxes": [{"label": "cat", "score": 1}]}])
    with pytest.raises(ValueError, match="prompt_id 99999"):
        score_rows([prompt], [{"prompt_id": 99999, "nan": False, "boxes": []}])
    with pytest.raises(ValueError, match="not a spatial prompt"):
        judge_image(sr2d_prompts()[8], [])


def test_boxes_from_a_detector_result_take_the_query_labels():
    boxes = boxes_from_detection([0.3, 0.05], [1, 0], [[0, 0, 2, 2], [1, 1, 3, 5]], ["cat", "dog"])
    assert boxes == [Box("dog", 0.3, (0, 0, 2, 2)), Box("cat", 0.05, (1, 1, 3, 5))]
    assert boxes[1].centroid == (2.0, 3.0)


def test_detected_boxes_carry_the_query_labels_and_do_not_depend_on_the_batch():
    import numpy as np
    from PIL import Image

    from tokencompose.tasks.evaluation.visor import detect_boxes
    from tokencompose.tasks.multigen.toy import owlv2_parts

    model, processor = owlv2_parts("tiny", seed=0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)) for _ in range(2)]
    objects = [("cat", "dog"), ("tv", "oven")]
    together = detect_boxes(model, processor, images, objects, min_score=0.0)
    alone = [detect_boxes(model, processor, [im], [names], min_score=0.0)[0] for im, names in zip(images, objects)]
    assert all(len(boxes) > 0 for boxes in together)
    for boxes, single, names in zip(together, alone, objects):
        assert {b.label for b in boxes} <= set(names)
        assert [b.label for b in boxes] == [b.label for b in single]
        assert [b.score for b in boxes] == pytest.approx([b.score for b in single], abs=1e-5)
        assert all(-64 <= v <= 128 for b in boxes for v in b.box)     # pixels of the 64-wide padded square
    cut = sorted(b.score for b in together[0])[len(together[0]) // 2]
    assert all(b.score > cut for b in detect_boxes(model, processor, images[:1], objects[:1], min_score=cut)[0])
