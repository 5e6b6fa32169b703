"""What a MultiGen run is made of, decided before any work: the prompts, each model's folder and output
folder, the detector and the shards (:func:`preflight`), and where each output of a model lives.

The other MultiGen modules depend on this one, never the reverse: ``run`` (the sequence),
``report`` and ``attention_maps`` import it; it imports only prompts, generation, detection and
the weights look-up (and the training layout's reader of a model's own resolution).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokencompose.schemas.evaluation import EvaluateConfig
from tokencompose.tasks.evaluation.sets import MetricsPlan, metrics_preflight
from tokencompose.tasks.models.preflight import evaluate_problems
from tokencompose.tasks.models.weights import locate_weights, owlv2_spec, stable_diffusion_spec
from tokencompose.tasks.multigen import detection as det
from tokencompose.tasks.multigen import generation as gen
from tokencompose.tasks.multigen import integrity
from tokencompose.tasks.multigen.prompts import (Prompt, PromptFileError, all_prompts_for, prompts_fingerprint,
                                                 window_problems)
from tokencompose.tasks.training.layout import native_resolution

RUN_FILE = "run.json"


class EvaluationError(RuntimeError):
    """The run cannot start; the message lists every problem found before any work."""


def resolve_pipeline(name: str, config) -> Path:
    """A Stable Diffusion folder: a path, or a name under the models folder / hub cache."""
    found, problem = locate_weights(stable_diffusion_spec(name), config)
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
    resolution: int              # the side it generates at: generation.resolution, else the model's own

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
    metrics: MetricsPlan = field(default_factory=MetricsPlan)    # what the metrics beside MultiGen need


def preflight(config: EvaluateConfig) -> Plan:
    """Check everything before work: prompts (rows, and lengths in each model's and the detector's token
    windows), model folders, detector, the output folder (writable, and not made with other settings).
    Raises :class:`EvaluationError` listing all problems."""
    problems: list[str] = evaluate_problems(config)
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
        found, problem = locate_weights(stable_diffusion_spec(name), config)
        if found is None:
            problems.append(f"model {label}: {problem}")
            continue
        folder_problems = gen.check_pipeline_folder(found)
        if folder_problems:
            problems += [f"model {label}: {p}" for p in folder_problems]
            continue
        try:
            resolution = generation_resolution(config, found)
        except EvaluationError as error:
            problems.append(f"model {label}: {error}")
            continue
        runs.append(ModelRun(label, found, gen.model_id(found), Path(config.out_dir) / label, resolution))
    detector, problem = (Path(det.WORLD_DETECTOR), None) if config.detection.detector == det.WORLD_DETECTOR else \
        locate_weights(owlv2_spec(config.detection.detector), config)
    if detector is None:
        problems.append(f"detector: {problem}")
    elif str(detector) != det.WORLD_DETECTOR:
        problems += [f"detector: {p}" for p in det.check_owlv2_folder(detector)]
    metrics, metric_problems = metrics_preflight(config)
    problems += metric_problems
    if not problems and detector is not None:
        problems += _prompt_window_problems(config, prompts, runs, detector)
    if not problems:
        for run in runs:
            problems += _existing_run_problems(config, run, fingerprint)
    if problems or detector is None:
        raise EvaluationError("cannot start the MultiGen evaluation:\n" + "\n".join(f"  - {p}" for p in problems))
    shards = gen.plan_shards(prompts, config.generation.prompts_per_shard)
    return Plan(config, prompts, fingerprint, runs, detector, shards, metrics)


# where native_resolution reads each key it needs: named in the message when one is missing
_RESOLUTION_KEYS = {"sample_size": "unet/config.json", "block_out_channels": "vae/config.json"}


def generation_resolution(config: EvaluateConfig, model: Path) -> int:
    """The side ``model`` generates at: ``generation.resolution`` when given, else the model's own (UNet
    ``sample_size`` x VAE factor, read from its configs without weights)."""
    if config.generation.resolution is not None:
        return config.generation.resolution
    try:
        return native_resolution(model)
    except KeyError as error:
        key = str(error.args[0])
        raise EvaluationError(f"{model / _RESOLUTION_KEYS.get(key, 'unet/config.json')} has no {key!r}, so the "
                              "model's own resolution is unknown; set generation.resolution") from None
    except (ValueError, TypeError) as error:
        raise EvaluationError(f"{model}: the model's own resolution cannot be read ({error}); set "
                              "generation.resolution") from None


def _prompt_window_problems(config: EvaluateConfig, prompts: list[Prompt], runs: list[ModelRun],
                            detector: Path) -> list[str]:
    """Every prompt checked against each model's tokenizer and text encoder window, and every category's
    query against the detector's (identical lines from models sharing a tokenizer are given once)."""
    from transformers import AutoConfig, AutoTokenizer

    query_tokenizer, query_window = None, 0     # the world's detector takes no text: queries are not checked
    if str(detector) != det.WORLD_DETECTOR:
        try:
            query_tokenizer = AutoTokenizer.from_pretrained(detector, local_files_only=True)
            text_config = AutoConfig.from_pretrained(detector, local_files_only=True).text_config
        except (OSError, ValueError, KeyError, AttributeError) as error:
            return [f"detector: {detector}: tokenizer or config cannot be loaded ({error})"]
        query_window = min(query_tokenizer.model_max_length, text_config.max_position_embeddings)
    problems: dict[str, None] = {}
    for run in runs:
        try:
            tokenizer = AutoTokenizer.from_pretrained(run.path / "tokenizer", local_files_only=True)
            encoder = AutoConfig.from_pretrained(run.path / "text_encoder", local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            problems[f"model {run.label}: tokenizer or text encoder config cannot be loaded ({error})"] = None
            continue
        window = min(tokenizer.model_max_length, encoder.max_position_embeddings)
        problems.update(dict.fromkeys(window_problems(prompts, tokenizer, window, query_tokenizer or tokenizer,
                                                      query_window or window, config.detection.query_template)))
    return list(problems)


def run_record(config: EvaluateConfig, run: ModelRun, fingerprint: str) -> dict:
    return {"model": run.info(), "prompts": fingerprint, "generation": config.generation_fingerprint(run.resolution)}


def _existing_run_problems(config: EvaluateConfig, run: ModelRun, fingerprint: str) -> list[str]:
    path = run.folder / RUN_FILE
    if not path.exists():
        return []
    before = json.loads(path.read_text())
    now = run_record(config, run, fingerprint)
    changed = [key for key in ("prompts", "generation") if before.get(key) != now[key]]
    if before.get("model", {}).get("id") != run.model_id:
        changed.append("model weights")
    if not changed:
        return []
    return [f"{run.folder} holds images made with other {', '.join(changed)}; use another out_dir, or delete the "
            f"folder to start this model again"]



def attention_dir(run: ModelRun, prompt: Prompt) -> Path:
    return run.folder / "attention" / f"prompt-{prompt.id:06d}"


def model_rows(plan: Plan, run: ModelRun) -> list[dict]:
    """Every detections row of one model, each file checked against its record first (a broken one
    stops with its name: the next run redoes it)."""
    rows: list[dict] = []
    out_dir = run.detections_dir(plan.config)
    for shard in plan.shards:
        images = run.images_dir / f"{shard.name}.tar"
        path = out_dir / det.detections_name(images.name)
        done, reason = integrity.status(path, det.shard_sha256(images)) if images.exists() else (False, None)
        if not done:
            raise EvaluationError(f"{run.label}: {path}: {reason or 'no detections'}; run the evaluation again to "
                                  f"redo it")
        try:
            rows += det.read_detections(path)
        except det.DetectionsError as error:
            raise EvaluationError(f"{run.label}: {error}") from None
    return rows
