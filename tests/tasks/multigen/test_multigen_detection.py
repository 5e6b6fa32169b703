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


def test_a_detections_file_lists_the_detected_categories_with_scores_and_boxes(tiny_sd, tiny_owl, tmp_path):
    import torch

    from tokencompose.tasks.multigen import generation as gen
    from tokencompose.tasks.multigen.prompts import bundled

    pipe = gen.load_pipeline(tiny_sd, "cpu", torch.float32)
    plan = gen.plan_shards(bundled("coco")[:2], 2)[0]
    shard = tmp_path / f"{plan.name}.tar"
    gen.generate_shard(pipe, plan, shard, images_per_prompt=2, seed=0, steps=1, guidance_scale=7.5, resolution=32,
                       batch_size=4, model={"label": "tiny"})
    detector = det.Detector(tiny_owl, "cpu", "fp32")
    out = tmp_path / "detections"
    assert det.run_detection(detector, [shard], out, batch_size=3, threshold=0.3)["shards_done"] == 1
    rows = det.read_detections(out / f"{plan.name}.jsonl")
    assert [(r["prompt_id"], r["image_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for row in rows:
        scores = row["categories_scores"]
        assert row["threshold"] == 0.3 and sorted(scores) == sorted(row["categories"])
        assert row["detected"] == [c for c in row["categories"] if (scores[c]["score"] or 0) > 0.3]
    found = [len(r["detected"]) for r in rows]
    assert max(found) > 0 and min(found) < 5          # the threshold separates something
    # batch size does not change what is found (the same images scored one by one)
    det.run_detection(detector, [shard], tmp_path / "one", batch_size=1, threshold=0.3)
    single = det.read_detections(tmp_path / "one" / f"{plan.name}.jsonl")
    assert [r["detected"] for r in single] == [r["detected"] for r in rows]
    # done is done: a second call skips the file
    assert det.run_detection(detector, [shard], out, batch_size=3)["shards_skipped"] == 1
