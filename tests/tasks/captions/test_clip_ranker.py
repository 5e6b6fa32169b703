"""CLIP ranking through open_clip with random weights (ViT-S-32): shapes, batching, scores."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support.paper_models import CLIP_FILE, CLIP_MODEL, build_models_dir, sample_images
from tokencompose.tasks.captions.ranking import choose
from tokencompose.tasks.captions.clip_ranker import ClipRanker

pytestmark = pytest.mark.paper_size

CAPTIONS = [["A cat on a bed.", "Two dogs.", "A cup of coffee on a table next to a spoon."],
            ["An astronaut."], ["A rocket on a pad.", "A man.", "A woman.", "A horse.", "A flag."]]


@pytest.fixture(scope="module")
def ranker():
    return ClipRanker(CLIP_MODEL, build_models_dir() / CLIP_FILE, pretrained=str(build_models_dir() / CLIP_FILE),
                      device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def images():
    return sample_images(("000000000139", "000000000285", "000000000632"))


def test_one_cosine_per_caption(ranker, images):
    scores = ranker.score(images, CAPTIONS)
    assert [len(s) for s in scores] == [len(c) for c in CAPTIONS]
    assert all(-1.0 <= v <= 1.0 for s in scores for v in s)
    # the score is the cosine of the normalised embeddings
    image = ranker.embed_images(images[:1])[0]
    text = ranker.embed_texts(CAPTIONS[0][:1])[0]
    assert scores[0][0] == pytest.approx(float(image @ text), abs=1e-5)
    assert float(image.norm()) == pytest.approx(1.0, abs=1e-5)
    assert 0 <= choose(scores[2]) < len(CAPTIONS[2])


def test_batch_equals_one_by_one(ranker, images):
    together = ranker.score(images, CAPTIONS)
    alone = [ranker.score([im], [caps])[0] for im, caps in zip(images, CAPTIONS)]
    np.testing.assert_allclose(np.concatenate(together), np.concatenate(alone), atol=2e-6)


def test_empty_inputs(ranker, images):
    assert ranker.score([], []) == []
    assert ranker.score(images[:1], [[]]) == [[]]


def test_cpu_is_fp32_and_info(ranker):
    assert ranker.device == "cpu" and not ranker.half
    assert all(p.dtype.itemsize == 4 for p in ranker.model.parameters())
    info = ranker.info()
    assert info.name == "clip" and info.details["model"] == CLIP_MODEL and info.details["precision"] == "fp32"
    assert info.details["pretrained"] == CLIP_FILE  # a path is recorded by file name only


def test_checkpoint_weights_are_loaded(ranker):
    import torch

    saved = torch.load(build_models_dir() / CLIP_FILE, map_location="cpu")
    name = "visual.conv1.weight"
    assert torch.equal(ranker.model.state_dict()[name], saved[name])


def test_bf16_autocast_on_cpu_keeps_float32_scores(ranker, images):
    """The GPU path runs under autocast; on the CPU the same code under bfloat16 autocast must still
    give float32 unit vectors (the normalisation happens in fp32)."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = ranker.embed_images(images[:1])
    assert features.dtype == torch.float32 and float(features[0].norm()) == pytest.approx(1.0, abs=1e-3)
