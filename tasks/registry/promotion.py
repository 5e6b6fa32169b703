"""The decisions of scheduled retraining, as plain functions: what to train from, whether there is
anything new to train on, whether the candidate replaces the promoted model, and what becomes of the
runs folders of retrains that were killed."""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from tokencompose.schemas.reports import DatasetVersion
from tokencompose.schemas.registry import MultiGenResult, RegistryEntry, RegistryEvent, entry_id_problem
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
    result: MultiGenResult


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
