"""The promotion gate: rejected for noise (the gain's interval reaches 0), rejected for lost quality (FID or
CLIP score beyond tolerance), accepted when everything passes; the bootstrap equals a plain loop over the
same RNG draws."""
from __future__ import annotations

import numpy as np
import pytest

from tokencompose.schemas.retrain import GateSettings
from tokencompose.tasks.evaluation.gate import bootstrap_draws, composition_criterion, composition_from_rows, decide

SETTINGS = GateSettings(level=3, margin=0.0, confidence=0.95, bootstrap_samples=1000, seed=11,
                        fid_tolerance=0.5, clip_tolerance=0.5)


def per_prompt(rng, prompts, images, rate):
    """(successes, scored) per prompt: ``images`` scored images each, each a success with probability ``rate``."""
    return rng.binomial(images, rate, size=prompts).astype(float), np.full(prompts, float(images))


def reference_lower_bound(baseline, candidate, samples, seed, confidence):
    """The paired bootstrap written plainly: for each draw, pool both models over the drawn prompts."""
    draws = np.random.default_rng(seed).integers(0, len(baseline[0]), size=(samples, len(baseline[0])))
    gains = []
    for row in draws:
        cand = 100 * sum(candidate[0][i] for i in row) / sum(candidate[1][i] for i in row)
        base = 100 * sum(baseline[0][i] for i in row) / sum(baseline[1][i] for i in row)
        gains.append(cand - base)
    gains.sort()
    position = (1 - confidence) * (len(gains) - 1)          # linear interpolation between order statistics
    below = int(np.floor(position))
    return gains[below] + (gains[below + 1] - gains[below]) * (position - below)


def test_bootstrap_lower_bound_equals_a_plain_loop_over_the_same_draws():
    rng = np.random.default_rng(0)
    baseline, candidate = per_prompt(rng, 40, 4, 0.5), per_prompt(rng, 40, 4, 0.6)
    criterion = composition_criterion(baseline, candidate, SETTINGS)
    expected = reference_lower_bound(baseline, candidate, SETTINGS.bootstrap_samples, SETTINGS.seed,
                                     SETTINGS.confidence)
    assert criterion.low == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert criterion.value == pytest.approx(100 * candidate[0].sum() / 160 - 100 * baseline[0].sum() / 160)
    assert bootstrap_draws(40, 5, 3).tolist() == bootstrap_draws(40, 5, 3).tolist()


def test_rejected_for_noise_when_the_interval_reaches_zero():
    rng = np.random.default_rng(1)
    baseline = per_prompt(rng, 30, 2, 0.5)
    # a slightly better candidate by chance: a few more successes on a few prompts
    candidate = (baseline[0].copy(), baseline[1])
    candidate[0][:2] = np.minimum(candidate[0][:2] + 1, 2)
    decision = decide(SETTINGS, baseline, candidate, fid_baseline=20.0, fid_candidate=20.1,
                      clip_baseline=[30.0] * 30, clip_candidate=[30.0] * 30)
    gain = decision.criteria[0]
    assert gain.value is not None and gain.value > 0 and gain.low is not None and gain.low <= 0
    assert not gain.passed and not decision.promote
    assert [c.passed for c in decision.criteria[1:]] == [True, True]


def test_rejected_for_lost_quality_when_fid_worsens_beyond_tolerance():
    rng = np.random.default_rng(2)
    baseline, candidate = per_prompt(rng, 60, 4, 0.3), per_prompt(rng, 60, 4, 0.8)
    decision = decide(SETTINGS, baseline, candidate, fid_baseline=20.0, fid_candidate=21.0,
                      clip_baseline=[30.0] * 60, clip_candidate=[30.2] * 60)
    gain, fid, clip = decision.criteria
    assert gain.passed and gain.low is not None and gain.low > 0
    assert not fid.passed and fid.value == pytest.approx(1.0) and "quality lost" in fid.reason
    assert clip.passed and not decision.promote
    assert decision.failed() == [f"fid: {fid.reason}"]


def test_rejected_for_lost_clip_score_and_for_a_missing_measurement():
    rng = np.random.default_rng(3)
    baseline, candidate = per_prompt(rng, 60, 4, 0.3), per_prompt(rng, 60, 4, 0.8)
    lost = decide(SETTINGS, baseline, candidate, 20.0, 20.0, [30.0] * 60, [29.0] * 60)
    assert [c.passed for c in lost.criteria] == [True, True, False] and not lost.promote
    clip = lost.criteria[2]
    assert clip.low == pytest.approx(-1.0) and clip.high == pytest.approx(-1.0)
    missing = decide(SETTINGS, baseline, candidate, fid_baseline=20.0, fid_candidate=None,
                     clip_baseline=[30.0] * 60, clip_candidate=[30.0] * 60)
    assert missing.criteria[1].reason == "not measured" and not missing.promote


def test_accepted_when_gain_is_real_and_quality_holds():
    rng = np.random.default_rng(4)
    baseline, candidate = per_prompt(rng, 60, 4, 0.3), per_prompt(rng, 60, 4, 0.8)
    clip_rng = np.random.default_rng(5)
    clip_base = clip_rng.normal(30, 1, 60)
    decision = decide(SETTINGS, baseline, candidate, fid_baseline=20.88, fid_candidate=20.19,
                      clip_baseline=clip_base, clip_candidate=clip_base + clip_rng.normal(0, 0.1, 60))
    assert decision.promote and all(c.passed for c in decision.criteria)
    stored = GateSettings.model_validate(decision.settings.model_dump())
    assert stored == SETTINGS
    assert type(decision).model_validate_json(decision.model_dump_json()) == decision


def test_unjudged_criteria_are_left_out_and_rows_feed_the_gain():
    settings = SETTINGS.model_copy(update={"fid_tolerance": None, "clip_tolerance": None, "level": 2})

    def row(pid, index, found):
        cats = ["cat", "dog", "cup"]
        return {"prompt_id": pid, "image_index": index, "categories": cats, "nan": False,
                "categories_scores": {c: {"score": 0.5 if c in found else 0.0, "box": None} for c in cats}}
    base_rows = [row(p, i, ["cat"]) for p in range(20) for i in range(2)] + [row(99, 0, ["cat", "dog"])]
    cand_rows = [row(p, i, ["cat", "dog"]) for p in range(20) for i in range(2)]
    baseline, candidate = composition_from_rows(base_rows, cand_rows, 0.1, 2)
    assert baseline[0].tolist() == [0] * 20 and candidate[0].tolist() == [2] * 20   # prompt 99 is not common
    decision = decide(settings, baseline, candidate)
    assert [c.name for c in decision.criteria] == ["composition_MG2"] and decision.promote
    with pytest.raises(ValueError, match="same prompts"):
        composition_criterion(baseline, (candidate[0][:3], candidate[1][:3]), settings)
