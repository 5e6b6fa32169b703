"""The world report's per-noun comparisons from two grounding.json files written by hand: the IoU, the
specificity and the token attribution (docs/world.md, protocol v3), each a paired comparison over the
(image, noun) pairs both models have, nouns without the subtracted figure left out."""
from __future__ import annotations

import json

import pytest

from tokencompose.tasks.demo.world_report import GROUNDED, PLAIN, iou_comparison, noun_ious


def noun(key: str, iou: float, next_iou: float | None, previous_iou: float | None, other_iou: float | None) -> dict:
    return {"key": key, "noun": "kite", "tokens": [2], "iou": iou, "predicted_pixels": 1, "mask_pixels": 1,
            "other_iou": other_iou, "next_iou": next_iou, "previous_iou": previous_iou}


@pytest.fixture
def evaluation(tmp_path):
    nouns = {PLAIN: [noun("a", 0.10, 0.10, 0.05, 0.10), noun("b", 0.20, 0.10, None, None)],
             GROUNDED: [noun("a", 0.40, 0.20, 0.15, 0.30), noun("b", 0.30, 0.30, None, None)]}
    for label, per_noun in nouns.items():
        (tmp_path / label).mkdir()
        (tmp_path / label / "grounding.json").write_text(json.dumps({"result": {"per_noun": per_noun}}))
    return tmp_path


def test_attribution_is_the_nouns_iou_minus_its_neighbours_on_the_same_mask(evaluation):
    assert noun_ious(evaluation, GROUNDED, "attribution_next") == {("a", "kite@[2]"): pytest.approx(0.2),
                                                                  ("b", "kite@[2]"): pytest.approx(0.0)}
    assert noun_ious(evaluation, GROUNDED, "attribution_previous") == {("a", "kite@[2]"): pytest.approx(0.25)}
    assert noun_ious(evaluation, PLAIN, "specificity") == {("a", "kite@[2]"): pytest.approx(0.0)}


def test_grounded_minus_plain_attribution_is_the_nouns_gain_minus_its_neighbours_gain(evaluation):
    compared = iou_comparison(evaluation, 200, 0, 0.95, "attribution_next")
    # a: (0.40 - 0.10) - (0.20 - 0.10) = 0.20; b: (0.30 - 0.20) - (0.30 - 0.10) = -0.10
    assert compared["diff"] == pytest.approx(0.05) and compared["pairs"] == 2 and compared["images"] == 2
    assert compared["plain"] == pytest.approx(0.05) and compared["grounded"] == pytest.approx(0.10)
    assert compared["low"] <= compared["diff"] <= compared["high"]
    assert iou_comparison(evaluation, 200, 0, 0.95, "attribution_previous")["pairs"] == 1


def test_an_unknown_quantity_is_refused_by_name(evaluation):
    with pytest.raises(ValueError, match="'attribution_after'.*attribution_next"):
        noun_ious(evaluation, PLAIN, "attribution_after")
