"""The edit-images flow (one image, Blended Latent Diffusion) and the score-pie-bench flow: thin wrappers
over :mod:`tokencompose.tasks.editing.run`, their one task tagged ``gpu`` like evaluation's."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tokencompose.schemas.editing import EditConfig, PieBenchConfig
from tokencompose.schemas.runner import GPU_TAG

FLOW_NAME = "edit-images"
BENCH_FLOW_NAME = "score-pie-bench"


@task(name="edit", tags={GPU_TAG}, cache_policy=NO_CACHE)
def edit_task(config: EditConfig) -> str:
    from tokencompose.tasks.editing.run import edit_image

    return str(edit_image(config))


@task(name="edit-and-score", tags={GPU_TAG}, cache_policy=NO_CACHE)
def pie_bench_task(config: PieBenchConfig) -> str:
    from tokencompose.tasks.editing.run import run_pie_bench

    return str(run_pie_bench(config))


@flow(name=FLOW_NAME, log_prints=False)
def edit_images(config: EditConfig) -> str:
    """Edit the masked region of one image to show the prompt; returns the output folder."""
    return edit_task(config)


@flow(name=BENCH_FLOW_NAME, log_prints=False)
def score_pie_bench(config: PieBenchConfig) -> str:
    """Edit and score a PIE-Bench folder with each model; returns the report's path."""
    return pie_bench_task(config)
