"""The evaluate-multigen flow: MultiGen on local Stable Diffusion folders.

The flow orchestrates :mod:`tokencompose.tasks.multigen.run`: the preflight runs first (a missing or
wrong folder, a bad prompt file stops the run before any work), then one task per model generates
its shards (its attention maps, and the images, latency and grounding of the metrics beside MultiGen),
one task per model detects, one per model scores those metrics (VISOR, OptiGen, FID, CLIP score:
:mod:`tokencompose.tasks.evaluation.suite`) and a last task scores MultiGen and writes the report; a table artifact and the markdown report are left in Prefect. Shards already on disk
are skipped, so a flow run started again resumes. For several GPUs run
``accelerate launch -m tokencompose evaluate --no-prefect ...`` instead (every rank then runs
:func:`~tokencompose.tasks.multigen.run.evaluate_models`).
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from tokencompose.runners import make_task_runner
from tokencompose.schemas.evaluation import EVALUATE_CONFIG_FILE, EvaluateConfig
from tokencompose.schemas.multigen import MultiGenReport
from tokencompose.schemas.runner import GPU_TAG

FLOW_NAME = "evaluate-multigen"


@task(name="generate", task_run_name="generate-{label}", tags={GPU_TAG}, cache_policy=NO_CACHE)
def generate_task(plan, label: str, device: str) -> dict:
    """One model's images; ``device`` is resolved where the task runs (a Dask or Ray worker's GPU)."""
    from tokencompose.tasks.models.devices import resolve_device
    from tokencompose.tasks.multigen.run import generate_model

    logger = get_run_logger()
    run = next(r for r in plan.runs if r.label == label)
    return generate_model(plan, run, resolve_device(device), progress=logger.info)


@task(name="detect", task_run_name="detect-{label}", tags={GPU_TAG}, cache_policy=NO_CACHE)
def detect_task(plan, label: str, device: str) -> dict:
    from tokencompose.tasks.models.devices import resolve_device
    from tokencompose.tasks.multigen.run import detect_model

    logger = get_run_logger()
    run = next(r for r in plan.runs if r.label == label)
    return detect_model(plan, run, resolve_device(device), progress=logger.info)


@task(name="score-metrics", task_run_name="score-metrics-{label}", tags={GPU_TAG}, cache_policy=NO_CACHE)
def score_metrics_task(plan, label: str, device: str) -> dict:
    """VISOR, OptiGen, FID and CLIP score of one model's images (its metrics.json)."""
    from tokencompose.tasks.models.devices import resolve_device
    from tokencompose.tasks.multigen.run import score_metrics

    logger = get_run_logger()
    run = next(r for r in plan.runs if r.label == label)
    return score_metrics(plan, run, resolve_device(device), progress=logger.info)


def run_stage(stage, plan, config: EvaluateConfig) -> dict[str, dict]:
    """Each model's generation (or detection). On the local runner one after the other (models
    sharing one GPU would not fit together); on Dask or Ray all submitted at once, so each model
    takes its own GPU worker."""
    device = config.models.device
    if not config.runner.distributed:
        return {run.label: stage(quote(plan), run.label, device) for run in plan.runs}
    futures = {run.label: stage.submit(quote(plan), run.label, device) for run in plan.runs}
    return {label: future.result() for label, future in futures.items()}


@task(name="report", cache_policy=NO_CACHE)
def report_task(plan) -> MultiGenReport:  # plan: tasks.multigen.plan.Plan, passed quoted
    from tokencompose.tasks.multigen.report import build_report

    return build_report(plan)


@flow(name=FLOW_NAME, log_prints=False)
def evaluate_multigen(config: EvaluateConfig) -> dict[str, Any]:
    """Generate MultiGen images with each model, detect the prompts' categories with OWLv2, score MG1-MG5
    (and the configured metrics beside it) and compare the models on the same prompts and seeds."""
    from pathlib import Path

    from tokencompose.tasks.models.devices import resolve_device
    from tokencompose.tasks.multigen.run import evaluate_cli_summary, preflight

    logger = get_run_logger()
    plan = preflight(config)
    device = resolve_device(config.models.device)
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(config.out_dir) / EVALUATE_CONFIG_FILE).write_text(config.to_json())
    logger.info("MultiGen: %d prompts x %d images, %d model(s), %d shards on %s", len(plan.prompts),
                config.generation.images_per_prompt, len(plan.runs), len(plan.shards), device)
    stages = [(generate_task, "generation"), (detect_task, "detection")]
    if config.metrics.enabled():
        stages.append((score_metrics_task, "metrics"))
    for stage, what in stages:
        for label, counts in run_stage(stage, plan, config).items():
            logger.info("%s: %s %s", label, what, counts)
    report = report_task(quote(plan))
    create_table_artifact(table=report.table_rows(), key="multigen-scores",
                          description=f"MultiGen MG1-MG5 (mean ± std over image rounds), {len(plan.prompts)} prompts")
    create_markdown_artifact(markdown=report.markdown, key="multigen-report", description=str(report.markdown_path))
    logger.info("report written to %s", report.markdown_path)
    return evaluate_cli_summary(report)


def evaluate_on_runner(config: EvaluateConfig) -> dict[str, Any]:
    """evaluate-multigen on the configuration's runner (what `tokencompose evaluate` runs)."""
    from pathlib import Path

    if config.runner.distributed:
        config = config.model_copy(update={"out_dir": Path(config.out_dir).expanduser().resolve()})
    task_runner = make_task_runner(config.runner, Path(config.out_dir), gpu_tasks=True)
    flow_on_runner = evaluate_multigen if task_runner is None else evaluate_multigen.with_options(
        task_runner=task_runner)
    return flow_on_runner(config=config)


@flow(name="evaluate-multigen-on-runner", log_prints=False)
def evaluate_multigen_on_runner(config: EvaluateConfig) -> dict[str, Any]:
    """For deployments: evaluate-multigen as a subflow on ``config.runner``."""
    return evaluate_on_runner(config)
