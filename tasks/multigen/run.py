"""One MultiGen run, without Prefect: preflight, generation, detection, report.

    from tokencompose.schemas.evaluation import EvaluateConfig
    from tokencompose.tasks.multigen.run import evaluate_models
    report = evaluate_models(EvaluateConfig(pipelines=[sd14, candidate], out_dir=out,
                                            benchmark={"limit": 50}, generation={"images_per_prompt": 2}))
    report.models[1].mg["MG3"]["mean"], report.comparisons[0].mg["MG3"]

Output folder: ``evaluate_config.json``, ``report.md``, ``report.json``; per model (its label)
``run.json`` (what decides its images), ``images/prompts-AAAAAA-BBBBBB.tar`` (WebDataset: ``png`` +
``json`` per image), ``detections-<detector fingerprint>/prompts-*.jsonl``, ``grid.png`` and
``attention/prompt-NNNNNN/``. Everything is resumable: a finished shard (or detections file) is
never redone, and a run whose settings differ from the folder's is refused before any work.

Under ``accelerate launch``/``torchrun`` (one process per GPU) every rank generates and detects its
own shards (every world-th) and rank 0 writes the report after the others finish.
"""
from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tokencompose.schemas.evaluation import EVALUATE_CONFIG_FILE, EvaluateConfig
from tokencompose.tasks.multigen import detection as det
from tokencompose.tasks.multigen import generation as gen
from tokencompose.tasks.multigen.prompts import Prompt, PromptFileError, all_prompts_for, prompts_fingerprint
from tokencompose.tasks.models.weights import (describe_missing, find_weights, hf_cache_dir, models_dir, owlv2_spec,
                                        stable_diffusion_spec)

log = logging.getLogger("tokencompose.multigen")
RUN_FILE = "run.json"
Progress = Callable[[str], None]


class EvaluationError(RuntimeError):
    """The run cannot start; the message lists every problem found before any work."""


def _locate(spec, config) -> tuple[Path | None, str | None]:
    """An existing folder given as a path is returned as is (its own check then says what is wrong
    with it); a name is looked up in the models folder and hub cache."""
    if spec.explicit is not None and spec.explicit.is_dir():
        return spec.explicit, None
    searched: list[str] = []
    root = models_dir(config)
    found = find_weights(spec, root, hf_cache_dir(config), searched)
    if found is None:
        return None, describe_missing(spec, searched, root)
    return found, None


def resolve_pipeline(name: str, config) -> Path:
    """A Stable Diffusion folder: a path, or a name under the models folder / hub cache."""
    found, problem = _locate(stable_diffusion_spec(name), config)
    if found is None:
        raise EvaluationError(problem)
    problems = gen.check_pipeline_folder(found)
    if problems:
        raise EvaluationError("; ".join(problems))
    return found


@dataclass
class ModelRun:
    label: str
    path: Path
    model_id: str
    folder: Path

    @property
    def images_dir(self) -> Path:
        return self.folder / gen.IMAGES_DIR

    def detections_dir(self, config: EvaluateConfig) -> Path:
        return self.folder / f"detections-{config.detection_fingerprint()}"

    def info(self) -> dict:
        return {"label": self.label, "path": str(self.path), "id": self.model_id}


@dataclass
class Plan:
    config: EvaluateConfig
    prompts: list[Prompt]
    all_prompts_fingerprint: str
    runs: list[ModelRun]
    detector: Path
    shards: list[gen.ShardPlan]


def preflight(config: EvaluateConfig) -> Plan:
    """Check everything before work: prompts, model folders, detector, an existing output folder.
    Raises :class:`EvaluationError` listing all problems."""
    problems: list[str] = []
    prompts: list[Prompt] = []
    fingerprint = ""
    try:
        every = all_prompts_for(config.benchmark)
        fingerprint = prompts_fingerprint(every)
        prompts = every[:config.benchmark.limit] if config.benchmark.limit else every
    except (PromptFileError, ValueError, OSError) as error:
        problems.append(f"prompts: {error}")
    runs: list[ModelRun] = []
    for name, label in zip(config.pipelines, config.model_labels()):
        found, problem = _locate(stable_diffusion_spec(name), config)
        if found is None:
            problems.append(f"model {label}: {problem}")
            continue
        folder_problems = gen.check_pipeline_folder(found)
        if folder_problems:
            problems += [f"model {label}: {p}" for p in folder_problems]
            continue
        runs.append(ModelRun(label, found, gen.model_id(found), Path(config.out_dir) / label))
    detector, problem = _locate(owlv2_spec(config.detection.detector), config)
    if detector is None:
        problems.append(f"detector: {problem}")
    else:
        problems += [f"detector: {p}" for p in det.check_owlv2_folder(detector)]
    if not problems:
        for run in runs:
            problems += _existing_run_problems(config, run, fingerprint)
    if problems:
        raise EvaluationError("cannot start the MultiGen evaluation:\n" + "\n".join(f"  - {p}" for p in problems))
    shards = gen.plan_shards(prompts, config.generation.prompts_per_shard)
    return Plan(config, prompts, fingerprint, runs, detector, shards)


def _run_record(config: EvaluateConfig, run: ModelRun, fingerprint: str) -> dict:
    return {"model": run.info(), "prompts": fingerprint, "generation": config.generation_fingerprint()}


def _existing_run_problems(config: EvaluateConfig, run: ModelRun, fingerprint: str) -> list[str]:
    path = run.folder / RUN_FILE
    if not path.exists():
        return []
    before = json.loads(path.read_text())
    now = _run_record(config, run, fingerprint)
    changed = [key for key in ("prompts", "generation") if before.get(key) != now[key]]
    if before.get("model", {}).get("id") != run.model_id:
        changed.append("model weights")
    if not changed:
        return []
    return [f"{run.folder} holds images made with other {', '.join(changed)}; use another out_dir, or delete the "
            f"folder to start this model again"]


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
        (run.folder / RUN_FILE).write_text(json.dumps(_run_record(config, run, plan.all_prompts_fingerprint),
                                                      indent=1, sort_keys=True))
    mine = gen.for_rank(plan.shards, rank, world)
    missing = [s for s in mine if not (run.images_dir / f"{s.name}.tar").exists()]
    todo_attention = attention and rank == 0 and _attention_missing(plan, run)
    totals = {"shards_done": 0, "shards_skipped": len(mine) - len(missing), "images": 0, "nan": 0}
    if not missing and not todo_attention:
        return totals
    pipe = gen.load_pipeline(run.path, device, gen.resolve_dtype(g.precision, device), g.scheduler, g.compile)

    def report(name: str, counts: dict) -> None:
        if progress:
            progress(f"{run.label}: {name} generated ({counts['images']} images, {counts['nan']} with NaN)")

    totals = gen.run_generation(pipe, missing, run.images_dir, images_per_prompt=g.images_per_prompt, seed=g.seed,
                                steps=g.steps, guidance_scale=g.guidance_scale, resolution=g.resolution,
                                batch_size=g.batch_size, model=run.info(), progress=report)
    totals["shards_skipped"] += len(mine) - len(missing)
    if todo_attention:
        attention_for_model(plan, run, pipe)
    del pipe
    _free(device)
    return totals


def attention_dir(run: ModelRun, prompt: Prompt) -> Path:
    return run.folder / "attention" / f"prompt-{prompt.id:06d}"


def _attention_missing(plan: Plan, run: ModelRun) -> bool:
    from tokencompose.tasks.multigen.attention_maps import GRID_FILE

    chosen = plan.prompts[:plan.config.report.attention_prompts]
    return any(not (attention_dir(run, p) / GRID_FILE).exists() for p in chosen)


def attention_for_model(plan: Plan, run: ModelRun, pipe) -> list[Path]:
    """Cross-attention grids of the first prompts (their categories are the nouns), from the noise of
    each prompt's first image."""
    from tokencompose.tasks.multigen.attention_maps import GRID_FILE, capture_maps, save_grid

    g = plan.config.generation
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = (pipe.unet.config.in_channels, g.resolution // factor, g.resolution // factor)
    paths = []
    for prompt in plan.prompts[:plan.config.report.attention_prompts]:
        out = attention_dir(run, prompt)
        if (out / GRID_FILE).exists():
            paths.append(out / GRID_FILE)
            continue
        spans = list(zip(prompt.categories, prompt.spans()))
        result = capture_maps(pipe, prompt.text, spans, gen.initial_latents(g.seed, prompt.id, 0, shape)[None],
                              steps=g.steps, guidance_scale=g.guidance_scale, resolution=g.resolution)
        paths.append(save_grid(result, out, prompt.text))
    return paths


def detect_model(plan: Plan, run: ModelRun, device: str, rank: int = 0, world: int = 1,
                 progress: Progress | None = None, detector: det.Detector | None = None) -> dict:
    """Detect this rank's shards of one model that have no detections yet."""
    config = plan.config
    shards = [run.images_dir / f"{s.name}.tar" for s in gen.for_rank(plan.shards, rank, world)]
    absent = [s for s in shards if not s.exists()]
    if absent:
        raise EvaluationError(f"{run.label}: shards not generated yet: {', '.join(s.name for s in absent)}")
    out_dir = run.detections_dir(config)
    todo = [s for s in shards if not (out_dir / det.detections_name(s.name)).exists()]
    if not todo:
        return {"shards_done": 0, "shards_skipped": len(shards), "images": 0}
    if detector is None:
        detector = det.Detector(plan.detector, device, config.detection.precision, config.detection.query_template)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "detector.json").write_text(json.dumps(
            {"detector": str(plan.detector), "query_template": config.detection.query_template,
             "precision": config.detection.precision, "threshold": config.detection.threshold}, indent=1))

    def report(name: str, counts: dict) -> None:
        if progress:
            progress(f"{run.label}: {name} detected ({counts['images']} images)")

    totals = det.run_detection(detector, todo, out_dir, config.detection.batch_size, progress=report,
                               threshold=config.detection.threshold)
    totals["shards_skipped"] += len(shards) - len(todo)
    return totals


def model_rows(plan: Plan, run: ModelRun) -> list[dict]:
    rows: list[dict] = []
    out_dir = run.detections_dir(plan.config)
    for shard in plan.shards:
        path = out_dir / det.detections_name(f"{shard.name}.tar")
        if not path.exists():
            raise EvaluationError(f"{run.label}: no detections for {shard.name}")
        rows += det.read_detections(path)
    return rows


def evaluate_models(config: EvaluateConfig, progress: Progress | None = None, *, rank: int | None = None,
                    world: int | None = None, device: str | None = None):
    """The whole MultiGen run; returns the :class:`~tokencompose.tasks.multigen.report.MultiGenReport` (on
    rank 0; None on the other ranks). ``rank``/``world`` default to the launcher's (one process: 0/1)."""
    from tokencompose.tasks.models.devices import resolve_device
    from tokencompose.tasks.multigen.report import build_report

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
        if detector is None and any(not (run.detections_dir(config) / det.detections_name(f"{s.name}.tar")).exists()
                                    for s in gen.for_rank(plan.shards, rank, world)):
            detector = det.Detector(plan.detector, device, config.detection.precision, config.detection.query_template)
        counts = detect_model(plan, run, device, rank, world, say, detector)
        say(f"{run.label}: detection {counts}")
    del detector
    _free(device)
    _barrier(world)
    if rank != 0:
        return None
    report = build_report(plan)
    say(f"report: {report.markdown_path}")
    return report


def evaluate_cli_summary(report) -> dict:
    return {"report": str(report.markdown_path), "json": str(report.json_path),
            "models": {m.label: {k: round(v["mean"], 2) for k, v in m.mg.items()} for m in report.models},
            "nan_images": {m.label: m.nan for m in report.models}}


def rows_by_model(plan: Plan) -> dict[str, list[dict]]:
    return {run.label: model_rows(plan, run) for run in plan.runs}


__all__: Sequence[str] = ("EvaluationError", "Plan", "ModelRun", "preflight", "generate_model", "detect_model",
                          "evaluate_models", "resolve_pipeline", "attention_for_model", "model_rows")
