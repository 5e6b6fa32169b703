"""The retrain-tokencompose flow: grow the dataset, train a candidate from the promoted model, evaluate
both with the quick evaluation on the same prompts and seeds, and let the promotion gate decide: the
MG_k gain's paired-bootstrap lower bound must exceed the margin, FID and CLIP score must stay within
their tolerances (tasks/evaluation/gate.py, RetrainConfig.gate).

The promoted model changes only in the last step, through the registry's atomic index: any failure
before it (a crash, a kill, a diverged loss) leaves the promoted model as it was.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tokencompose.flows.build import build_grounded_coco
from tokencompose.flows.evaluate import evaluate_multigen
from tokencompose.flows.train import train_tokencompose
from tokencompose.schemas.registry import RegistryEntry, Status
from tokencompose.schemas.retrain import RetrainConfig
from tokencompose.tasks.registry import promotion as retraining
from tokencompose.tasks.registry.store import ModelRegistry, utc_now

FLOW_NAME = "retrain-tokencompose"


def _by() -> str:
    run_id = flow_run.get_id()
    return f"{FLOW_NAME}/{flow_run.get_name() or run_id}" if run_id else FLOW_NAME


def _why(error: Exception) -> str:
    """An exception as one line of an entry's reason."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:500]}"


def _entry(config: RetrainConfig, entry_id: str, start: retraining.StartingPoint, version, status: Status,
           reason: str, steps: int = 0, pipeline: Path | None = None,
           decision: retraining.Decision | None = None, uses_version: bool = True) -> RegistryEntry:
    """``uses_version=False``: the entry names no dataset version, so the next run trains on it again."""
    return RegistryEntry(id=entry_id, status=status, created=utc_now(), pipeline_dir=pipeline,
                         base_model=start.model, parent=start.parent, dataset_dir=config.build.output.out_dir,
                         dataset_version=version.version if uses_version else None,
                         dataset_shards=version.shard_paths(config.build.output.out_dir),
                         train_config_hash=config.train_hash(), steps=steps, reason=reason,
                         multigen=decision.result if decision else None, gate=decision.gate if decision else None)


@flow(name=FLOW_NAME, log_prints=False)
def retrain_tokencompose(config: RetrainConfig) -> dict[str, Any]:
    """Incremental build -> train from the promoted model -> quick evaluation of both -> the gate promotes or rejects."""
    logger = get_run_logger()
    problems = retraining.evaluation_input_problems(config)
    if problems:
        raise ValueError("cannot start the retraining:\n" + "\n".join(f"  - {p}" for p in problems))
    registry = _sound_registry(config, logger)
    build_summary = build_grounded_coco(config=config.build)
    version = retraining.latest_dataset(config.build.output.out_dir)
    used = retraining.already_used(registry, config.build.output.out_dir, version.version)
    if used is not None:
        note = (f"nothing new: dataset version {version.version} ({len(version.shards)} shards) was used by "
                f"{used.id} ({used.status}); no training")
        logger.info(note)
        create_markdown_artifact(markdown=f"## {FLOW_NAME}\n\n{note}\n", key="retrain-tokencompose-decision")
        return {"status": "nothing new", "dataset_version": version.version, "build": build_summary}

    start = retraining.starting_point(registry, config.base_model)
    entry_id = retraining.new_entry_id(salt=str(version.version))
    run_dir = Path(config.runs_dir) / entry_id
    with retraining.running(registry, run_dir):
        return _train_judge_decide(config, registry, entry_id, run_dir, start, version, logger)


def _sound_registry(config: RetrainConfig, logger) -> ModelRegistry:
    """The registry, checked and repaired before anything else; runs folders that killed retrains
    left behind are registered as failed (interrupted)."""
    registry = ModelRegistry(config.registry_dir)
    problems = registry.check()
    for problem in problems:
        logger.warning("registry: %s", problem)
    if problems:
        for line in registry.repair(by=_by()):
            logger.warning("registry repaired: %s", line)
    for entry in retraining.register_interrupted(registry, config.runs_dir, config.base_model,
                                                 config.build.output.out_dir, config.train_hash(), _by()):
        logger.warning("registered %s as failed (interrupted): %s", entry.id, entry.reason)
    return registry


def _train_judge_decide(config: RetrainConfig, registry: ModelRegistry, entry_id: str, run_dir: Path,
                        start: retraining.StartingPoint, version, logger) -> dict[str, Any]:
    logger.info("candidate %s: %d steps from %s on dataset version %d", entry_id, config.steps, start.model,
                version.version)
    try:
        shards = version.shard_paths(config.build.output.out_dir)
        trained = train_tokencompose(config=config.train_config(start.model, shards, run_dir / "train"))
    except Exception as error:  # the failure is recorded, the promoted model stays; the run still fails
        registry.register(_entry(config, entry_id, start, version, "failed",
                                 f"training failed: {_why(error)}"), by=_by())
        if type(error).__name__ == "TrainingDiverged":
            logger.warning("candidate %s diverged; not evaluated: %s", entry_id, error)
            return {"status": "failed", "entry": entry_id, "reason": str(error)}
        raise
    candidate = Path(trained["pipeline_dir"])
    evaluation = config.evaluate_config([str(start.model), str(candidate)], [start.label, "candidate"],
                                        run_dir / "multigen")
    try:
        summary = evaluate_multigen(config=evaluation)
        decision = retraining.judge(config.gate, retraining.read_evidence(evaluation), start.label, "candidate",
                                    evaluation.detection.threshold, config.fid_set(), config.clip_set(),
                                    start.parent or str(start.model))
    except Exception as error:  # recorded without its dataset version: the next run trains and judges again
        registry.register(_entry(config, entry_id, start, version, "failed",
                                 f"evaluation failed: {_why(error)}", trained["steps"],
                                 uses_version=False), by=_by())
        raise
    status: Status = "promoted" if decision.promote else "rejected"
    registry.register(_entry(config, entry_id, start, version, status, decision.reason, trained["steps"],
                             candidate, decision), by=_by())
    markdown = retraining.comparison_markdown(
        entry_id, start, decision, f"Trained {trained['steps']} steps on dataset version {version.version}.",
        summary["models"][start.label])
    create_markdown_artifact(markdown=markdown, key="retrain-tokencompose-decision",
                             description=f"candidate {entry_id} vs {start.label}")
    logger.info("%s %s: %s", entry_id, status, decision.reason)
    return {"status": status, "entry": entry_id, "reason": decision.reason, "dataset_version": version.version}
