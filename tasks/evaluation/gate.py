"""The promotion gate: a candidate model replaces the current one only when its composition gain is larger
than noise and its images have not lost quality, all measured on the same run.

- Composition gain: pooled MG_k (percent of scored images with at least k of the prompt's categories
  detected) of the candidate minus the baseline's, on the prompts both were run on with the same seeds.
  The paired bootstrap resamples prompts with replacement (one draw of prompt indices serves both
  models) from a seeded RNG; the one-sided lower bound at ``confidence`` is the (1 - confidence)
  quantile of the resampled gains. Passes when the lower bound exceeds ``margin``: a gain whose
  interval reaches 0 (noise) is rejected.
- FID: candidate minus baseline (lower is better); passes when it is at most ``fid_tolerance``.
- CLIP score: candidate minus baseline of the per-prompt mean scores, with a paired-bootstrap
  interval (the same prompt draws) for the record; passes when the difference is at least
  ``-clip_tolerance``.
A criterion that is configured but was not measured fails ("not measured"): a gate never passes on
missing evidence. Every criterion keeps its value, interval, threshold and verdict, so the registry
entry and the decision artifact can store the whole decision.

The settings are configuration (``GateSettings``, schemas/retrain.py: ``RetrainConfig.gate``); the
decision is a record a registry entry stores (``Criterion``, ``GateDecision``, schemas/registry.py).
Here are only the functions that judge.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from tokencompose.schemas.registry import Criterion, GateDecision
from tokencompose.schemas.retrain import GateSettings

Values = Union[Sequence[float], np.ndarray]
Counts = tuple[Values, Values]


def _rates(success: np.ndarray, scored: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * success / scored


def bootstrap_draws(prompts: int, samples: int, seed: int) -> np.ndarray:
    """Resampled prompt indices, one row per bootstrap sample (shared by both models: paired)."""
    return np.random.default_rng(seed).integers(0, prompts, size=(samples, prompts))


def pooled_gain_samples(baseline: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray],
                        draws: np.ndarray) -> np.ndarray:
    """Per bootstrap sample: pooled rate of the candidate minus the baseline's, ``(success, scored)`` per
    prompt; samples with no scored image are dropped."""
    n = len(baseline[0])
    weights = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)
    gains = (_rates(weights @ candidate[0], weights @ candidate[1])
             - _rates(weights @ baseline[0], weights @ baseline[1]))
    return gains[np.isfinite(gains)]


def composition_criterion(baseline: Counts, candidate: Counts,
                          settings: GateSettings) -> Criterion:
    """The gain criterion from per-prompt ``(successes, scored images)`` of both models, aligned by prompt."""
    b = (np.asarray(baseline[0], dtype=np.float64), np.asarray(baseline[1], dtype=np.float64))
    c = (np.asarray(candidate[0], dtype=np.float64), np.asarray(candidate[1], dtype=np.float64))
    name, rule = f"composition_MG{settings.level}", f"one-sided {settings.confidence:.0%} lower bound > margin"
    if len({len(b[0]), len(b[1]), len(c[0]), len(c[1])}) != 1:
        raise ValueError("composition gate: both models need (successes, scored) for the same prompts")
    if len(b[0]) == 0 or b[1].sum() == 0 or c[1].sum() == 0:
        return Criterion(name=name, value=None, threshold=settings.margin, rule=rule, passed=False,
                         reason="not measured (no scored images on common prompts)")
    base_rate, cand_rate = float(_rates(b[0].sum(), b[1].sum())), float(_rates(c[0].sum(), c[1].sum()))
    gains = pooled_gain_samples(b, c, bootstrap_draws(len(b[0]), settings.bootstrap_samples, settings.seed))
    low = float(np.quantile(gains, 1 - settings.confidence))
    passed = low > settings.margin
    reason = (f"gain {cand_rate - base_rate:+.2f} with lower bound {low:+.2f} "
              f"{'exceeds' if passed else 'does not exceed'} the margin {settings.margin:+.2f}")
    return Criterion(name=name, value=cand_rate - base_rate, low=low, high=None, threshold=settings.margin, rule=rule,
                     passed=passed, reason=reason, baseline=base_rate, candidate=cand_rate)


def fid_criterion(baseline: float | None, candidate: float | None, tolerance: float) -> Criterion:
    rule = "candidate FID - baseline FID <= tolerance"
    if baseline is None or candidate is None or not np.isfinite(baseline) or not np.isfinite(candidate):
        return Criterion(name="fid", value=None, threshold=tolerance, rule=rule, passed=False, reason="not measured",
                         baseline=baseline, candidate=candidate)
    change = candidate - baseline
    passed = change <= tolerance
    reason = f"FID {baseline:.3f} -> {candidate:.3f} ({change:+.3f}, tolerance {tolerance:+.3f})"
    return Criterion(name="fid", value=change, threshold=tolerance, rule=rule, passed=passed,
                     reason=reason if passed else reason + ": quality lost", baseline=baseline, candidate=candidate)


def clip_criterion(baseline: Values | None, candidate: Values | None,
                   settings: GateSettings) -> Criterion:
    """CLIP score from per-prompt mean scores of both models (aligned by prompt)."""
    tolerance = settings.clip_tolerance if settings.clip_tolerance is not None else 0.0
    rule = "candidate CLIP score - baseline >= -tolerance"
    if baseline is None or candidate is None or len(baseline) == 0:
        return Criterion(name="clip_score", value=None, threshold=-tolerance, rule=rule, passed=False,
                         reason="not measured")
    b, c = np.asarray(baseline, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if b.shape != c.shape:
        raise ValueError(f"CLIP gate: {len(b)} baseline and {len(c)} candidate prompts; they must be the same")
    change = float(c.mean() - b.mean())
    draws = bootstrap_draws(len(b), settings.bootstrap_samples, settings.seed + 1)
    resampled = c[draws].mean(axis=1) - b[draws].mean(axis=1)
    tail = (1 - settings.confidence) / 2
    low, high = (float(v) for v in np.quantile(resampled, [tail, 1 - tail]))
    passed = change >= -tolerance
    reason = f"CLIP score {b.mean():.3f} -> {c.mean():.3f} ({change:+.3f}, tolerance {-tolerance:+.3f})"
    return Criterion(name="clip_score", value=change, low=low, high=high, threshold=-tolerance, rule=rule,
                     passed=passed, reason=reason if passed else reason + ": quality lost",
                     baseline=float(b.mean()), candidate=float(c.mean()))


def decide(settings: GateSettings, composition_baseline: Counts, composition_candidate: Counts,
           fid_baseline: float | None = None, fid_candidate: float | None = None,
           clip_baseline: Values | None = None, clip_candidate: Values | None = None) -> GateDecision:
    """Every configured criterion judged; promote only when all pass."""
    criteria = [composition_criterion(composition_baseline, composition_candidate, settings)]
    if settings.fid_tolerance is not None:
        criteria.append(fid_criterion(fid_baseline, fid_candidate, settings.fid_tolerance))
    if settings.clip_tolerance is not None:
        criteria.append(clip_criterion(clip_baseline, clip_candidate, settings))
    return GateDecision(promote=all(c.passed for c in criteria), criteria=criteria, settings=settings)


def composition_from_rows(baseline_rows: Sequence[dict], candidate_rows: Sequence[dict], threshold: float, level: int
                          ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Per-prompt (successes, scored) of both models' MultiGen detection rows on their common prompts."""
    from tokencompose.tasks.multigen.metrics import success_table

    common = sorted({r["prompt_id"] for r in baseline_rows} & {r["prompt_id"] for r in candidate_rows})
    return (success_table(baseline_rows, threshold, level, common),
            success_table(candidate_rows, threshold, level, common))
