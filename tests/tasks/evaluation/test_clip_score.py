"""CLIP score through open_clip with random weights (ViT-S-32): batched scores equal a direct per-pair
computation of 100 x max(cos, 0), negatives are clamped, per-prompt means feed the gate."""
from __future__ import annotations

import pytest

from tests.support.paper_models import CLIP_MODEL, sample_images
from tokencompose.tasks.evaluation.clip_score import ClipScorer, per_prompt_means, summary

TEXTS = ["a photo of a cat and a dog", "a rocket", "a cup of coffee on a table", "two horses in a field",
         "a pizza", "an astronaut"]


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def scorer():
    import torch

    torch.manual_seed(0)     # no checkpoint: open_clip's random initialisation (checkpoints: the CLIP ranker's tests)
    return ClipScorer(CLIP_MODEL, None, device="cpu", batch_size=4)


@pytest.mark.slow
def test_batched_scores_equal_a_direct_computation_per_pair(scorer):
    import torch

    images = (sample_images() * 2)[:len(TEXTS)]
    got = scorer.score(images, TEXTS)
    raw = []
    for image, text in zip(images, TEXTS):
        with torch.no_grad():
            a = scorer.model.encode_image(scorer.transform(image.convert("RGB"))[None])
            b = scorer.model.encode_text(scorer.tokenizer([text]))
        raw.append(float(torch.nn.functional.cosine_similarity(a, b)[0]))
    assert got == pytest.approx([100 * max(c, 0.0) for c in raw], abs=1e-4)
    assert min(raw) > 0
    # a negated text projection negates every cosine: the scores are clamped to 0
    with torch.no_grad():
        scorer.model.text_projection.neg_()
    try:
        assert scorer.score(images, TEXTS).tolist() == [0.0] * len(TEXTS)
    finally:
        with torch.no_grad():
            scorer.model.text_projection.neg_()
    assert scorer.score(images, TEXTS) == pytest.approx(got, abs=1e-6)


def test_mismatched_inputs_and_missing_checkpoint_are_named(scorer, tmp_path):
    with pytest.raises(ValueError, match="one text per image"):
        scorer.score(sample_images()[:2], TEXTS[:1])
    with pytest.raises(FileNotFoundError, match="no CLIP checkpoint"):
        ClipScorer(CLIP_MODEL, tmp_path / "missing.pt")


def test_per_prompt_means_and_summary():
    assert per_prompt_means([3, 1, 3, 1], [10, 20, 30, 40]) == {1: 30.0, 3: 20.0}
    assert summary([10.0, 30.0]) == {"clip_score": 20.0, "std": 10.0, "images": 2}
    with pytest.raises(ValueError):
        per_prompt_means([1, 2], [1.0])
