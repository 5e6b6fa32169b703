"""RLE and segmentation checks: what pycocotools would crash on (or read/write past its buffers
for) is refused with a reason before pycocotools sees it."""
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from tokencompose.tasks.grounding import masks


def _random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        yield rng.random((height, width)) < rng.random()
    yield np.ones((1, 1), bool)
    yield np.zeros((1, 5000), bool)
    big = np.zeros((1200, 1500), bool)
    big[3:1190, 7:1499] = True  # runs longer than one million need five characters
    yield big


def test_compressed_runs_agree_with_pycocotools_on_every_mask():
    for mask in _random_masks():
        rle = masks.encode(mask)
        assert masks.validate_rle(rle, mask.shape) is None
        runs = masks.compressed_runs(rle["counts"])
        assert sum(runs) == mask.size and sum(runs[1::2]) == int(coco_mask.area(masks._compressed(rle)))


@pytest.mark.parametrize("rle,problem", [
    ({"size": [10, 10], "counts": "zzzz"}, "outside the RLE alphabet"),
    ({"size": [10, 10], "counts": "0`"}, "counts end inside a run length"),
    ({"size": [10, 10], "counts": "0" + "o" * 8 + "0"}, "longer than 7 characters"),
    ({"size": [10, 10], "counts": "0"}, "runs cover 0 pixels, the size says 100"),
    ({"size": [10, 10], "counts": "1@"}, "negative length"),
    ({"size": [10, 10], "counts": b"\xff"}, "not ASCII"),
    ({"size": [10, 10], "counts": [50, 60]}, "runs cover 110 pixels"),
    ({"size": [10, 10], "counts": [50, True, 49]}, "non-negative integers"),
    ({"size": [10, 10], "counts": 7}, "counts must be a string or a list"),
    ({"size": [-10, -10], "counts": ""}, "negative or larger"),
    ({"size": [1 << 20, 1 << 20], "counts": ""}, "negative or larger"),
    ({"size": [10.0, 10], "counts": ""}, "two integers"),
    ({"counts": ""}, "'size' and 'counts'"),
    ("RLE", "'size' and 'counts'"),
])
def test_hostile_rles_are_refused_with_a_reason(rle, problem):
    assert problem in masks.validate_rle(rle)


def test_the_size_must_be_the_images():
    rle = masks.encode(np.ones((10, 10), bool))
    assert masks.validate_rle(rle, (10, 10)) is None
    assert masks.validate_rle(rle, (10, 11)) == "RLE size 10x10 differs from the image's 10x11"


@pytest.mark.parametrize("segmentation", [
    [], [[]], [[1, 2, 3, 4]], [[0, 0, 5, "x", 5, 5]], [[0, 0, 5, float("nan"), 5, 5]], [[0, 0, 5, 0, 9, 0]],
    [[0, 0, 10**400, 0, 5, 5]], {"size": [10, 10], "counts": "zz"}, {"size": [5, 5], "counts": [25]}, "x", None, 3,
])
def test_segmentation_to_rle_refuses_instead_of_crashing(segmentation):
    with pytest.raises(masks.SegmentationProblem):
        masks.segmentation_to_rle(segmentation, 10, 10)


def test_good_segmentations_still_convert():
    polygon = masks.segmentation_to_rle([[0, 0, 5, 0, 5, 10, 0, 10]], 10, 20)
    assert masks.decode(masks.union([polygon]))[:, :5].all()
    full = np.zeros((10, 20), bool)
    full[2:5, 3:9] = True
    uncompressed = {"size": [10, 20], "counts": [int(v) for v in masks.compressed_runs(masks.encode(full)["counts"])]}
    assert (masks.decode(masks.union([masks.segmentation_to_rle(uncompressed, 10, 20)])) == full).all()
    compressed = masks.segmentation_to_rle(masks.encode(full), 10, 20)
    assert (masks.decode(masks.union([compressed])) == full).all()
