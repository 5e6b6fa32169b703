"""The decisions of scheduled retraining, as plain functions: what to train from, whether there is
anything new to train on, and whether the candidate replaces the promoted model."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tokencompose.schemas.registry import MultiGenResult, RegistryEntry
from tokencompose.tasks.registry.store import ModelRegistry


@dataclass(frozen=True)
class StartingPoint:
    model: Path              # the pipeline folder the candidate is trained from and compared with
    parent: str | None       # its registry entry, or None for the base model
    label: str               # its name in the MultiGen report


@dataclass(frozen=True)
class DatasetVersion:
    version: int
    shards: list[str]        # shard file paths of this version (all of them, old and new)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    result: MultiGenResult


def latest_dataset(out_dir: Path) -> DatasetVersion:
    """The newest version of the dataset a build wrote into ``out_dir`` and its shard files."""
    from tokencompose.tasks.shards.dataset import dataset_versions, version_shards

    versions = dataset_versions(out_dir)
    if not versions:
        raise FileNotFoundError(f"{out_dir} holds no complete dataset: the build wrote no manifest")
    return DatasetVersion(versions[-1].version, [str(p) for p in version_shards(out_dir)])


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


def decide(candidate: dict, baseline: dict, metric: str, margin: float, baseline_name: str,
           report: str | None = None) -> Decision:
    """Promote when the candidate's metric beats the baseline's by more than ``margin`` points.

    ``candidate``/``baseline`` are a MultiGen report's ``mg`` dicts: {"MG3": {"mean": .., "std": ..}, ...}."""
    value, base = float(candidate[metric]["mean"]), float(baseline[metric]["mean"])
    result = MultiGenResult(metric=metric, value=value, baseline=baseline_name, baseline_value=base,
                            scores={k: float(v["mean"]) for k, v in candidate.items()}, report=report)
    gain = value - base
    if gain > margin:
        return Decision(True, f"{metric} {value:.2f} beats {baseline_name}'s {base:.2f} by {gain:.2f} "
                              f"(> margin {margin:g})", result)
    return Decision(False, f"{metric} {value:.2f} vs {baseline_name}'s {base:.2f}: gain {gain:.2f} is not above "
                           f"the margin {margin:g}", result)


def comparison_markdown(entry_id: str, start: StartingPoint, decision: Decision | None, note: str,
                        baseline_scores: dict[str, float] | None = None) -> str:
    """The run's markdown artifact: both models' MultiGen means side by side and the decision."""
    lines = [f"## retrain-tokencompose: {entry_id}", "", note, ""]
    if decision is not None:
        r = decision.result
        keys = sorted(r.scores)
        lines += ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        if baseline_scores:
            lines.append(f"| {start.label} | " + " | ".join(f"{baseline_scores.get(k, float('nan')):.2f}" for k in keys)
                         + " |")
        lines += ["| candidate | " + " | ".join(f"{r.scores[k]:.2f}" for k in keys) + " |",
                  "", f"Deciding metric {r.metric}: candidate {r.value:.2f}, {start.label} ({r.baseline}) "
                      f"{r.baseline_value:.2f}.", "", f"Decision: {'promoted' if decision.promote else 'rejected'}: "
                      f"{decision.reason}."]
        if r.report:
            lines += ["", f"Full MultiGen report: {r.report}"]
    return "\n".join(lines)
