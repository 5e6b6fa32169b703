"""Grounded-SAM through the real groundingdino-py and segment-anything-hq code, random weights."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest_paper import build_models_dir, calibrated_threshold, sample_images
from tokencompose.tasks import devices, weights
from tokencompose.tasks import masks
from tokencompose.tasks.grounded_sam import GroundedSam, _shape_groups, boxes_to_pixels
from tokencompose.tasks.grounding import REASON_NO_DETECTION
from tokencompose.tasks.token_assignment import build_prompt

# the first two images have one size, so they share a batch (their prompts differ in length)
NOUNS = [["man", "woman", "teddy bear"], ["hot dog", "dog", "Dog"], ["cup", "spoon"], ["astronaut", "flag"]]


def make(models_dir, **kwargs) -> GroundedSam:
    settings = dict(sam_variant="vit_tiny", device="cpu", short_side=224, max_side=320, batch_size=4)
    settings.update(kwargs)
    return GroundedSam(models_dir / "groundingdino_swint_ogc.pth", models_dir / "bert-base-uncased",
                       models_dir / "sam_hq_vit_tiny.pth", **settings)


@pytest.fixture(scope="module")
def setup():
    models_dir = build_models_dir()
    # two images of one size (batched together) and two of other sizes
    images = sample_images(("000000000139", "000000000785", "000000000632", "000000000872"))
    probe = make(models_dir)
    threshold = calibrated_threshold(probe, images, [build_prompt(n) for n in NOUNS], boxes_per_image=2)
    return models_dir, images, threshold


@pytest.fixture(scope="module")
def batched(setup):
    models_dir, images, threshold = setup
    grounder = make(models_dir, box_threshold=threshold, text_threshold=threshold / 2)
    return grounder, grounder.ground(images, [None] * len(images), NOUNS)


def test_one_grounding_per_noun_with_consistent_fields(setup, batched):
    _, images, _ = setup
    grounder, result = batched
    assert [len(r) for r in result] == [len(n) for n in NOUNS]
    with_mask = 0
    for image, groundings in zip(images, result):
        width, height = image.size
        for g in groundings:
            assert (g.mask is None) == (g.reason is not None)
            assert len(g.boxes) == len(g.box_scores)
            if g.boxes:
                assert g.score == max(g.box_scores) and g.box_scores == sorted(g.box_scores, reverse=True)
                for x, y, w, h in g.boxes:
                    assert 0 <= x <= width and 0 <= y <= height and w >= 0 and h >= 0
                    assert x + w <= width + 0.01 and y + h <= height + 0.01
            if g.mask is not None:
                with_mask += 1
                assert g.mask["size"] == [height, width]
                assert g.box == masks.box(g.mask) and masks.area(g.mask) > 0
                assert g.source == "grounded_sam"
            elif not g.boxes:
                assert g.reason == REASON_NO_DETECTION
    assert sum(len(g.boxes) for r in result for g in r) > 0, "calibration should keep some boxes"
    # "dog" and "Dog" are one prompt noun: the same grounding
    assert result[1][1] == result[1][2]


def test_batch_equals_one_by_one(setup, batched):
    models_dir, images, threshold = setup
    grounder, together = batched
    lengths = [len(grounder.dino.tokenizer(build_prompt(n).text)["input_ids"]) for n in NOUNS[:2]]
    assert images[0].size == images[1].size and lengths[0] != lengths[1]  # batched, one prompt padded
    single = make(models_dir, box_threshold=threshold, text_threshold=threshold / 2, batch_size=1)
    alone = [single.ground([image], [None], [nouns])[0] for image, nouns in zip(images, NOUNS)]
    for a_image, b_image in zip(together, alone):
        for a, b in zip(a_image, b_image):
            assert a.reason == b.reason and len(a.boxes) == len(b.boxes)
            np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05) if a.boxes else None
            np.testing.assert_allclose(a.box_scores, b.box_scores, atol=1e-4)
            if a.mask is not None:
                ma, mb = masks.decode(a.mask), masks.decode(b.mask)
                assert (ma != mb).mean() < 1e-3


def test_detection_batches_group_equal_sizes():
    assert _shape_groups([(3, 224, 320), (3, 224, 298), (3, 224, 320), (3, 224, 320)], 2) == [[0, 2], [3], [1]]


def test_text_mask_fix_batches_prompts_exactly(setup, batched):
    """GroundingDINO's text layers give heads of one image another image's prompt mask in a batch;
    with the fix a batch of different prompts equals one-by-one inference."""
    import torch

    grounder, _ = batched
    images = setup[1][:2]
    x = torch.stack([grounder.transform(im, None)[0] for im in images])
    prompts = ["man . woman . teddy bear .", "dog ."]
    with torch.inference_mode():
        together = grounder.dino(x, captions=prompts)["pred_logits"]
        alone = [grounder.dino(x[i:i + 1], captions=prompts[i:i + 1])["pred_logits"][0] for i in range(2)]
    for i in range(2):
        torch.testing.assert_close(together[i], alone[i], atol=1e-4, rtol=1e-4)


def test_noun_mask_is_the_union_of_its_boxes(setup):
    grounder = make(setup[0])
    box_masks = np.zeros((3, 10, 12), dtype=bool)
    box_masks[0, 1:3, 1:4] = True
    box_masks[1, 5:8, 6:10] = True
    box_masks[2, 0:2, 0:2] = True
    boxes = np.array([[1, 1, 4, 3], [6, 5, 10, 8], [0, 0, 2, 2]], dtype=float)
    scores = np.array([0.4, 0.7, 0.9])
    owners = np.array([0, 0, 1])
    g = grounder._noun_grounding(boxes, scores, owners, box_masks, 0)
    union = masks.decode(g.mask)
    assert union.sum() == 6 + 12 and (union == (box_masks[0] | box_masks[1])).all()
    assert g.box == (1.0, 1.0, 9.0, 7.0)  # bbox of the union mask, x y w h
    assert g.boxes == [(6.0, 5.0, 4.0, 3.0), (1.0, 1.0, 3.0, 2.0)] and g.box_scores == [0.7, 0.4]
    assert g.score == 0.7
    assert grounder._noun_grounding(boxes, scores, owners, box_masks, 2).reason == REASON_NO_DETECTION


def test_boxes_to_pixels_clips_to_the_image():
    xyxy = boxes_to_pixels(np.array([[0.5, 0.5, 0.5, 0.5], [0.95, 0.1, 0.2, 0.4]]), 200, 100)
    np.testing.assert_allclose(xyxy, [[50, 25, 150, 75], [170, 0, 200, 30]])


def test_nothing_detected_and_no_nouns(setup):
    models_dir, images, _ = setup
    strict = make(models_dir, box_threshold=1.0, text_threshold=1.0)
    result = strict.ground(images[:2], [None, None], [["man"], []])
    assert result == [[dataclasses.replace(result[0][0], reason=REASON_NO_DETECTION)], []]
    assert result[0][0].mask is None and result[0][0].boxes == []


def test_cpu_runs_fp32_even_when_half_is_asked(setup, batched):
    grounder, _ = batched
    assert grounder.device == "cpu" and not grounder.half
    assert grounder.info().details["precision"] == "fp32"
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in grounder.sam.parameters())
    # one copy per process and device: a second grounder shares the models
    other = make(setup[0], box_threshold=0.5)
    assert other.dino is grounder.dino and other.sam is grounder.sam
    assert devices.autocast("cpu", True).__class__.__name__ == "nullcontext"


def test_missing_checkpoint_is_named(tmp_path):
    from tokencompose.data import demo_settings
    from tokencompose.schemas.config import BuildConfig

    config = BuildConfig.model_validate({**demo_settings(), "output": {"out_dir": str(tmp_path / "out")},
                                         "profile": "paper",
                                         "models": {"models_dir": str(tmp_path), "use_hf_cache": False}})
    with pytest.raises(weights.MissingWeights, match="groundingdino_swint_ogc.pth"):
        GroundedSam.from_config(config)
