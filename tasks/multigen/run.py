"""One MultiGen run, without Prefect: preflight, generation, detection, report.

    from tokencompose.schemas.evaluation import EvaluateConfig
    from tokencompose.tasks.multigen.run import evaluate_models
    report = evaluate_models(EvaluateConfig(pipelines=[sd14, candidate], out_dir=out,
                                            benchmark={"limit": 50}, generation={"images_per_prompt": 2}))
    report.models[1].mg["MG3"]["mean"], report.comparisons[0].mg["MG3"]

Output folder: ``evaluate_config.json``, ``report.md``, ``report.json``; per model (its label)
``run.json`` (what decides its images), ``images/prompts-AAAAAA-BBBBBB.tar`` (WebDataset: ``png`` +
``json`` per image), ``detections-<detector fingerprint>/prompts-*.jsonl``, ``grid.png`` and
``attention/prompt-NNNNNN/``. Everything is resumable: a shard (or detections file) that still
matches the sha256 and size recorded beside it when written is never redone; a broken one is redone
and listed in the report, and a run whose settings differ from the folder's is refused before any work.

Under ``accelerate launch``/``torchrun`` (one process per GPU) every rank generates and detects its
own shards (every world-th) and rank 0 writes the report after the others finish.
"""
from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

from tokencompose.schemas.evaluation import EVALUATE_CONFIG_FILE, EvaluateConfig
from tokencompose.tasks.evaluation import suite
from tokencompose.tasks.multigen import detection as det
from tokencompose.tasks.multigen import generation as gen
from tokencompose.tasks.multigen import integrity
from tokencompose.tasks.multigen.attention_maps import GRID_FILE, capture_maps, save_grid
from tokencompose.tasks.multigen.plan import (RUN_FILE, EvaluationError, ModelRun, Plan, attention_dir, model_rows,
                                              preflight, resolve_pipeline, run_record)
from tokencompose.tasks.multigen.report import build_report

log = logging.getLogger("tokencompose.multigen")
Progress = Callable[[str], None]


def distributed() -> tuple[int, int, str | None]:
    """(rank, world size, device) under accelerate/torchrun; (0, 1, None) in a single process."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    state = _state()
    return state.process_index, state.num_processes, str(state.device)


def _state():
    """accelerate's process state; CPU processes (no GPU, or ACCELERATE_USE_CPU) get a gloo group."""
    import os

    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _barrier(world: int) -> None:
    if world > 1:
        _state().wait_for_everyone()


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def generate_model(plan: Plan, run: ModelRun, device: str, rank: int = 0, world: int = 1,
                   progress: Progress | None = None, attention: bool = True) -> dict:
    """Generate this rank's missing shards of one model (and, on rank 0, its attention maps)."""
    config = plan.config
    g = config.generation
    if rank == 0:
        run.folder.mkdir(parents=True, exist_ok=True)
        (run.folder / RUN_FILE).write_text(json.dumps(run_record(config, run, plan.all_prompts_fingerprint),
                                                      indent=1, sort_keys=True))
    mine = gen.for_rank(plan.shards, rank, world)
    missing = [s for s in mine if not integrity.status(run.images_dir / f"{s.name}.tar")[0]]
    todo_attention = attention and rank == 0 and _attention_missing(plan, run)
    todo_metrics = suite.missing_work(plan, run, device, rank, world)
    totals = {"shards_done": 0, "shards_skipped": len(mine) - len(missing), "images": 0, "nan": 0}
    if not missing and not todo_attention and not todo_metrics:
        return totals
    pipe = gen.load_pipeline(run.path, device, gen.resolve_dtype(g.precision, device), g.scheduler, g.compile)

    def report(name: str, counts: dict) -> None:
        if progress:
            progress(f"{run.label}: {name} generated ({counts['images']} images, {counts['nan']} with NaN)")

    totals = gen.run_generation(pipe, missing, run.images_dir, images_per_prompt=g.images_per_prompt, seed=g.seed,
                                steps=g.steps, guidance_scale=g.guidance_scale, resolution=run.resolution,
                                batch_size=g.batch_size, model=run.info(), progress=report,
                                redone=_noting_redone(run, progress))
    totals["shards_skipped"] += len(mine) - len(missing)
    if todo_attention:
        attention_for_model(plan, run, pipe)
    if todo_metrics:
        counts = suite.generate_sets(plan, run, pipe, rank, world, progress, _noting_redone(run, progress))
        totals["metric_images"] = counts["images"]
    del pipe
    _free(device)
    return totals


def _noting_redone(run: ModelRun, progress: Progress | None) -> Callable[[Path, str], None]:
    """Records a redone file in the model folder's redone.jsonl (the report lists them) and says so."""
    def note(path: Path, reason: str) -> None:
        line = integrity.note_redone(run.folder, path, reason)
        (progress or log.warning)(f"{run.label}: {line}")
    return note


def _attention_missing(plan: Plan, run: ModelRun) -> bool:
    chosen = plan.prompts[:plan.config.report.attention_prompts]
    return any(not (attention_dir(run, p) / GRID_FILE).exists() for p in chosen)


def attention_for_model(plan: Plan, run: ModelRun, pipe) -> list[Path]:
    """Cross-attention grids of the first prompts (their categories are the nouns), from the noise of
    each prompt's first image."""
    g = plan.config.generation
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = (pipe.unet.config.in_channels, run.resolution // factor, run.resolution // factor)
    paths = []
    for prompt in plan.prompts[:plan.config.report.attention_prompts]:
        out = attention_dir(run, prompt)
        if (out / GRID_FILE).exists():
            paths.append(out / GRID_FILE)
            continue
        spans = list(zip(prompt.categories, prompt.spans()))
        result = capture_maps(pipe, prompt.text, spans, gen.initial_latents(g.seed, prompt.id, 0, shape)[None],
                              steps=g.steps, guidance_scale=g.guidance_scale, resolution=run.resolution)
        paths.append(save_grid(result, out, prompt.text))
    return paths


def detect_model(plan: Plan, run: ModelRun, device: str, rank: int = 0, world: int = 1,
                 progress: Progress | None = None, detector: det.AnyDetector | None = None) -> dict:
    """Detect this rank's shards of one model that have no detections yet."""
    config = plan.config
    shards = [run.images_dir / f"{s.name}.tar" for s in gen.for_rank(plan.shards, rank, world)]
    states = {s: integrity.status(s) for s in shards}
    unusable = [f"{s.name} ({reason or 'not generated yet'})" for s, (done, reason) in states.items() if not done]
    if unusable:
        raise EvaluationError(f"{run.label}: image shards not ready for detection: {', '.join(unusable)}; run the "
                              f"evaluation again to generate them")
    out_dir = run.detections_dir(config)
    todo = [s for s in shards if not integrity.status(out_dir / det.detections_name(s.name), det.shard_sha256(s))[0]]
    if not todo:
        return {"shards_done": 0, "shards_skipped": len(shards), "images": 0}
    if detector is None:
        detector = det.open_detector(plan.detector, device, config.detection.precision, config.detection.query_template)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "detector.json").write_text(json.dumps(
            {"detector": str(plan.detector), "query_template": config.detection.query_template,
             "precision": config.detection.precision, "threshold": config.detection.threshold}, indent=1))

    def report(name: str, counts: dict) -> None:
        if progress:
            progress(f"{run.label}: {name} detected ({counts['images']} images)")

    totals = det.run_detection(detector, todo, out_dir, config.detection.batch_size, progress=report,
                               threshold=config.detection.threshold, redone=_noting_redone(run, progress))
    totals["shards_skipped"] += len(shards) - len(todo)
    return totals


def score_metrics(plan: Plan, run: ModelRun, device: str, progress: Progress | None = None) -> dict:
    """The metrics beside MultiGen of one model (VISOR, OptiGen, FID, CLIP score; latency and grounding were
    measured while generating), written to its metrics.json; returns their headline figures."""
    if not plan.config.metrics.enabled():
        return {}
    metrics = suite.score_model(plan, run, device, progress, _noting_redone(run, progress))
    return headline(metrics)


def headline(metrics) -> dict:
    """One figure per metric, for logs and the CLI summary."""
    figures: dict = {}
    if metrics.visor:
        figures["OA"] = round(metrics.visor["OA"], 2)
    if metrics.optigen:
        figures["OptiGen"] = round(metrics.optigen["mean"], 2)
    figures.update({f"FID ({name})": round(value["fid"], 3) for name, value in metrics.fid.items()})
    figures.update({f"CLIP ({name})": round(value["clip_score"], 3) for name, value in metrics.clip_score.items()})
    if metrics.latency:
        figures["latency_s"] = round(metrics.latency["seconds_per_image_mean"], 4)
    if metrics.grounding:
        figures["mIoU"] = round(metrics.grounding["miou"], 4)
    if metrics.grounding_daam:
        figures["mIoU (DAAM)"] = round(metrics.grounding_daam["miou"], 4)
    return figures


def _detections_missing(plan: Plan, run: ModelRun, rank: int, world: int) -> bool:
    for shard in gen.for_rank(plan.shards, rank, world):
        path = run.images_dir / f"{shard.name}.tar"
        made_from = det.shard_sha256(path) if path.exists() else None
        if made_from is None or not integrity.status(run.detections_dir(plan.config) / f"{shard.name}.jsonl",
                                                     made_from)[0]:
            return True
    return False


def evaluate_models(config: EvaluateConfig, progress: Progress | None = None, *, rank: int | None = None,
                    world: int | None = None, device: str | None = None):
    """The whole MultiGen run; returns the :class:`~tokencompose.tasks.multigen.report.MultiGenReport` (on
    rank 0; None on the other ranks). ``rank``/``world`` default to the launcher's (one process: 0/1)."""
    from tokencompose.tasks.models.devices import resolve_device

    say = progress or log.info
    auto_rank, auto_world, auto_device = distributed()
    rank = auto_rank if rank is None else rank
    world = auto_world if world is None else world
    device = device or auto_device or resolve_device(config.models.device)
    plan = preflight(config)
    if rank == 0:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.out_dir) / EVALUATE_CONFIG_FILE).write_text(config.to_json())
    say(f"MultiGen: {len(plan.prompts)} prompts x {config.generation.images_per_prompt} images, "
        f"{len(plan.runs)} model(s), {len(plan.shards)} shards, rank {rank} of {world}, {device}")
    for run in plan.runs:
        counts = generate_model(plan, run, device, rank, world, say)
        say(f"{run.label}: generation {counts}")
    detector = None
    for run in plan.runs:
        if detector is None and _detections_missing(plan, run, rank, world):
            detector = det.open_detector(plan.detector, device, config.detection.precision, config.detection.query_template)
        counts = detect_model(plan, run, device, rank, world, say, detector)
        say(f"{run.label}: detection {counts}")
    del detector
    _free(device)
    _barrier(world)
    if rank != 0:
        return None
    for run in plan.runs:
        figures = score_metrics(plan, run, device, say)
        if figures:
            say(f"{run.label}: metrics {figures}")
    _free(device)
    report = build_report(plan)
    say(f"report: {report.markdown_path}")
    return report


def evaluate_cli_summary(report) -> dict:
    return {"report": str(report.markdown_path), "json": str(report.json_path),
            "models": {m.label: {**{k: round(v["mean"], 2) for k, v in m.mg.items()}, **headline(m.metrics)}
                       for m in report.models},
            "nan_images": {m.label: m.nan for m in report.models}}


def rows_by_model(plan: Plan) -> dict[str, list[dict]]:
    return {run.label: model_rows(plan, run) for run in plan.runs}


__all__: Sequence[str] = ("EvaluationError", "Plan", "ModelRun", "preflight", "generate_model", "detect_model",
                          "evaluate_models", "resolve_pipeline", "attention_for_model", "model_rows", "score_metrics")
