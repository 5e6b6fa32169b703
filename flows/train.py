"""The train-tokencompose flow.

The flow only orchestrates: it validates the configuration, runs :mod:`tokencompose.tasks.training`
(one process; for several GPUs run ``accelerate launch -m tokencompose train --no-prefect ...``
instead, every rank then runs the trainer directly), mirrors progress into a Prefect progress
artifact and log lines, and leaves a markdown summary artifact.
"""
from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from tokencompose.schemas.training import TrainConfig

FLOW_NAME = "train-tokencompose"


def run_summary(result) -> dict[str, Any]:
    return {"output_dir": str(result.output_dir), "steps": result.steps,
            "pipeline_dir": str(result.pipeline_dir) if result.pipeline_dir else None,
            "loss_curve": str(result.loss_curve) if result.loss_curve else None,
            "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
            "stats": result.stats, "last_metrics": result.last_metrics, "data_quality": result.data_quality}


def _quality_rows(quality: dict[str, Any]) -> list[tuple[str, Any]]:
    """Unusable samples by reason with the first few (shard:key), and unreadable shards."""
    rows: list[tuple[str, Any]] = [("unusable samples", f"{quality.get('unusable', 0)} of {quality.get('samples', 0)}")]
    first = quality.get("first", {})
    rows += [(f"unusable: {reason}", f"{n} (first: {', '.join(first.get(reason, []))})")
             for reason, n in quality.get("by_reason", {}).items()]
    rows += [(f"unreadable shard: {name}", detail) for name, detail in quality.get("unreadable_shards", {}).items()]
    if first.get("nouns_bad_mask"):
        rows.append(("nouns with a bad mask in", ", ".join(first["nouns_bad_mask"])))
    return rows


def validation_markdown(validation, prompts: list[str]) -> str:
    """The latest validation images (and the first prompt's attention maps) as a markdown table of paths."""
    rows = [(prompt, f"`{path}`") for prompt, path in zip(prompts, validation.images)]
    if validation.attention is not None:
        rows.append((f"attention maps of {prompts[0]!r}", f"`{validation.attention}`"))
    table = "| prompt | image |\n|---|---|\n" + "\n".join(f"| {p} | {i} |" for p, i in rows)
    return f"**validation at step {validation.step}** ({validation.folder})\n\n{table}"


def _markdown(summary: dict[str, Any]) -> str:
    rows = [("steps", summary["steps"]), ("pipeline", summary["pipeline_dir"]), ("loss curve", summary["loss_curve"])]
    rows += [(f"count: {k}", v) for k, v in summary["stats"].items()]
    rows += [(k, f"{v:.5g}" if isinstance(v, float) else v) for k, v in summary["last_metrics"].items()
             if not k.startswith(("count/", "bad/"))]
    rows += _quality_rows(summary.get("data_quality", {}))
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


@flow(name=FLOW_NAME, log_prints=False)
def train_tokencompose(config: TrainConfig) -> dict[str, Any]:
    """Fine-tune a Stable Diffusion UNet with TokenCompose's grounding losses on build-grounded-coco shards."""
    from tokencompose.tasks.training.samples import DataError
    from tokencompose.tasks.training.trainer import Trainer, format_record

    logger = get_run_logger()
    artifact = create_progress_artifact(progress=0.0, key="train-tokencompose-progress",
                                        description=f"training {config.output_dir}")
    assert isinstance(artifact, UUID)  # a synchronous flow gets the id itself, not a coroutine

    def progress(step: int, total: int, record: dict) -> None:
        update_progress_artifact(artifact_id=artifact, progress=100.0 * step / total)
        logger.info(format_record(record))

    def validated(validation) -> None:
        create_markdown_artifact(markdown=validation_markdown(validation, config.validation_prompts),
                                 key="train-tokencompose-validation",
                                 description=f"validation images at step {validation.step}")

    try:
        trainer = Trainer(config, progress, validated=validated)
        if trainer.state.step:
            logger.info("resuming at step %d of %d", trainer.state.step, config.max_steps)
        result = trainer.train()
    except DataError as error:  # too much bad data: the summary says why before the run fails
        create_markdown_artifact(markdown=f"**training stopped**: {error}", key="train-tokencompose-summary",
                                 description="why the training run stopped")
        raise
    update_progress_artifact(artifact_id=artifact, progress=100.0)
    summary = run_summary(result)
    create_markdown_artifact(markdown=_markdown(summary), key="train-tokencompose-summary",
                             description="final metrics of the training run")
    for reason, found in summary["data_quality"].get("by_reason", {}).items():
        logger.warning("skipped %d unusable sample(s): %s (first: %s)", found, reason,
                       ", ".join(summary["data_quality"]["first"].get(reason, [])))
    logger.info("done: %d steps, pipeline at %s", result.steps, summary["pipeline_dir"])
    return summary
