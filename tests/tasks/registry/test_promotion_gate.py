"""The promotion gate as retraining applies it (tasks/registry/promotion.py ``judge``, what the flow calls): from
both models' MultiGen detection rows and the evaluation's report.json, a candidate is rejected for noise (a
higher mean whose lower bound does not clear the margin), rejected for lost quality (FID beyond tolerance while
the gain is clearly real), rejected on missing evidence, and promoted when everything passes; the decision is
stored in the registry entry, shown in the markdown artifact and by `models registry show`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokencompose.cli import parser_for
from tokencompose.schemas.multigen import ModelMetrics, ModelReport, MultiGenReport
from tokencompose.schemas.registry import RegistryEntry
from tokencompose.schemas.retrain import GateSettings
from tokencompose.tasks.multigen.metrics import score_rows
from tokencompose.tasks.registry.promotion import (Evidence, StartingPoint, comparison_markdown, judge, read_report)
from tokencompose.tasks.registry.store import ModelRegistry

CATEGORIES = ["cat", "dog", "cup"]
THRESHOLD = 0.1
SETTINGS = GateSettings(level=3, margin=0.0, confidence=0.95, bootstrap_samples=1000, seed=7, fid_tolerance=0.5,
                        clip_tolerance=0.5)
PROMPTS, IMAGES = 40, 2


def row(prompt: int, image: int, composed: bool | None) -> dict:
    """A detections row: all three categories found (MG3 success), only the cat, or a NaN image (None)."""
    found = CATEGORIES if composed else ["cat"]
    return {"prompt_id": prompt, "image_index": image, "categories": CATEGORIES, "nan": composed is None,
            "categories_scores": {c: {"score": 0.9 if c in found and composed is not None else 0.0, "box": None}
                                  for c in CATEGORIES}}


def model_rows(successes: np.ndarray) -> list[dict]:
    """Rows from a (prompts, images) array: 1 composed, 0 not, -1 a NaN image."""
    return [row(p, i, None if successes[p, i] < 0 else bool(successes[p, i]))
            for p in range(successes.shape[0]) for i in range(successes.shape[1])]


def metrics(fid: float | None, clip: dict[int, float] | None) -> ModelMetrics:
    return ModelMetrics(fid={"coco": {"fid": fid, "real_images": 50, "generated_images": 50}} if fid is not None else {},
                        clip_score={"coco": {"clip_score": float(np.mean(list(clip.values()))), "images": 50,
                                             "per_prompt": clip}} if clip is not None else {})


def evidence(tmp_path: Path, baseline: np.ndarray, candidate: np.ndarray, base_metrics: ModelMetrics,
             cand_metrics: ModelMetrics) -> Evidence:
    """Both models' rows and a report.json written as the evaluation writes it, read back as the flow reads it."""
    rows = {"promoted": model_rows(baseline), "candidate": model_rows(candidate)}
    models = [ModelReport(label=label, path=f"/models/{label}", model_id=label, metrics=figures,
                          **score_rows(rows[label], THRESHOLD).model_dump())
              for label, figures in (("promoted", base_metrics), ("candidate", cand_metrics))]
    report = MultiGenReport(benchmark={"prompts": PROMPTS}, models=models, comparisons=[],
                            markdown_path=tmp_path / "report.md", json_path=tmp_path / "report.json", markdown="# r")
    report.markdown_path.write_text(report.markdown)
    report.json_path.write_text(json.dumps(report.model_dump(mode="json", exclude={"markdown"})))
    return Evidence(read_report(report.json_path), rows)


def judged(ev: Evidence, settings: GateSettings = SETTINGS):
    return judge(settings, ev, "promoted", "candidate", THRESHOLD, "coco", "coco", "20261201T000000Z-abcdef")


def clip_scores(rng, mean: float, spread: float = 1.0) -> dict[int, float]:
    return {p: float(v) for p, v in enumerate(rng.normal(mean, spread, PROMPTS))}


def test_a_higher_mean_within_noise_is_rejected(tmp_path):
    rng = np.random.default_rng(0)
    baseline = (rng.random((PROMPTS, IMAGES)) < 0.5).astype(int)
    candidate = baseline.copy()
    misses = np.argwhere(candidate == 0)[:2]             # two more composed images, by chance
    candidate[misses[:, 0], misses[:, 1]] = 1
    clip = clip_scores(rng, 30.0)
    decision = judged(evidence(tmp_path, baseline, candidate, metrics(20.0, clip), metrics(20.1, clip)))
    composition, fid, clip_criterion = decision.gate.criteria
    assert decision.result.value > decision.result.baseline_value               # the mean is higher ...
    assert composition.value == pytest.approx(100 * 2 / (PROMPTS * IMAGES))
    assert composition.low is not None and composition.low <= SETTINGS.margin   # ... but not beyond noise
    assert not composition.passed and fid.passed and clip_criterion.passed
    assert not decision.promote and decision.reason.startswith("gate failed: composition_MG3: gain +2.50")


def test_a_real_gain_with_lost_image_quality_is_rejected(tmp_path):
    rng = np.random.default_rng(1)
    baseline = (rng.random((PROMPTS, IMAGES)) < 0.3).astype(int)
    candidate = (rng.random((PROMPTS, IMAGES)) < 0.8).astype(int)
    clip = clip_scores(rng, 30.0)
    decision = judged(evidence(tmp_path, baseline, candidate, metrics(20.0, clip), metrics(21.5, clip)))
    composition, fid, clip_criterion = decision.gate.criteria
    assert composition.passed and composition.low > 20                          # the gain is clearly real
    assert (fid.baseline, fid.candidate, fid.value, fid.threshold) == (20.0, 21.5, pytest.approx(1.5), 0.5)
    assert not fid.passed and clip_criterion.passed and not decision.promote
    assert decision.reason == f"gate failed: fid: {fid.reason}" and "quality lost" in fid.reason


def test_a_clip_score_drop_beyond_tolerance_is_rejected(tmp_path):
    rng = np.random.default_rng(2)
    baseline = (rng.random((PROMPTS, IMAGES)) < 0.3).astype(int)
    candidate = (rng.random((PROMPTS, IMAGES)) < 0.8).astype(int)
    clip = clip_scores(rng, 30.0)
    worse = {p: v - 2.0 for p, v in clip.items()}
    decision = judged(evidence(tmp_path, baseline, candidate, metrics(20.0, clip), metrics(20.0, worse)))
    clip_criterion = decision.gate.criteria[2]
    assert clip_criterion.value == pytest.approx(-2.0) and clip_criterion.low == pytest.approx(-2.0)
    assert not clip_criterion.passed and not decision.promote


def test_promoted_when_the_gain_is_real_and_quality_holds(tmp_path):
    rng = np.random.default_rng(3)
    baseline = (rng.random((PROMPTS, IMAGES)) < 0.3).astype(int)
    candidate = (rng.random((PROMPTS, IMAGES)) < 0.8).astype(int)
    clip = clip_scores(rng, 30.0)
    # the candidate's CLIP scores cover one prompt fewer: the pairs are aligned on the common prompts
    cand_clip = {p: v + rng.normal(0, 0.1) for p, v in clip.items() if p != 5}
    decision = judged(evidence(tmp_path, baseline, candidate, metrics(20.88, clip), metrics(20.19, cand_clip)))
    assert decision.promote and [c.passed for c in decision.gate.criteria] == [True, True, True]
    clip_criterion = decision.gate.criteria[2]
    common = [p for p in clip if p != 5]
    assert clip_criterion.baseline == pytest.approx(np.mean([clip[p] for p in common]))
    assert clip_criterion.low < clip_criterion.value < clip_criterion.high
    assert decision.reason.startswith("every gate criterion passed: composition_MG3: gain")
    assert decision.result.metric == "MG3" and decision.result.baseline == "20261201T000000Z-abcdef"

    start = StartingPoint(Path("/models/promoted"), "20261201T000000Z-abcdef", "promoted")
    markdown = comparison_markdown("20261202T000000Z-123456", start, decision, "Trained 2 steps.",
                                   {k: 1.0 for k in decision.result.scores}).splitlines()
    header = markdown.index("| criterion | baseline | candidate | change | interval | threshold | verdict |")
    table = markdown[header + 2:header + 5]
    assert [line.split(" | ")[0] for line in table] == ["| composition_MG3", "| fid", "| clip_score"]
    assert all(line.endswith("| pass |") for line in table)
    assert "| 20.880 | 20.190 | -0.690 | - | change ≤ +0.500 |" in table[1]
    assert "Decision: promoted: every gate criterion passed" in "\n".join(markdown)


def test_missing_evidence_never_promotes(tmp_path):
    rng = np.random.default_rng(4)
    baseline = (rng.random((PROMPTS, IMAGES)) < 0.3).astype(int)
    candidate = (rng.random((PROMPTS, IMAGES)) < 0.8).astype(int)
    clip = clip_scores(rng, 30.0)
    no_fid = judged(evidence(tmp_path, baseline, candidate, metrics(20.0, clip), metrics(None, clip)))
    assert [c.reason for c in no_fid.gate.criteria if not c.passed] == ["not measured"] and not no_fid.promote
    no_clip = judged(evidence(tmp_path, baseline, candidate, metrics(20.0, clip), metrics(20.0, None)))
    assert not no_clip.gate.criteria[2].passed and no_clip.gate.criteria[2].value is None and not no_clip.promote
    wrong_set = judge(SETTINGS, evidence(tmp_path, baseline, candidate, metrics(20.0, clip), metrics(20.0, clip)),
                      "promoted", "candidate", THRESHOLD, "flickr30k", "flickr30k", "base")
    assert [c.passed for c in wrong_set.gate.criteria] == [True, False, False]

    all_nan = np.full((PROMPTS, IMAGES), -1)              # every candidate image NaN: nothing scored
    broken = judged(evidence(tmp_path, baseline, all_nan, metrics(20.0, clip), metrics(20.0, clip)))
    assert broken.gate.criteria[0].reason.startswith("not measured") and not broken.promote
    assert broken.result is None                          # its MG means are NaN: JSON has no NaN
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(entry("20261202T000000Z-nannan", broken))
    assert ModelRegistry(tmp_path / "registry").entry("20261202T000000Z-nannan").gate == broken.gate


def test_unjudged_criteria_are_left_out(tmp_path):
    rng = np.random.default_rng(5)
    baseline = (rng.random((PROMPTS, IMAGES)) < 0.3).astype(int)
    candidate = (rng.random((PROMPTS, IMAGES)) < 0.8).astype(int)
    settings = SETTINGS.model_copy(update={"fid_tolerance": None, "clip_tolerance": None, "level": 2})
    decision = judged(evidence(tmp_path, baseline, candidate, ModelMetrics(), ModelMetrics()), settings)
    assert [c.name for c in decision.gate.criteria] == ["composition_MG2"] and decision.promote


def entry(entry_id: str, decision, status: str = "rejected") -> RegistryEntry:
    return RegistryEntry(id=entry_id, status=status, created="2026-12-02T00:00:00+00:00", pipeline_dir=None,
                         base_model=Path("/models/sd"), dataset_dir=Path("/data"), dataset_version=1,
                         train_config_hash="abc", steps=2, multigen=decision.result, gate=decision.gate,
                         reason=decision.reason)


def test_the_registry_stores_the_decision_and_show_prints_it(tmp_path, capsys):
    rng = np.random.default_rng(6)
    baseline = (rng.random((PROMPTS, IMAGES)) < 0.3).astype(int)
    candidate = (rng.random((PROMPTS, IMAGES)) < 0.8).astype(int)
    clip = clip_scores(rng, 30.0)
    decision = judged(evidence(tmp_path, baseline, candidate, metrics(20.0, clip), metrics(21.5, clip)))
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(entry("gated", decision))
    stored = ModelRegistry(tmp_path / "registry").entry("gated")
    assert stored.gate == decision.gate and stored.multigen == decision.result
    # an entry written before the gate (no "gate" key) still loads
    old = json.loads(registry.entry_path("gated").read_text())
    old.pop("gate")
    old.update(id="before-gate")
    registry.entry_path("before-gate").write_text(json.dumps(old))
    assert ModelRegistry(tmp_path / "registry").entry("before-gate").gate is None

    def run(*argv):
        args = parser_for("models").parse_args(["models", "registry", "--registry", str(tmp_path / "registry"),
                                                *argv])
        return args.handler(args), capsys.readouterr()

    code, out = run("show", "gated")
    assert code == 0 and out.err == ""
    lines = out.out.splitlines()
    assert "gate: failed" in lines and "status: rejected" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["criterion", "baseline"])
    criteria = {line.split()[0]: line for line in lines[header + 1:header + 4]}
    assert criteria["fid"].split()[1:4] == ["20.000", "21.500", "+1.500"] and criteria["fid"].endswith("FAIL")
    assert criteria["composition_MG3"].endswith("pass") and criteria["clip_score"].endswith("pass")
    assert any(line.startswith("  fid: FID 20.000 -> 21.500") and "quality lost" in line for line in lines)
    code, out = run("show", "before-gate")
    assert code == 0 and "gate: not recorded (not evaluated, or written before the promotion gate)" in out.out
    code, out = run()
    rows = {line.split()[0]: line for line in out.out.splitlines()[1:]}
    assert "failed: fid" in rows["gated"] and code == 0
    code, out = run("show", "missing")
    assert code == 2 and "no registry entry 'missing'" in out.err
