"""The retrain-tokencompose flow: grow the dataset, train a candidate from the promoted model, judge
it against the promoted model with MultiGen's quick mode on the same seeds, promote or reject.

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
from tokencompose.schemas.registry import RegistryEntry
from tokencompose.schemas.retrain import RetrainConfig
from tokencompose.tasks.registry import promotion as retraining
from tokencompose.tasks.registry.store import ModelRegistry, utc_now

FLOW_NAME = "retrain-tokencompose"


def _by() -> str:
    run_id = flow_run.get_id()
    return f"{FLOW_NAME}/{flow_run.get_name() or run_id}" if run_id else FLOW_NAME


def _entry(config: RetrainConfig, entry_id: str, start: retraining.StartingPoint, version, status: str,
           reason: str, steps: int = 0, pipeline: Path | None = None, result=None) -> RegistryEntry:
    return RegistryEntry(id=entry_id, status=status, created=utc_now(), pipeline_dir=pipeline,
                         base_model=start.model, parent=start.parent, dataset_dir=config.build.output.out_dir,
                         dataset_version=version.version, dataset_shards=version.shards,
                         train_config_hash=config.train_hash(), steps=steps, multigen=result, reason=reason)


@flow(name=FLOW_NAME, log_prints=False)
def retrain_tokencompose(config: RetrainConfig) -> dict[str, Any]:
    """Incremental build -> train from the promoted model -> MultiGen quick mode on both -> promote or reject."""
    logger = get_run_logger()
    registry = ModelRegistry(config.registry_dir)
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
    logger.info("candidate %s: %d steps from %s on dataset version %d", entry_id, config.steps, start.model,
                version.version)
    try:
        trained = train_tokencompose(config=config.train_config(start.model, version.shards, run_dir / "train"))
    except Exception as error:  # the failure is recorded, the promoted model stays; the run still fails
        registry.register(_entry(config, entry_id, start, version, "failed",
                                 f"training failed: {type(error).__name__}: {error}"), by=_by())
        if type(error).__name__ == "TrainingDiverged":
            logger.warning("candidate %s diverged; not evaluated: %s", entry_id, error)
            return {"status": "failed", "entry": entry_id, "reason": str(error)}
        raise
    candidate = Path(trained["pipeline_dir"])
    evaluation = config.evaluate_config([str(start.model), str(candidate)], [start.label, "candidate"],
                                        run_dir / "multigen")
    summary = evaluate_multigen(config=evaluation)
    models = {label: {k: {"mean": v} for k, v in mg.items()} for label, mg in summary["models"].items()}
    decision = retraining.decide(models["candidate"], models[start.label], config.metric, config.margin,
                                 start.parent or str(start.model), summary.get("report"))
    status = "promoted" if decision.promote else "rejected"
    registry.register(_entry(config, entry_id, start, version, status, decision.reason, trained["steps"],
                             candidate, decision.result), by=_by())
    markdown = retraining.comparison_markdown(
        entry_id, start, decision, f"Trained {trained['steps']} steps on dataset version {version.version}.",
        {k: v["mean"] for k, v in models[start.label].items()})
    create_markdown_artifact(markdown=markdown, key="retrain-tokencompose-decision",
                             description=f"candidate {entry_id} vs {start.label}")
    logger.info("%s %s: %s", entry_id, status, decision.reason)
    return {"status": status, "entry": entry_id, "reason": decision.reason, "dataset_version": version.version}
