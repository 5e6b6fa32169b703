"""OptiGen: Sinkhorn against hand-solved 3x3 matrices, the batched pair scores of a tiny random GPT-2
against a direct per-pair forward pass, the deterministic choice of the least likely pairs and tuples,
and the accuracy as MultiGen's MG2."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tokencompose.tasks.evaluation.optigen import (LanguageModelFolderError, accuracy, ade20k100, coco80,
                                                   load_language_model, lowest_tuples, pair_log_probs, select_prompts,
                                                   sinkhorn)
from tokencompose.tasks.evaluation.toy import save_random_gpt2

CATS = ["cat", "dog", "traffic light", "hair drier", "umbrella", "pizza"]


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return save_random_gpt2(tmp_path_factory.mktemp("lm") / "tiny-gpt2", CATS, seed=0)


def cyclic(forward, backward):
    """A zero-diagonal 3x3 matrix with ``forward`` on 0->1, 1->2, 2->0 and ``backward`` on the reverse."""
    (a01, a12, a20), (a10, a21, a02) = forward, backward
    return np.array([[0, a01, a02], [a10, 0, a12], [a20, a21, 0]], dtype=np.float64)


def test_sinkhorn_of_a_hand_solved_3x3():
    # By hand: a doubly stochastic zero-diagonal 3x3 has t on the cycle 0->1->2->0 and 1 - t on the reverse,
    # and D1 A D2 keeps the ratio of the two cycle products, so (t / (1 - t))^3 = (0.2^3) / (0.1^3) = 8: t = 2/3.
    result = sinkhorn(cyclic((0.2, 0.2, 0.2), (0.1, 0.1, 0.1)), tolerance=1e-12)
    assert result.matrix == pytest.approx(cyclic((2 / 3,) * 3, (1 / 3,) * 3), abs=1e-10)
    # Unequal entries: cycle products 0.4 * 0.2 * 0.1 = 0.008 and 0.05 * 0.02 * 0.01 = 1e-5, ratio 800.
    t = 800 ** (1 / 3) / (1 + 800 ** (1 / 3))
    result = sinkhorn(cyclic((0.4, 0.2, 0.1), (0.01, 0.02, 0.05)), tolerance=1e-12)
    assert result.matrix == pytest.approx(cyclic((t,) * 3, (1 - t,) * 3), abs=1e-10)
    assert result.matrix.sum(axis=0) == pytest.approx(np.ones(3)) and result.error <= 1e-12


def test_sinkhorn_refuses_what_it_cannot_normalise():
    with pytest.raises(ValueError, match="square"):
        sinkhorn(np.ones((2, 3)))
    with pytest.raises(ValueError, match="positive entry"):
        sinkhorn(np.array([[1.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="did not reach"):   # no total support: never doubly stochastic
        sinkhorn(np.array([[1.0, 1.0], [0.0, 1.0]]), max_iterations=200)


def test_batched_pair_scores_equal_a_direct_forward_per_pair(tiny_gpt2):
    import torch

    model, tokenizer = load_language_model(tiny_gpt2)
    matrix = pair_log_probs(model, tokenizer, CATS, batch_size=7)
    assert np.all(np.isneginf(np.diag(matrix)))
    multi_token = 0
    for i, j in itertools.permutations(range(len(CATS)), 2):
        prefix = tokenizer(f"a picture of {CATS[i]} and", add_special_tokens=False)["input_ids"]
        target = tokenizer(" " + CATS[j], add_special_tokens=False)["input_ids"]
        multi_token += len(target) > 1
        with torch.no_grad():
            logits = model(torch.tensor([prefix + target])).logits[0]
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        direct = sum(float(log_probs[len(prefix) - 1 + k, token]) for k, token in enumerate(target))
        assert matrix[i, j] == pytest.approx(direct, abs=1e-4), (CATS[i], CATS[j])
    assert multi_token > 0    # the case covers names of several tokens


def test_a_folder_that_is_not_a_language_model_is_named(tmp_path):
    with pytest.raises(LanguageModelFolderError, match="no config.json"):
        load_language_model(tmp_path)


def test_least_likely_pairs_are_chosen_in_order_with_ties_by_category_order():
    log_p = np.log(np.array([[1, 0.5, 0.2, 0.3], [0.5, 1, 0.3, 0.2], [0.2, 0.3, 1, 0.5], [0.3, 0.2, 0.5, 1.0]]))
    # symmetric with equal row sums off the diagonal: Sinkhorn scales all entries alike (1.0 each row)
    selection = select_prompts(log_p, ["a", "b", "c", "d"], count=3)
    assert [p.categories for p in selection.prompts] == [("a", "c"), ("b", "d"), ("c", "a")]
    assert [p.text for p in selection.prompts][:1] == ["a picture of a and c"]
    assert selection.probabilities == pytest.approx((0.2, 0.2, 0.2))


def test_lowest_tuples_equal_a_brute_force_over_distinct_tuples():
    rng = np.random.default_rng(0)
    m = rng.random((6, 6))
    np.fill_diagonal(m, 0)
    for size in (2, 3, 4):
        brute = sorted((math.prod(m[t[k], t[k + 1]] for k in range(size - 1)), t)
                       for t in itertools.permutations(range(6), size))
        got = lowest_tuples(m, 10, size)
        assert [t for t, _ in got] == [t for _, t in brute[:10]]
        assert [p for _, p in got] == pytest.approx([p for p, _ in brute[:10]], rel=1e-12)
    with pytest.raises(ValueError, match="enumeration limit"):
        lowest_tuples(m, 1, 4, max_tuples=100)


def test_three_category_prompts_and_their_accuracy_is_mg3():
    log_p = np.log(np.random.default_rng(1).random((5, 5)) + 0.1)
    selection = select_prompts(log_p, ["cat", "dog", "cup", "car", "bus"], count=2, size=3)
    prompt = selection.prompts[0]
    assert len(set(prompt.categories)) == 3 and prompt.text.startswith("a picture of ") and ", " in prompt.text

    def row(index, found):
        return {"prompt_id": prompt.id, "image_index": index, "categories": list(prompt.categories), "nan": False,
                "categories_scores": {c: {"score": 0.5 if c in found else 0.05, "box": None} for c in prompt.categories}}
    rows = [row(0, prompt.categories), row(1, prompt.categories[:2])]
    result = accuracy(rows, size=3)
    assert (result["level"], result["mean"], result["pooled"]) == ("MG3", 50.0, 0.5)


def test_bundled_category_lists():
    assert len(coco80()) == 80 and coco80()[0] == "person"
    ade = ade20k100()
    assert len(ade) == 100 and len(set(ade)) == 100
