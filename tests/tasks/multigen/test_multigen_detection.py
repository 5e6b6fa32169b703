"""OWLv2 detection through transformers with a tiny random OWLv2 folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tokencompose.tasks.multigen import detection as det
from tokencompose.tasks.multigen.generation import ModelFolderError

CATS = ["cat", "dog", "wine glass", "car", "bus"]


def images(count, size=48):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def test_every_category_gets_its_best_box_and_batches_equal_single_images(tiny_owl):
    detector = det.Detector(tiny_owl, "cpu", "fp32")
    pictures = images(3)
    batch = detector.score(pictures, [CATS] * 3)
    assert all(list(result) == CATS for result in batch)
    scored = [v for result in batch for v in result.values() if v["score"] is not None]
    assert scored and all(0 <= v["score"] <= 1 and len(v["box"]) == 4 for v in scored)
    single = detector.score(pictures[2:], [CATS])[0]
    for category in CATS:
        a, b = batch[2][category]["score"], single[category]["score"]
        assert (a is None) == (b is None) and (a is None or abs(a - b) < 1e-4)


def test_an_owl_folder_of_another_architecture_is_refused(tiny_owl, tmp_path):
    from transformers import OwlViTConfig

    assert det.check_owlv2_folder(tiny_owl) == []
    other = tmp_path / "owlvit"
    OwlViTConfig().save_pretrained(other)
    problems = det.check_owlv2_folder(other)
    assert "model_type is 'owlvit'" in problems[0] and any("preprocessor_config.json" in p for p in problems)
    wrong = tmp_path / "wrong-head"
    wrong.mkdir()
    config = json.loads((tiny_owl / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "architectures": ["Owlv2Model"]}))
    assert "do not include Owlv2ForObjectDetection" in det.check_owlv2_folder(wrong)[0]
    with pytest.raises(ModelFolderError, match="owlvit"):
        det.Detector(other)
