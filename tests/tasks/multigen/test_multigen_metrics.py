"""MG1-MG5, per-category and per-pair rates, and the paired bootstrap, on crafted detections."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tokencompose.tasks.multigen.metrics import detected, paired_bootstrap, score_rows

CATS = ["cat", "dog", "cup", "car", "bus"]


def image(prompt_id, index, found, nan=False, cats=CATS, below=()):
    """A detections row: ``found`` categories score 0.5, ``below`` score exactly the threshold (0.1), others 0.05."""
    scores = {c: {"score": 0.5 if c in found else (0.1 if c in below else 0.05), "box": [0, 0, 1, 1]} for c in cats}
    return {"prompt_id": prompt_id, "image_index": index, "categories": cats, "nan": nan,
            "categories_scores": None if nan else scores}


def test_detection_is_strictly_above_the_threshold():
    assert detected(image(0, 0, ["cat"], below=["dog"]), 0.1) == ["cat"]
    assert detected(image(0, 0, ["cat"], nan=True), 0.1) == []


def test_mg_levels_and_population_std_equal_a_hand_count():
    # 2 prompts x 2 rounds; detected counts: round 0 -> 5 and 2, round 1 -> 3 and 0
    rows = [image(0, 0, CATS), image(1, 0, CATS[:2]), image(0, 1, CATS[:3]), image(1, 1, [])]
    scores = score_rows(rows, 0.1)
    expected_rounds = {1: (100, 50), 2: (100, 50), 3: (50, 50), 4: (50, 0), 5: (50, 0)}
    for k, (r0, r1) in expected_rounds.items():
        mg = scores.mg[f"MG{k}"]
        assert mg["rounds"] == [r0, r1]
        assert mg["mean"] == pytest.approx((r0 + r1) / 2)
        assert mg["std"] == pytest.approx(abs(r0 - r1) / 2)   # population std of two values
    assert (scores.images, scores.scored, scores.nan, scores.rounds) == (4, 4, 0, 2)


def test_three_rounds_std_is_the_population_one():
    rows = [image(0, r, CATS[:n]) for r, n in enumerate([5, 3, 4])]
    mg5 = score_rows(rows, 0.1).mg["MG5"]
    assert mg5["rounds"] == [100, 0, 0]
    assert mg5["std"] == pytest.approx(math.sqrt(((100 - 100 / 3) ** 2 + 2 * (100 / 3) ** 2) / 3))
    assert mg5["std"] == pytest.approx(float(np.std([100, 0, 0])))


def test_nan_images_are_counted_and_never_scored():
    rows = [image(0, 0, CATS), image(1, 0, [], nan=True), image(0, 1, CATS[:1]), image(1, 1, CATS[:1])]
    scores = score_rows(rows, 0.1)
    assert (scores.images, scores.scored, scores.nan) == (4, 3, 1)
    assert scores.mg["MG5"]["rounds"] == [100, 0]          # round 0 is its one scored image
    assert scores.mg["MG1"]["rounds"] == [100, 100]
    assert scores.categories["dog"] == {"images": 3, "detected": 1, "rate": pytest.approx(1 / 3)}


def test_category_and_pair_rates():
    other = ["cat", "dog", "kite", "boat", "sink"]
    rows = [image(0, 0, ["cat", "dog"]), image(0, 1, ["cat"]), image(1, 0, ["dog", "kite"], cats=other)]
    scores = score_rows(rows, 0.1)
    assert scores.categories["cat"] == {"images": 3, "detected": 2, "rate": pytest.approx(2 / 3)}
    assert scores.categories["kite"]["rate"] == 1.0 and scores.categories["bus"]["rate"] == 0.0
    assert scores.pairs["cat & dog"] == {"images": 3, "both": 1, "rate": pytest.approx(1 / 3)}
    assert scores.pairs["dog & kite"]["both"] == 1 and scores.pairs["cup & dog"]["both"] == 0
    assert len(scores.pairs) == 10 + 9   # 10 pairs per prompt, "cat & dog" shared


def test_paired_bootstrap_is_seeded_and_brackets_the_difference():
    base = [image(p, r, CATS[:2]) for p in range(30) for r in range(2)]
    better = [image(p, r, CATS[:4] if p % 3 else CATS[:2]) for p in range(30) for r in range(2)]
    same = paired_bootstrap(base, base, 0.1, 3, 500, 0, 0.95)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0, "prompts": 30}
    first = paired_bootstrap(base, better, 0.1, 3, 500, 0, 0.95)
    assert first == paired_bootstrap(base, better, 0.1, 3, 500, 0, 0.95)
    assert first["diff"] == pytest.approx(100 * 20 / 30)
    assert 0 < first["low"] < first["diff"] < first["high"] <= 100
    # MG1 does not change: both models detect at least one category everywhere
    assert paired_bootstrap(base, better, 0.1, 1, 200, 0, 0.95)["high"] == 0.0
