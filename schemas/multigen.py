"""MultiGen's results: a model's scores, the report of a run, and the summary a registry entry keeps.

``ModelScores`` is what :func:`tasks.multigen.metrics.score_rows` computes from stored detections;
``ModelReport`` is those scores with where the model and its images are; ``MultiGenReport`` is
report.json; ``MultiGenResult`` is the deciding metric of a retraining comparison (schemas/registry.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from tokencompose.schemas.base import StrictRecord


class ModelScores(StrictRecord):
    """One model's MultiGen scores over its generated images (NaN images counted apart, never scored)."""

    images: int
    scored: int
    nan: int
    rounds: int
    mg: dict[str, dict[str, Any]] = Field(default_factory=dict, description='"MG2" -> {"mean", "std", '
                                          '"rounds": [per-round percentages]}')
    categories: dict[str, dict[str, int | float]] = Field(default_factory=dict, description='category -> '
                                                          '{"images", "detected", "rate"}')
    pairs: dict[str, dict[str, int | float]] = Field(default_factory=dict, description='"a & b" -> '
                                                     '{"images", "both", "rate"}')

    def means(self) -> dict[str, float]:
        """MG_k -> its mean over the rounds, in percent."""
        return {level: float(value["mean"]) for level, value in self.mg.items()}


class ModelMetrics(StrictRecord):
    """One model's figures beside MultiGen (``<label>/metrics.json``); a metric not run is None / empty.

    ``fid`` and ``clip_score`` are keyed by image set: a real set's name (``coco``, ``flickr30k``: its
    captions' generations) or ``multigen`` (CLIP score of the MultiGen images when no real set is given).
    """

    visor: dict[str, Any] | None = Field(default=None, description="OA, OA_subject, OA_object, VISOR_cond, "
                                         "VISOR_uncond, VISOR_1..4 (percent), images, scored, nan, prompts, "
                                         "per_relation")
    optigen: dict[str, Any] | None = Field(default=None, description='level ("MG2"), mean, std, rounds, pooled, '
                                           "images, nan, categories, size, prompts")
    fid: dict[str, dict[str, Any]] = Field(default_factory=dict, description='set -> {"fid", "real_images", '
                                           '"generated_images", "real_cache_hit", "layer", "resize"}')
    clip_score: dict[str, dict[str, Any]] = Field(default_factory=dict, description='set -> {"clip_score", "std", '
                                                  '"images", "model", "per_prompt": {prompt id: mean}}')
    latency: dict[str, Any] | None = Field(default=None, description="LatencyResult (tasks/evaluation/latency.py)")
    grounding: dict[str, Any] | None = Field(default=None, description="the fast variant: protocol, miou, nouns, "
                                             "images, timesteps, threshold, skipped_samples (per-noun IoUs in "
                                             "grounding.json)")
    grounding_daam: dict[str, Any] | None = Field(default=None, description="DAAM's protocol after null-text "
                                                  "inversion, the same fields (per-noun IoUs in grounding-daam.json)")


class ModelReport(ModelScores):
    """A model's scores in the report, with its folder, its sample grid and attention grids (relative paths)."""

    label: str
    path: str
    model_id: str
    grid: str | None = None
    attention: list[str] = []
    metrics: ModelMetrics = Field(default_factory=ModelMetrics)


class Comparison(StrictRecord):
    baseline: str
    model: str
    mg: dict[str, dict[str, float]] = Field(description='"MG3" -> {"diff", "low", "high", "prompts"}: the paired '
                                            'bootstrap of the model minus the baseline')
    metrics: dict[str, dict[str, float | None]] = Field(default_factory=dict, description='"OA", "VISOR_cond", '
                                                        '"OptiGen", "CLIP score (coco)", "FID (coco)", ... -> {"diff", '
                                                        '"low", "high"}: model minus baseline on the same prompts and '
                                                        'seeds (paired bootstrap over prompts; FID and latency have no '
                                                        'interval)')


class MultiGenReport(StrictRecord):
    """report.json (without ``markdown``, which is report.md)."""

    benchmark: dict[str, Any]
    models: list[ModelReport]
    comparisons: list[Comparison]
    redone: list[str] = Field(default=[], description='"<label>/<file> redone: <why>", one per file found broken '
                              'and made again')
    markdown_path: Path
    json_path: Path
    markdown: str

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per model for a Prefect table artifact."""
        rows = []
        for m in self.models:
            row: dict[str, Any] = {"model": m.label, "images": m.images, "nan": m.nan}
            row.update({k: f"{v['mean']:.2f} ± {v['std']:.2f}" for k, v in m.mg.items()})
            rows.append(row)
        return rows


class MultiGenResult(StrictRecord):
    """The quick MultiGen run a registry entry was judged on (both models used the same prompts and seeds).
    A rate with no scored image is NaN, written as JSON's NaN so the entry reads back (null would not)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    metric: str = Field(description="the deciding metric, e.g. mg3")
    value: float = Field(description="the entry's value of the metric, in percent")
    baseline: str = Field(description="what it was compared with: a registry entry id or the base model")
    baseline_value: float
    scores: dict[str, float] = Field(default_factory=dict, description="mg1..mg5 means of this model "
                                     "(ModelScores.means)")
    report: str | None = Field(default=None, description="the markdown report of the comparison")
