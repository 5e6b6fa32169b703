"""The decisions of scheduled retraining, as plain functions: what to train from, whether there is
anything new to train on, whether the candidate replaces the promoted model (the promotion gate,
tasks/evaluation/gate.py, judged on the quick evaluation's detections and report), and what becomes of
the runs folders of retrains that were killed."""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from tokencompose.schemas.evaluation import EvaluateConfig
from tokencompose.schemas.multigen import ModelReport, MultiGenReport
from tokencompose.schemas.registry import (Criterion, GateDecision, MultiGenResult, RegistryEntry, RegistryEvent,
                                           entry_id_problem)
from tokencompose.schemas.reports import DatasetVersion
from tokencompose.schemas.retrain import GateSettings, RetrainConfig
from tokencompose.tasks.evaluation import gate
from tokencompose.tasks.registry.store import ModelRegistry, utc_now

# Held (flock) in runs/<id>/ while that retrain runs: a folder whose lock can be taken was left by a
# run that is gone (a SIGKILL releases it).
RUNNING_FILE = ".running"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class StartingPoint:
    model: Path              # the pipeline folder the candidate is trained from and compared with
    parent: str | None       # its registry entry, or None for the base model
    label: str               # its name in the MultiGen report


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    result: MultiGenResult | None   # the deciding MG_k's means, as entries before the gate recorded them
    gate: GateDecision              # every criterion's value, interval, threshold and verdict


@dataclass(frozen=True)
class Evidence:
    """What the gate judges, read from one evaluation run of both models (same prompts and seeds)."""

    report: MultiGenReport
    rows: dict[str, list[dict]]   # model label -> its MultiGen detection rows


def latest_dataset(out_dir: Path) -> DatasetVersion:
    """The newest version of the dataset a build wrote into ``out_dir`` (its shard files: ``shard_paths``)."""
    from tokencompose.tasks.shards.versions import dataset_versions

    versions = dataset_versions(out_dir)
    if not versions:
        raise FileNotFoundError(f"{out_dir} holds no complete dataset: the build wrote no manifest")
    return versions[-1]


def new_entry_id(now: datetime | None = None, salt: str = "") -> str:
    now = now or datetime.now(timezone.utc)
    digest = hashlib.sha256(f"{now.isoformat()}|{salt}".encode()).hexdigest()[:6]
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{digest}"


def starting_point(registry: ModelRegistry, base_model: Path) -> StartingPoint:
    promoted = registry.promoted()
    if promoted is not None and promoted.pipeline_dir is not None:
        return StartingPoint(Path(promoted.pipeline_dir), promoted.id, "promoted")
    return StartingPoint(Path(base_model), None, "base")


def already_used(registry: ModelRegistry, dataset_dir: Path, version: int) -> RegistryEntry | None:
    """The entry that was trained on this dataset version already, if any (then there is nothing new)."""
    target = Path(dataset_dir).resolve()
    for entry in reversed(registry.entries()):
        if entry.dataset_version == version and Path(entry.dataset_dir).resolve() == target:
            return entry
    return None


def evaluation_input_problems(config: RetrainConfig) -> list[str]:
    """What the quick evaluation's metrics need (real image sets and their captions, the Inception and CLIP
    weights, ...), checked before any work: a missing one would otherwise be found only after training."""
    from tokencompose.tasks.evaluation.sets import metrics_preflight

    evaluation = config.evaluate_config([str(config.base_model)], ["base"], config.runs_dir)
    return [f"evaluation.metrics: {problem}" for problem in metrics_preflight(evaluation)[1]]


def read_report(json_path: Path) -> MultiGenReport:
    """The report.json an evaluation wrote (its markdown, report.md, read beside it when it is there)."""
    data = json.loads(Path(json_path).read_text())
    markdown = Path(data.get("markdown_path") or "")
    return MultiGenReport.model_validate({**data, "markdown": markdown.read_text() if markdown.is_file() else ""})


def read_evidence(evaluation: EvaluateConfig) -> Evidence:
    """Both models' detection rows (each file checked against its record) and the report of a finished evaluation."""
    from tokencompose.tasks.multigen.plan import model_rows, preflight
    from tokencompose.tasks.multigen.report import REPORT_JSON

    plan = preflight(evaluation)
    return Evidence(read_report(Path(evaluation.out_dir) / REPORT_JSON),
                    {run.label: model_rows(plan, run) for run in plan.runs})


def _model(report: MultiGenReport, label: str) -> ModelReport:
    for model in report.models:
        if model.label == label:
            return model
    raise ValueError(f"the evaluation report has no model {label!r} (it has {[m.label for m in report.models]})")


def _fid(model: ModelReport, image_set: str | None) -> float | None:
    figures = model.metrics.fid.get(image_set) if image_set else None
    value = figures.get("fid") if figures else None
    return float(value) if isinstance(value, (int, float)) else None


def _clip_pairs(baseline: ModelReport, candidate: ModelReport, image_set: str
                ) -> tuple[list[float] | None, list[float] | None]:
    """Both models' per-prompt mean CLIP scores on their common prompts (same order), or None, None."""
    def per_prompt(model: ModelReport) -> dict[str, float]:
        figures = model.metrics.clip_score.get(image_set) or {}
        scores = figures.get("per_prompt")
        if not isinstance(scores, dict):
            return {}
        return {str(k): float(v) for k, v in scores.items() if isinstance(v, (int, float)) and math.isfinite(v)}

    base, cand = per_prompt(baseline), per_prompt(candidate)
    common = sorted(set(base) & set(cand))
    if not common:
        return None, None
    return [base[k] for k in common], [cand[k] for k in common]


def _multigen_result(baseline: ModelReport, candidate: ModelReport, metric: str, baseline_name: str,
                     report: str) -> MultiGenResult | None:
    """The deciding MG_k's means as entries before the gate recorded them; None when a mean is not a number
    (every image NaN; report.json writes it as null): JSON has no NaN, and the gate fails such a candidate."""
    def means(model: ModelReport) -> dict[str, float | None]:
        values = {level: figures.get("mean") for level, figures in model.mg.items()}
        return {level: float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
                for level, v in values.items()}

    cand_means, base_means = means(candidate), means(baseline)
    if metric not in cand_means or metric not in base_means:
        raise ValueError(f"the evaluation report has no {metric} for {baseline.label} and {candidate.label}")
    base_value = base_means[metric]
    scores = {level: v for level, v in cand_means.items() if v is not None}
    if base_value is None or len(scores) < len(cand_means):
        return None
    return MultiGenResult(metric=metric, value=scores[metric], baseline=baseline_name, baseline_value=base_value,
                          scores=scores, report=report)


def judge(settings: GateSettings, evidence: Evidence, baseline_label: str, candidate_label: str, threshold: float,
          fid_set: str | None, clip_set: str, baseline_name: str) -> Decision:
    """The promotion gate on one evaluation: the MG_k gain from both models' detection rows on their common
    prompts (``threshold``: the detector's), FID on ``fid_set`` and per-prompt CLIP score on ``clip_set`` from
    the report. ``baseline_name`` is what the entry says it was compared with (an entry id or the base model)."""
    baseline, candidate = _model(evidence.report, baseline_label), _model(evidence.report, candidate_label)
    composition = gate.composition_from_rows(evidence.rows.get(baseline_label, []),
                                             evidence.rows.get(candidate_label, []), threshold, settings.level)
    clip_baseline, clip_candidate = _clip_pairs(baseline, candidate, clip_set)
    decision = gate.decide(settings, *composition, fid_baseline=_fid(baseline, fid_set),
                           fid_candidate=_fid(candidate, fid_set), clip_baseline=clip_baseline,
                           clip_candidate=clip_candidate)
    result = _multigen_result(baseline, candidate, f"MG{settings.level}", baseline_name,
                              str(evidence.report.markdown_path))
    if decision.promote:
        reason = "every gate criterion passed: " + "; ".join(f"{c.name}: {c.reason}" for c in decision.criteria)
    else:
        reason = "gate failed: " + "; ".join(decision.failed())
    return Decision(decision.promote, reason, result, decision)


def _figure(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _interval(criterion: Criterion) -> str:
    if criterion.low is None:
        return "-"
    if criterion.high is None:
        return f"[{criterion.low:+.3f}, ∞)"
    return f"[{criterion.low:+.3f}, {criterion.high:+.3f}]"


THRESHOLD_SIGNS = {"fid": "change ≤", "clip_score": "change ≥"}   # composition: the lower bound must exceed it
GATE_COLUMNS = ("criterion", "baseline", "candidate", "change", "interval", "threshold", "verdict")


def gate_rows(decision: GateDecision) -> list[tuple[str, ...]]:
    """One row of :data:`GATE_COLUMNS` per judged criterion, as text."""
    rows: list[tuple[str, ...]] = []
    for c in decision.criteria:
        sign = THRESHOLD_SIGNS.get(c.name, "lower bound >")
        verdict = "pass" if c.passed else ("FAIL (not measured)" if c.value is None else "FAIL")
        rows.append((c.name, _figure(c.baseline), _figure(c.candidate), _figure(c.value, True), _interval(c),
                     f"{sign} {c.threshold:+.3f}", verdict))
    return rows


def gate_table(decision: GateDecision) -> list[str]:
    """The gate's criteria as markdown table lines."""
    return ["| " + " | ".join(GATE_COLUMNS) + " |", "|" + "---|" * len(GATE_COLUMNS),
            *("| " + " | ".join(row) + " |" for row in gate_rows(decision))]


def gate_settings_line(settings: GateSettings) -> str:
    fid = "not judged" if settings.fid_tolerance is None else f"tolerance {settings.fid_tolerance:g}"
    clip = "not judged" if settings.clip_tolerance is None else f"tolerance {settings.clip_tolerance:g}"
    return (f"Gate: MG{settings.level} gain's one-sided {settings.confidence:.0%} lower bound (paired bootstrap over "
            f"prompts, {settings.bootstrap_samples} samples, seed {settings.seed}) must exceed the margin "
            f"{settings.margin:g}; FID {fid}; CLIP score {clip}. Interval: the gain's lower bound (one-sided), "
            "CLIP score's two-sided interval; FID has none.")


def comparison_markdown(entry_id: str, start: StartingPoint, decision: Decision | None, note: str,
                        baseline_scores: dict[str, float] | None = None) -> str:
    """The run's markdown artifact: the gate's criteria, both models' MultiGen means, and the decision."""
    lines = [f"## retrain-tokencompose: {entry_id}", "", note, ""]
    if decision is not None:
        r = decision.result
        lines += [f"Candidate against {start.label} ({start.parent or start.model}), on the same prompts and "
                  "seeds.", "", *gate_table(decision.gate), "", gate_settings_line(decision.gate.settings), ""]
        if r is not None:
            keys = sorted(r.scores)
            lines += ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            if baseline_scores:
                lines.append(f"| {start.label} | "
                             + " | ".join(f"{baseline_scores.get(k, float('nan')):.2f}" for k in keys) + " |")
            lines += ["| candidate | " + " | ".join(f"{r.scores[k]:.2f}" for k in keys) + " |", ""]
        lines.append(f"Decision: {'promoted' if decision.promote else 'rejected'}: {decision.reason}.")
        if r is not None and r.report:
            lines += ["", f"Full evaluation report: {r.report}"]
    return "\n".join(lines)


# ------------------------------------------------------------------ runs folders of killed retrains
@contextmanager
def running(registry: ModelRegistry, run_dir: Path) -> Iterator[None]:
    """Create the run's folder and hold its lock for as long as the run lasts.

    Both happen under the registry's lock, which :func:`register_interrupted` also takes, so a run
    that has just started is never mistaken for a killed one."""
    with registry.locked():
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / RUNNING_FILE, "a+")
        fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        handle.close()  # releases the lock


def _is_running(run_dir: Path) -> bool:
    lock = run_dir / RUNNING_FILE
    if not lock.is_file():
        return False
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def unregistered_runs(registry: ModelRegistry, runs_dir: Path) -> list[Path]:
    """Runs folders named like an entry that have no entry and whose run is not running (killed runs)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return [folder for folder in sorted(runs_dir.iterdir())
            if folder.is_dir() and entry_id_problem(folder.name) is None
            and not registry.entry_path(folder.name).exists() and not _is_running(folder)]


def _what_it_trained(run_dir: Path) -> dict:
    """pretrained_model and shards from the killed run's own train_config.json, where it got that far."""
    try:
        data = json.loads((run_dir / "train" / "train_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def register_interrupted(registry: ModelRegistry, runs_dir: Path, base_model: Path, dataset_dir: Path,
                         train_hash: str, by: str) -> list[RegistryEntry]:
    """Register every runs folder a killed retrain left as a failed entry whose reason starts with
    'interrupted'. It names no dataset version, so the version it was training on is trained again."""
    registered = []
    with registry.locked():
        for folder in unregistered_runs(registry, runs_dir):
            trained = _what_it_trained(folder)
            model = trained.get("pretrained_model")
            shards = trained.get("shards")
            entry = RegistryEntry(
                id=folder.name, status="failed", created=utc_now(), pipeline_dir=None,
                base_model=Path(model) if isinstance(model, str) else Path(base_model), dataset_dir=dataset_dir,
                dataset_shards=shards if isinstance(shards, list) and all(isinstance(s, str) for s in shards) else [],
                train_config_hash=train_hash, steps=0,
                reason=f"{INTERRUPTED}: the run ended before it recorded a result (killed?); its folder {folder} "
                       "is left for `tokencompose models registry gc`")
            registered.append(registry.register(entry, by=by))
    return registered


def collect_runs(registry: ModelRegistry, runs_dir: Path, dry_run: bool = False, by: str = "manual") -> list[str]:
    """Remove the runs folders of failed entries (interrupted or failed in training): they hold no
    model. A folder holding the pipeline of an entry that is not failed is never removed; a folder no
    entry names is left for the next retrain to register. Returns one line per folder."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return [f"no runs folder at {runs_dir}: nothing to remove"]
    entries = {e.id: e for e in registry.entries()}
    models = [Path(e.pipeline_dir).resolve() for e in entries.values() if e.pipeline_dir is not None]
    lines: list[str] = []
    removed: list[str] = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        entry = entries.get(folder.name)
        if entry is None:
            state = "running" if _is_running(folder) else "not registered yet (the next retrain registers it)"
            lines.append(f"kept {folder}: {state}")
        elif entry.status != "failed" or any(m.is_relative_to(folder.resolve()) for m in models):
            lines.append(f"kept {folder}: entry {entry.id} is {entry.status}")
        elif dry_run:
            lines.append(f"would remove {folder}: entry {entry.id} failed ({entry.reason.split(':')[0]})")
        else:
            shutil.rmtree(folder)
            removed.append(folder.name)
            lines.append(f"removed {folder}: entry {entry.id} failed ({entry.reason.split(':')[0]})")
    if removed:
        registry.record(RegistryEvent(at=utc_now(), action="gc", entry="", by=by,
                                      detail=f"removed the runs folders of {', '.join(removed)} from {runs_dir}"))
    return lines or [f"{runs_dir} holds no runs folders"]
