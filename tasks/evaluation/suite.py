"""The metrics beside MultiGen, run for each model of an evaluate-multigen run with its machinery: the same
seeds, the same shards written atomically with their records, the same resume.

Per model (its folder ``<out>/<label>/``), in the generation stage (the pipeline is loaded once):
- each metric's prompt set is generated into ``<set>-<fingerprint>/images/`` (VISOR's spatial prompts,
  4 images each; OptiGen's least likely tuples; each real set's captions, 1 image each). The folder name
  carries the set's fingerprint (its prompts and images per prompt), so a changed set never reuses images;
- latency (``latency.json``) and the grounding mIoU (``grounding.json``), remeasured only when what decides
  them (model, settings, device, shards) changed.
In the scoring stage (after MultiGen's detection): VISOR's OWL-ViT boxes and OptiGen's OWLv2 detections
(JSON Lines per shard, records naming the image shard's sha256, like MultiGen's), FID per real set
(torch-fidelity, the real statistics cached by content), CLIP score per set; everything is written to
``metrics.json`` (:class:`~tokencompose.schemas.multigen.ModelMetrics`), which the report reads.

OptiGen's selection (the language model's least likely tuples) depends on the prompts only, so it is made
once per run (``<out>/optigen-selection.json``, reused while the language model and settings match).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tokencompose.schemas.multigen import ModelMetrics
from tokencompose.tasks.evaluation.sets import OPTIGEN_SET, VISOR_SET
from tokencompose.tasks.multigen import detection as det
from tokencompose.tasks.multigen import generation as gen
from tokencompose.tasks.multigen import integrity
from tokencompose.tasks.multigen.plan import ModelRun, Plan
from tokencompose.tasks.multigen.prompts import Prompt

log = logging.getLogger("tokencompose.evaluation")
Progress = Callable[[str], None]
METRICS_FILE = "metrics.json"
LATENCY_FILE = "latency.json"
GROUNDING_FILES = {"fast": "grounding.json", "daam": "grounding-daam.json"}
OPTIGEN_SELECTION = "optigen-selection.json"
MULTIGEN_SET = "multigen"


@dataclass(frozen=True)
class ImageSet:
    """A prompt set generated for a metric."""

    metric: str                  # visor, optigen, fid
    name: str                    # visor, optigen, or the real set's name
    prompts: tuple[Prompt, ...]
    images_per_prompt: int

    @property
    def fingerprint(self) -> str:
        blob = json.dumps({"prompts": [[p.id, p.text, list(p.categories)] for p in self.prompts],
                           "images_per_prompt": self.images_per_prompt}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def folder(self, run: ModelRun) -> Path:
        return run.folder / f"{self.name}-{self.fingerprint}"

    def images_dir(self, run: ModelRun) -> Path:
        return self.folder(run) / gen.IMAGES_DIR

    def shards(self, per_shard: int) -> list[gen.ShardPlan]:
        return gen.plan_shards(self.prompts, per_shard)


def _fingerprint(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the prompt sets
def optigen_selection(plan: Plan, device: str) -> tuple[Prompt, ...]:
    """OptiGen's prompts: made once per run folder by the language model, reused while it and the settings match."""
    from tokencompose.tasks.evaluation import optigen

    settings = plan.config.metrics.optigen
    assert plan.metrics.language_model is not None
    key = _fingerprint({"language_model": gen.model_id(plan.metrics.language_model), "categories": settings.categories,
                        "count": settings.count, "size": settings.size})
    path = Path(plan.config.out_dir) / OPTIGEN_SELECTION
    saved = _read_json(path)
    if saved is None or saved.get("key") != key:
        names = optigen.coco80() if settings.categories == "coco" else optigen.ade20k100()
        model, tokenizer = optigen.load_language_model(plan.metrics.language_model, device)
        log_probs = optigen.pair_log_probs(model, tokenizer, names)
        selection = optigen.select_prompts(log_probs, names, settings.count, settings.size)
        saved = {"key": key, "language_model": str(plan.metrics.language_model), "categories_set": settings.categories,
                 **selection.to_dict()}
        _write_json(path, saved)
    return tuple(Prompt(id=row["id"], text=row["text"], categories=tuple(row["categories"])) for row in saved["prompts"])


def image_sets(plan: Plan, device: str = "cpu") -> list[ImageSet]:
    """The prompt sets the enabled metrics generate, in a fixed order."""
    metrics, sets = plan.config.metrics, []
    if metrics.visor.enabled:
        prompts = tuple(Prompt(id=p.id, text=p.text, categories=p.categories) for p in plan.metrics.visor_prompts)
        sets.append(ImageSet("visor", VISOR_SET, prompts, metrics.visor.images_per_prompt))
    if metrics.optigen.enabled:
        sets.append(ImageSet("optigen", OPTIGEN_SET, optigen_selection(plan, device),
                             plan.config.generation.images_per_prompt))
    for real in plan.metrics.real_sets:
        sets.append(ImageSet("fid", real.name, real.prompts, 1))
    return sets


# ------------------------------------------------------------------ generation stage
def missing_work(plan: Plan, run: ModelRun, device: str, rank: int = 0, world: int = 1) -> bool:
    """Whether the generation stage has anything to do for this model (so the pipeline must be loaded)."""
    per_shard = plan.config.generation.prompts_per_shard
    for image_set in image_sets(plan, device):
        for shard in gen.for_rank(image_set.shards(per_shard), rank, world):
            if not integrity.status(image_set.images_dir(run) / f"{shard.name}.tar")[0]:
                return True
    if rank != 0:
        return False
    return ((plan.config.metrics.latency.enabled
             and _stale(run.folder / LATENCY_FILE, _latency_key(plan, run, _device_name(device))))
            or any(_stale(run.folder / GROUNDING_FILES[protocol], _grounding_key(plan, run, protocol))
                   for protocol in grounding_protocols(plan)))


def generate_sets(plan: Plan, run: ModelRun, pipe, rank: int = 0, world: int = 1,
                  progress: Progress | None = None, note_redone=None) -> dict:
    """This rank's missing shards of every metric's prompt set, then (rank 0) latency and grounding."""
    g = plan.config.generation
    totals: dict[str, int] = {"shards_done": 0, "shards_skipped": 0, "images": 0, "nan": 0}
    for image_set in image_sets(plan, str(pipe.device)):
        def report(name: str, counts: dict, label: str = image_set.name) -> None:
            if progress:
                progress(f"{run.label}: {label} {name} generated ({counts['images']} images, {counts['nan']} NaN)")

        counts = gen.run_generation(pipe, gen.for_rank(image_set.shards(g.prompts_per_shard), rank, world),
                                    image_set.images_dir(run), images_per_prompt=image_set.images_per_prompt,
                                    seed=g.seed, steps=g.steps, guidance_scale=g.guidance_scale,
                                    resolution=run.resolution, batch_size=g.batch_size, model=run.info(),
                                    progress=report, redone=note_redone)
        for key, value in counts.items():
            totals[key] += value
    if rank == 0:
        measure_latency(plan, run, pipe, progress)
        measure_grounding(plan, run, pipe, progress)
    return totals


def _stale(path: Path, key: str) -> bool:
    saved = _read_json(path)
    return saved is None or saved.get("key") != key


def _device_name(device: str) -> str:
    import torch

    from tokencompose.tasks.evaluation.latency import device_name

    return device_name(torch.device(device))


def _latency_key(plan: Plan, run: ModelRun, device: str) -> str:
    g, settings = plan.config.generation, plan.config.metrics.latency
    return _fingerprint({"model": run.model_id, "steps": g.steps, "guidance": g.guidance_scale,
                         "resolution": run.resolution, "scheduler": g.scheduler, "precision": g.precision,
                         "seed": g.seed, "latency": settings.model_dump(), "device": device})


def measure_latency(plan: Plan, run: ModelRun, pipe, progress: Progress | None = None) -> dict | None:
    from tokencompose.tasks.evaluation.latency import device_name, measure_latency as measure

    settings = plan.config.metrics.latency
    if not settings.enabled:
        return None
    path, key = run.folder / LATENCY_FILE, _latency_key(plan, run, device_name(pipe.device))
    saved = _read_json(path)
    if saved is not None and saved.get("key") == key:
        return saved["result"]
    g = plan.config.generation
    texts = [p.text for p in plan.prompts[:settings.prompts]]
    result = measure(pipe, texts, steps=g.steps, guidance_scale=g.guidance_scale, resolution=run.resolution,
                     warmup=settings.warmup, batch_size=settings.batch_size if settings.batch_size > 1 else None,
                     seed=g.seed).model_dump(mode="json")
    _write_json(path, {"key": key, "result": result})
    if progress:
        progress(f"{run.label}: latency {result['seconds_per_image_mean']:.3f} ± "
                 f"{result['seconds_per_image_std']:.3f} s per image on {result['device']}")
    return result


def grounding_protocols(plan: Plan) -> list[str]:
    """The grounding protocols this run measures (none without shards)."""
    if not plan.metrics.grounding_shards:
        return []
    chosen = plan.config.metrics.grounding.protocol
    return ["fast", "daam"] if chosen == "both" else [chosen]


def _grounding_key(plan: Plan, run: ModelRun, protocol: str) -> str:
    shards = [(s, Path(s).stat().st_size if Path(s).exists() else None) for s in plan.metrics.grounding_shards]
    settings = plan.config.metrics.grounding.model_dump(mode="json", exclude={"shards", "protocol"})
    return _fingerprint({"model": run.model_id, "shards": shards, "resolution": run.resolution,
                         "seed": plan.config.generation.seed, "grounding": settings, "protocol": protocol})


def measure_grounding(plan: Plan, run: ModelRun, pipe, progress: Progress | None = None) -> dict[str, dict]:
    """Each chosen protocol's mIoU (reused while what decides it is unchanged), by protocol."""
    from tokencompose.tasks.evaluation.grounding_miou import evaluate_shards

    settings, results = plan.config.metrics.grounding, {}
    for protocol in grounding_protocols(plan):
        path, key = run.folder / GROUNDING_FILES[protocol], _grounding_key(plan, run, protocol)
        saved = _read_json(path)
        if saved is not None and saved.get("key") == key:
            results[protocol] = saved["result"]
            continue
        result = evaluate_shards(pipe, plan.metrics.grounding_shards, resolution=run.resolution,
                                 timesteps=settings.timesteps, threshold=settings.threshold,
                                 seed=plan.config.generation.seed, max_samples=settings.max_samples,
                                 protocol=protocol, daam_steps=settings.daam_steps,
                                 daam_guidance=plan.config.generation.guidance_scale,
                                 inner_steps=settings.inner_steps)
        results[protocol] = result.model_dump(mode="json")
        _write_json(path, {"key": key, "result": results[protocol]})
        if progress:
            progress(f"{run.label}: grounding mIoU ({protocol}) {result.miou:.4f} over {result.nouns} nouns of "
                     f"{result.images} images")
    return results


# ------------------------------------------------------------------ scoring stage
def score_model(plan: Plan, run: ModelRun, device: str, progress: Progress | None = None,
                note_redone=None) -> ModelMetrics:
    """Detect and score every metric of one model (its images must be generated); writes metrics.json."""
    say = progress or log.info
    sets = image_sets(plan, device)
    for image_set in sets:
        _check_generated(plan, run, image_set)
    metrics = ModelMetrics()
    visor = next((s for s in sets if s.metric == "visor"), None)
    if visor is not None:
        metrics.visor = score_visor(plan, run, visor, device, note_redone)
        say(f"{run.label}: VISOR OA {metrics.visor['OA']:.2f}, VISOR_cond {metrics.visor['VISOR_cond']:.2f}")
    optigen_set = next((s for s in sets if s.metric == "optigen"), None)
    if optigen_set is not None:
        metrics.optigen = score_optigen(plan, run, optigen_set, device, note_redone)
        say(f"{run.label}: OptiGen {metrics.optigen['level']} {metrics.optigen['mean']:.2f}")
    real_sets = [s for s in sets if s.metric == "fid"]
    if real_sets:
        metrics.fid = score_fid(plan, run, real_sets, device)
        say(f"{run.label}: FID " + ", ".join(f"{k} {v['fid']:.3f}" for k, v in metrics.fid.items()))
    if plan.config.metrics.clip_score.enabled:
        metrics.clip_score = score_clip(plan, run, real_sets, device)
        say(f"{run.label}: CLIP score " + ", ".join(f"{k} {v['clip_score']:.3f}" for k, v in metrics.clip_score.items()))
    latency = _read_json(run.folder / LATENCY_FILE) if plan.config.metrics.latency.enabled else None
    metrics.latency = latency["result"] if latency else None
    for protocol in grounding_protocols(plan):
        saved = _read_json(run.folder / GROUNDING_FILES[protocol])
        summary = {k: v for k, v in saved["result"].items() if k != "per_noun"} if saved else None
        if protocol == "fast":
            metrics.grounding = summary
        else:
            metrics.grounding_daam = summary
    _write_json(run.folder / METRICS_FILE, metrics.model_dump(mode="json"))
    return metrics


def _check_generated(plan: Plan, run: ModelRun, image_set: ImageSet) -> None:
    from tokencompose.tasks.multigen.plan import EvaluationError

    bad = []
    for shard in image_set.shards(plan.config.generation.prompts_per_shard):
        done, reason = integrity.status(image_set.images_dir(run) / f"{shard.name}.tar")
        if not done:
            bad.append(f"{shard.name} ({reason or 'not generated yet'})")
    if bad:
        raise EvaluationError(f"{run.label}: {image_set.name} image shards not ready: {', '.join(bad)}; run the "
                              f"evaluation again to generate them")


def _shard_paths(plan: Plan, run: ModelRun, image_set: ImageSet) -> list[Path]:
    return [image_set.images_dir(run) / f"{s.name}.tar" for s in image_set.shards(plan.config.generation.prompts_per_shard)]


def _images(plan: Plan, run: ModelRun, image_set: ImageSet) -> list[tuple[dict, bytes]]:
    """(metadata, PNG) of every image of a set, in shard order, NaN images left out."""
    return [(meta, png) for path in _shard_paths(plan, run, image_set) for meta, png in gen.read_shard(path)
            if not meta["nan"]]


class OwlBoxes:
    """VISOR's detector (OWL-ViT, or an OWLv2) from a local folder: every box above the threshold."""

    def __init__(self, path: Path, device: str, threshold: float):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True).to(device).eval()
        self.threshold = threshold

    def rows(self, shard: Path) -> list[dict]:
        from PIL import Image

        from tokencompose.tasks.evaluation.visor import detect_boxes

        rows = []
        for meta, png in gen.read_shard(shard):
            row = {"prompt_id": meta["prompt_id"], "image_index": meta["image_index"], "nan": meta["nan"], "boxes": []}
            if not meta["nan"]:
                image = Image.open(io.BytesIO(png)).convert("RGB")
                boxes = detect_boxes(self.model, self.processor, [image], [meta["categories"]], self.threshold)[0]
                row["boxes"] = [{"label": b.label, "score": round(b.score, 6), "box": [round(v, 2) for v in b.box]}
                                for b in boxes]
            rows.append(row)
        return rows


def score_visor(plan: Plan, run: ModelRun, image_set: ImageSet, device: str, note_redone=None) -> dict:
    from tokencompose.tasks.evaluation.visor import score_rows

    settings = plan.config.metrics.visor
    assert plan.metrics.visor_detector is not None
    detector_key = _fingerprint({"detector": str(plan.metrics.visor_detector), "threshold": settings.threshold})
    out_dir = image_set.folder(run) / f"boxes-{detector_key[:10]}"
    detector: OwlBoxes | None = None
    rows: list[dict] = []
    for shard in _shard_paths(plan, run, image_set):
        out = out_dir / det.detections_name(shard.name)
        made_from = det.shard_sha256(shard)
        done, reason = integrity.status(out, made_from)
        if not done:
            detector = detector or OwlBoxes(plan.metrics.visor_detector, device, settings.threshold)
            det.write_detections(out, detector.rows(shard), made_from)
            if reason is not None and note_redone:
                note_redone(out, reason)
        rows += det.read_detections(out)
    scores = score_rows(plan.metrics.visor_prompts, rows, settings.threshold).to_dict()
    return {**scores, "detector": str(plan.metrics.visor_detector), "threshold": settings.threshold,
            "images_per_prompt": image_set.images_per_prompt,
            "per_prompt": visor_per_prompt(plan.metrics.visor_prompts, rows, settings.threshold)}


def visor_per_prompt(prompts, rows: list[dict], threshold: float) -> dict[str, list[int]]:
    """Prompt id -> [images with both objects, images with both in the right relation, scored images]:
    what the report's paired differences of OA and VISOR_uncond resample."""
    from tokencompose.tasks.evaluation.visor import boxes_from_rows, judge_image

    by_id = {p.id: p for p in prompts}
    counts: dict[str, list[int]] = {}
    for row in rows:
        if row["nan"]:
            continue
        result = judge_image(by_id[row["prompt_id"]], boxes_from_rows(row.get("boxes") or []), threshold)
        entry = counts.setdefault(str(row["prompt_id"]), [0, 0, 0])
        entry[0] += result.both
        entry[1] += result.both and result.relation_correct
        entry[2] += 1
    return dict(sorted(counts.items(), key=lambda item: int(item[0])))


def score_optigen(plan: Plan, run: ModelRun, image_set: ImageSet, device: str, note_redone=None) -> dict:
    from tokencompose.tasks.evaluation.optigen import accuracy
    from tokencompose.tasks.multigen.metrics import success_table

    config = plan.config
    out_dir = image_set.folder(run) / f"detections-{config.detection_fingerprint()}"
    shards = _shard_paths(plan, run, image_set)
    todo = [s for s in shards if not integrity.status(out_dir / det.detections_name(s.name), det.shard_sha256(s))[0]]
    if todo:
        detector = det.open_detector(plan.detector, device, config.detection.precision, config.detection.query_template)
        det.run_detection(detector, todo, out_dir, config.detection.batch_size, threshold=config.detection.threshold,
                          redone=note_redone)
    rows = [row for s in shards for row in det.read_detections(out_dir / det.detections_name(s.name))]
    settings = config.metrics.optigen
    ids = [p.id for p in image_set.prompts]
    success, scored = success_table(rows, config.detection.threshold, settings.size, ids)
    return {**accuracy(rows, settings.size, config.detection.threshold), "size": settings.size,
            "categories": settings.categories, "prompts": len(image_set.prompts),
            "per_prompt": {str(i): [int(a), int(b)] for i, a, b in zip(ids, success, scored)}}


def score_fid(plan: Plan, run: ModelRun, real_sets: list[ImageSet], device: str) -> dict[str, dict]:
    from tokencompose.tasks.evaluation.fid import InceptionFeatures, fid

    settings = plan.config.metrics.fid
    assert plan.metrics.inception is not None
    extractor = InceptionFeatures(plan.metrics.inception, settings.layer, device, settings.batch_size)
    resize = settings.resize or run.resolution
    results = {}
    for image_set in real_sets:
        real = plan.metrics.real_set(image_set.name)
        blobs = [png for _, png in _images(plan, run, image_set)]
        results[image_set.name] = fid(real.images, blobs, extractor, Path(settings.cache_dir).expanduser(), resize,
                                      real_files=real.files)
    return results


def score_clip(plan: Plan, run: ModelRun, real_sets: list[ImageSet], device: str) -> dict[str, dict]:
    """CLIP score of each real set's generations against their captions (MultiGen's images when there is none)."""
    from PIL import Image

    from tokencompose.tasks.evaluation.clip_score import ClipScorer, per_prompt_means, summary

    settings = plan.config.metrics.clip_score
    scorer = ClipScorer(settings.model, plan.metrics.clip_checkpoint, settings.pretrained, device, settings.batch_size)
    sources: list[tuple[str, list[tuple[dict, bytes]]]] = [(s.name, _images(plan, run, s)) for s in real_sets]
    if not sources:
        multigen = [(meta, png) for shard in plan.shards for meta, png in gen.read_shard(
            run.images_dir / f"{shard.name}.tar") if not meta["nan"]]
        sources = [(MULTIGEN_SET, multigen)]
    results = {}
    for name, images in sources:
        scores = scorer.score([Image.open(io.BytesIO(png)) for _, png in images], [m["prompt"] for m, _ in images])
        per_prompt = per_prompt_means([m["prompt_id"] for m, _ in images], scores)
        results[name] = {**summary(scores), "model": f"{settings.model}/{settings.pretrained}",
                         "per_prompt": {str(k): v for k, v in per_prompt.items()}}
    return results


def read_metrics(run: ModelRun) -> ModelMetrics:
    """The model's metrics.json (empty when no metric ran)."""
    data = _read_json(run.folder / METRICS_FILE)
    return ModelMetrics.model_validate(data) if data else ModelMetrics()


# ------------------------------------------------------------------ small files
def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    """Written under a temporary name and renamed: a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
