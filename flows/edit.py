"""The edit-images flow (one image, Blended Latent Diffusion) and the score-pie-bench flow, over
:mod:`tokencompose.tasks.editing.run`, on the configuration's runner like evaluation.

Each flow checks what it can in its own process first (the model folder, the images and masks, the
scorers' local files), so a run that cannot start stops before any task. The tasks that load a model
are tagged ``gpu``: on Dask or Ray each asks for ``runner.gpus_per_task`` GPUs. score-pie-bench edits
in one task per model and range of whole sampler batches (on Dask or Ray ``batches_per_task`` batches
each, so a cluster spreads one model's items over its GPUs; each item keeps its own seed and batch, so
the edited images are the same bytes on every runner), then scores each model in one task.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from tokencompose.runners import make_task_runner
from tokencompose.schemas.editing import EditConfig, PieBenchConfig
from tokencompose.schemas.runner import GPU_TAG, RunnerConfig

FLOW_NAME = "edit-images"
BENCH_FLOW_NAME = "score-pie-bench"


@task(name="edit", tags={GPU_TAG}, cache_policy=NO_CACHE)
def edit_task(config: EditConfig, model_path: Path) -> str:
    from tokencompose.tasks.editing.run import edit_image

    return str(edit_image(config, model_path))


@task(name="edit-pie-bench", task_run_name="edit-{label}-{start}-{stop}", tags={GPU_TAG}, cache_policy=NO_CACHE)
def pie_edit_task(plan, label: str, start: int, stop: int) -> list[str]:  # plan: run.PieBenchPlan, passed quoted
    from tokencompose.tasks.editing.run import edit_pie_items

    return edit_pie_items(plan, label, start, stop)


@task(name="score-pie-bench", task_run_name="score-{label}", tags={GPU_TAG}, cache_policy=NO_CACHE)
def pie_score_task(plan, label: str) -> list[dict]:
    from tokencompose.tasks.editing.run import score_pie_model

    return score_pie_model(plan, label)


def run_tasks(stage, calls: list[dict[str, Any]], runner: RunnerConfig) -> list:
    """``stage`` once per keyword set: one after the other on the threads runner (one GPU would not hold
    several models), all submitted at once on Dask or Ray so each takes its own GPU worker."""
    if not runner.distributed:
        return [stage(**call) for call in calls]
    futures = [stage.submit(**call) for call in calls]
    return [future.result() for future in futures]


@flow(name=FLOW_NAME, log_prints=False)
def edit_images(config: EditConfig) -> str:
    """Edit the masked region of one image to show the prompt; returns the output folder."""
    from tokencompose.tasks.editing.run import check_edit

    model_path = check_edit(config)
    return run_tasks(edit_task, [{"config": config, "model_path": model_path}], config.runner)[0]


@flow(name=BENCH_FLOW_NAME, log_prints=False)
def score_pie_bench(config: PieBenchConfig) -> str:
    """Edit and score a PIE-Bench folder with each model; returns the report's path."""
    from tokencompose.tasks.editing.run import pie_bench_chunks, plan_pie_bench, write_pie_report

    plan = plan_pie_bench(config)
    chunks = pie_bench_chunks(plan, config.runner.distributed)
    run_tasks(pie_edit_task, [{"plan": quote(plan), "label": label, "start": start, "stop": stop}
                              for label in plan.models for start, stop in chunks], config.runner)
    scores = run_tasks(pie_score_task, [{"plan": quote(plan), "label": label} for label in plan.models],
                       config.runner)
    return str(write_pie_report(plan, dict(zip(plan.models, scores))))


def _on_runner(chosen_flow, config) -> Any:
    task_runner = make_task_runner(config.runner, Path(config.out_dir), gpu_tasks=True)
    flow_on_runner = chosen_flow if task_runner is None else chosen_flow.with_options(task_runner=task_runner)
    return flow_on_runner(config=config)


def edit_on_runner(config: EditConfig) -> str:
    """edit-images on the configuration's runner (what `tokencompose edit` runs)."""
    from tokencompose.tasks.editing.run import absolute_paths

    return _on_runner(edit_images, absolute_paths(config) if config.runner.distributed else config)


def pie_bench_on_runner(config: PieBenchConfig) -> str:
    """score-pie-bench on the configuration's runner (what `tokencompose edit-bench` runs)."""
    from tokencompose.tasks.editing.run import pie_bench_absolute

    return _on_runner(score_pie_bench, pie_bench_absolute(config) if config.runner.distributed else config)


@flow(name="edit-images-on-runner", log_prints=False)
def edit_images_on_runner(config: EditConfig) -> str:
    """For deployments: edit-images as a subflow on ``config.runner``."""
    return edit_on_runner(config)


@flow(name="score-pie-bench-on-runner", log_prints=False)
def score_pie_bench_on_runner(config: PieBenchConfig) -> str:
    """For deployments: score-pie-bench as a subflow on ``config.runner``."""
    return pie_bench_on_runner(config)
