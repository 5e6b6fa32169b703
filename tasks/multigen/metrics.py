"""MultiGen scores from stored detections.

MG_k of one round = the percentage of that round's images (the r-th image of every prompt) in which
at least k of the prompt's categories are detected; a model's MG_k is the mean and the population
standard deviation over the rounds (the paper's table format). Images whose generation produced
NaNs are counted apart and never scored: a round's percentage is over its scored images.
Per category: how often it is detected when asked for; per pair: how often both are.
The paired bootstrap resamples prompts (the same prompts and seeds for both models) to give a
confidence interval of a difference in pooled MG_k.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np

from tokencompose.schemas.multigen import ModelScores

LEVELS = (1, 2, 3, 4, 5)


def detected(row: dict, threshold: float) -> list[str]:
    """The row's categories whose best box scores above ``threshold`` (NaN images: none), recomputed
    from the stored scores."""
    from tokencompose.tasks.multigen.detection import detected_categories

    return detected_categories(row["categories"], row.get("categories_scores"), threshold)


def pair_key(a: str, b: str) -> str:
    return " & ".join(sorted((a, b)))


def score_rows(rows: Sequence[dict], threshold: float) -> ModelScores:
    valid = [r for r in rows if not r["nan"]]
    rounds = sorted({r["image_index"] for r in rows})
    scores = ModelScores(images=len(rows), scored=len(valid), nan=len(rows) - len(valid), rounds=len(rounds))
    counts = {id(r): len(detected(r, threshold)) for r in valid}
    for k in LEVELS:
        per_round = []
        for r in rounds:
            members = [row for row in valid if row["image_index"] == r]
            if members:
                per_round.append(100.0 * sum(counts[id(row)] >= k for row in members) / len(members))
        values = np.array(per_round, dtype=np.float64)
        scores.mg[f"MG{k}"] = {"mean": float(values.mean()) if len(values) else float("nan"),
                               "std": float(values.std(ddof=0)) if len(values) else float("nan"),
                               "rounds": [round(v, 6) for v in per_round]}
    categories: dict[str, list[int]] = {}
    pairs: dict[str, list[int]] = {}
    for row in valid:
        found = set(detected(row, threshold))
        for c in row["categories"]:
            entry = categories.setdefault(c, [0, 0])
            entry[0] += 1
            entry[1] += c in found
        for a, b in combinations(row["categories"], 2):
            entry = pairs.setdefault(pair_key(a, b), [0, 0])
            entry[0] += 1
            entry[1] += a in found and b in found
    scores.categories = {c: {"images": n, "detected": d, "rate": d / n} for c, (n, d) in sorted(categories.items())}
    scores.pairs = {p: {"images": n, "both": d, "rate": d / n} for p, (n, d) in sorted(pairs.items())}
    return scores


def success_table(rows: Sequence[dict], threshold: float, k: int, prompt_ids: Sequence[int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt (in ``prompt_ids`` order): the number of scored images with >= k detections, and of scored images."""
    position = {pid: i for i, pid in enumerate(prompt_ids)}
    success = np.zeros(len(prompt_ids))
    scored = np.zeros(len(prompt_ids))
    for row in rows:
        i = position.get(row["prompt_id"])
        if i is None or row["nan"]:
            continue
        scored[i] += 1
        success[i] += len(detected(row, threshold)) >= k
    return success, scored


def paired_bootstrap(baseline: Sequence[dict], model: Sequence[dict], threshold: float, k: int, samples: int,
                     seed: int, confidence: float) -> dict:
    """Pooled MG_k of ``model`` minus ``baseline`` over their common prompts, with a percentile interval
    from resampling prompts with replacement (the same draws for both: a paired bootstrap)."""
    prompt_ids = sorted({r["prompt_id"] for r in baseline} & {r["prompt_id"] for r in model})
    sa, na = success_table(baseline, threshold, k, prompt_ids)
    sb, nb = success_table(model, threshold, k, prompt_ids)
    return paired_rate_difference((sa, na), (sb, nb), samples, seed, confidence)


def _rate(success, scored):
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * success / scored


def _draws(prompts: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, prompts, size=(samples, prompts))


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_rate_difference(baseline: tuple[Sequence[float], Sequence[float]] | tuple[np.ndarray, np.ndarray],
                           model: tuple[Sequence[float], Sequence[float]] | tuple[np.ndarray, np.ndarray],
                           samples: int, seed: int, confidence: float) -> dict:
    """Pooled rate (percent) of ``model`` minus ``baseline`` from per-prompt (successes, scored images) aligned
    by prompt, with the percentile interval of a paired bootstrap over prompts."""
    (sa, na), (sb, nb) = (np.asarray(a, dtype=np.float64) for a in baseline), (np.asarray(a, dtype=np.float64)
                                                                               for a in model)
    if not len(sa):
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "prompts": 0}
    diff = float(_rate(sb.sum(), nb.sum()) - _rate(sa.sum(), na.sum()))
    draws = _draws(len(sa), samples, seed)
    weights = np.stack([np.bincount(d, minlength=len(sa)) for d in draws]).astype(np.float64)
    low, high = _interval(_rate(weights @ sb, weights @ nb) - _rate(weights @ sa, weights @ na), confidence)
    return {"diff": diff, "low": low, "high": high, "prompts": len(sa)}


def paired_mean_difference(baseline: Sequence[float], model: Sequence[float], samples: int, seed: int,
                           confidence: float) -> dict:
    """Mean of ``model`` minus mean of ``baseline`` over per-prompt values aligned by prompt (e.g. CLIP score),
    with the percentile interval of a paired bootstrap over prompts."""
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(model, dtype=np.float64)
    if not len(a):
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "prompts": 0}
    draws = _draws(len(a), samples, seed)
    low, high = _interval(b[draws].mean(axis=1) - a[draws].mean(axis=1), confidence)
    return {"diff": float(b.mean() - a.mean()), "low": low, "high": high, "prompts": len(a)}
