"""The editing stage's two jobs: edit one image (`tokencompose edit`) and edit + score a PIE-Bench folder
(`tokencompose edit --pie-bench`). Everything is checked before a model is loaded.

An edit's folder holds source.png, mask.png (the mask used), result.png, decoded.png (before the
background step), attention.png and attention.npy when words were asked for, and edit.json (what was
done, with the configuration). A PIE-Bench run writes each model's edits under ``<label>/`` and
report.json / report.md with the models side by side and the seed report's Table 2 beside.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokencompose.schemas.editing import EDIT_INFO_FILE, EditConfig, PieBenchConfig

log = logging.getLogger(__name__)


def resolve_model(model: str, registry_dir: Path | None, config) -> Path:
    """A pipeline folder from a path/name, or from a registry entry id ('promoted': the promoted one)."""
    from tokencompose.tasks.multigen.plan import resolve_pipeline

    if registry_dir is None:
        return resolve_pipeline(model, config)
    from tokencompose.tasks.registry.store import ModelRegistry

    registry = ModelRegistry(Path(registry_dir))
    if model == "promoted":
        entry = registry.promoted()
        if entry is None:
            raise ValueError(f"registry {registry_dir}: no entry is promoted")
        model = entry.id
    problem = registry.usable(model)
    if problem:
        raise ValueError(f"registry {registry_dir}: {problem}")
    return resolve_pipeline(str(registry.entry(model).pipeline_dir), config)


def read_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read the image {path}: {error}") from None


def square(image, side: int):
    from PIL import Image

    if image.size != (side, side):
        log.info("the image is %dx%d: resized to %dx%d", *image.size, side, side)
    return np.asarray(image.resize((side, side), Image.Resampling.BICUBIC))


def square_mask(mask: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.Resampling.NEAREST)) >= 128


def source_and_mask(config: EditConfig) -> tuple[object, np.ndarray | None, str]:
    """(source PIL image, mask at its size or None for a word mask, where the mask came from)."""
    from PIL import Image

    from tokencompose.tasks.editing.masks import mask_from_file, mask_from_image, shard_noun_mask, shard_sample

    spec = config.mask
    if spec.shard is not None:
        assert spec.sample_key is not None and spec.noun is not None   # MaskConfig's validator
        pixels, record = shard_sample(spec.shard, spec.sample_key)
        mask = shard_noun_mask(record, spec.noun, f"{spec.shard}:{spec.sample_key}")
        image = read_image(config.image) if config.image else Image.fromarray(pixels)
        if image.size != (mask.shape[1], mask.shape[0]):
            mask = mask_from_image(Image.fromarray(mask.astype(np.uint8) * 255), image.size, f"of {spec.noun!r}")
        return image, mask, f"shard {spec.shard} sample {spec.sample_key} noun {spec.noun!r}"
    assert config.image is not None                                 # EditConfig's validator
    image = read_image(config.image)
    if spec.file is not None:
        return image, mask_from_file(spec.file, image.size), f"file {spec.file}"
    return image, None, f"word {spec.word!r}"


def load(path: Path, models, precision: str):
    from tokencompose.tasks.models.devices import resolve_device
    from tokencompose.tasks.multigen.generation import load_pipeline, resolve_dtype

    device = resolve_device(models.device)
    return load_pipeline(path, device, resolve_dtype(precision, device))


def check_edit(config: EditConfig) -> Path:
    """What an edit can check before a model is loaded (attention steps, the model folder, the image and
    mask files); returns the model folder. The flow runs it in its own process before any task."""
    from tokencompose.tasks.editing.attention_over_time import check_steps

    sampler = config.sampler
    check_steps(config.attention.steps, min(int(sampler.steps * sampler.strength), sampler.steps))
    path = resolve_model(config.model, config.registry_dir, config)
    source_and_mask(config)
    return path.resolve()


def absolute_paths(config: EditConfig) -> EditConfig:
    """``config`` with its files and folders absolute against this process's folder: a Dask or Ray worker
    runs somewhere else."""
    mask = config.mask.model_copy(update={"file": _absolute(config.mask.file), "shard": _absolute(config.mask.shard)})
    return config.model_copy(update={"image": _absolute(config.image), "registry_dir": _absolute(config.registry_dir),
                                     "out_dir": _absolute(config.out_dir), "mask": mask})


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser().resolve()


def edit_image(config: EditConfig, model_path: Path | None = None) -> Path:
    """Edit one image as ``config`` says; returns the output folder. ``model_path``: the model folder
    already resolved (by :func:`check_edit` in the flow's process)."""
    from PIL import Image

    from tokencompose.tasks.editing.attention_over_time import AttentionRecorder, grid_image, word_tokens
    from tokencompose.tasks.editing.blend import EditItem, edit_batch
    from tokencompose.tasks.editing.masks import word_mask

    sampler, side = config.sampler, config.sampler.resolution
    path = check_edit(config) if model_path is None else model_path
    image, mask, origin = source_and_mask(config)
    pixels = square(image, side)
    pipe = load(path, config.models, sampler.precision)
    words = config.attention.words
    tokens = word_tokens(pipe.tokenizer, config.prompt, words) if words else []
    info: dict = {"model": str(path), "prompt": config.prompt, "mask_from": origin}
    if mask is None:
        assert config.mask.word is not None
        prompt = config.mask.source_prompt or config.prompt
        mask, heat, word_positions = word_mask(pipe, pixels, prompt, config.mask.word, sampler, config.mask.threshold)
        info |= {"mask_word_tokens": word_positions, "mask_prompt": prompt}
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        np.save(Path(config.out_dir) / "mask_heat.npy", heat)
    else:
        mask = square_mask(mask, side)
    item = EditItem(pixels, mask, config.prompt)
    if tokens:
        with AttentionRecorder(pipe.unet, tokens) as recorder:
            result = edit_batch(pipe, [item], sampler, on_unet=recorder)[0]
    else:
        result = edit_batch(pipe, [item], sampler)[0]
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, array in (("source", pixels), ("mask", mask.astype(np.uint8) * 255), ("result", result.image),
                        ("decoded", result.decoded)):
        Image.fromarray(array).save(out / f"{name}.png")
    if tokens:
        grid_image(result.image, words, recorder.steps, out / "attention.png", config.attention.steps,
                   config.attention.resolutions)
        np.save(out / "attention.npy", np.stack([np.concatenate([m.reshape(len(words), -1) for m in step.values()], 1)
                                                 for step in recorder.steps]))
        info |= {"attention_words": words, "attention_tokens": tokens, "attention_steps": len(recorder.steps),
                 "attention_layers": sorted(recorder.steps[0]) if recorder.steps else []}
    info |= {"mask_pixels": int(mask.sum()), "latent_mask_cells": int(result.latent_mask.sum()),
             "config": json.loads(config.model_dump_json(exclude={"runner"}))}  # the runner is not the result
    (out / EDIT_INFO_FILE).write_text(json.dumps(info, indent=1))
    return out


@dataclass(frozen=True)
class PieBenchPlan:
    """A PIE-Bench run checked before any model loads: its items, and each model's folder by label."""

    config: PieBenchConfig
    items: tuple  # of pie_bench.PieItem, in key order
    models: dict[str, Path]


def plan_pie_bench(config: PieBenchConfig) -> PieBenchPlan:
    """Read the PIE-Bench folder, check every image's size, each model and the scorers' local files."""
    from PIL import Image

    from tokencompose.tasks.editing import pie_bench
    from tokencompose.tasks.multigen.generation import model_id

    items = pie_bench.read_items(config.root, config.limit)
    for item in items:
        with Image.open(item.image) as image:
            if image.size != (pie_bench.SIDE, pie_bench.SIDE):
                raise ValueError(f"PIE-Bench item {item.key}: the image is {image.size[0]}x{image.size[1]}, "
                                 f"PIE-Bench's are {pie_bench.SIDE}x{pie_bench.SIDE}")
    pie_bench.check_scorer_files(config)
    paths = [resolve_model(name, None, config).resolve() for name in config.pipelines]
    return PieBenchPlan(config, tuple(items), {f"{path.name}-{model_id(path)[:8]}": path for path in paths})


def pie_bench_absolute(config: PieBenchConfig) -> PieBenchConfig:
    """``config`` with its files and folders absolute (see :func:`absolute_paths`)."""
    return config.model_copy(update={name: _absolute(getattr(config, name))
                                     for name in ("root", "out_dir", "clip_checkpoint", "dino")})


def pie_bench_chunks(plan: PieBenchPlan, distributed: bool) -> list[tuple[int, int]]:
    """(start, stop) item ranges, one edit task each: whole sampler batches, so an item is edited in the
    same batch (the same bytes) however the work is split; one range per model on the threads runner."""
    count = len(plan.items)
    size = plan.config.sampler.batch_size * plan.config.batches_per_task if distributed else count
    return [(start, min(start + size, count)) for start in range(0, count, max(size, 1))]


def edit_pie_items(plan: PieBenchPlan, label: str, start: int, stop: int, advance=None) -> list[str]:
    """Edit items [start, stop) with the model ``label`` into ``<out>/<label>/<key>.png``; returns the keys."""
    from PIL import Image

    from tokencompose.tasks.editing import pie_bench
    from tokencompose.tasks.editing.blend import EditItem, edit_all

    config, side = plan.config, plan.config.sampler.resolution
    chunk = plan.items[start:stop]
    edits = [EditItem(square(read_image(item.image), side),
                      square_mask(pie_bench.decode_runs(item.runs, border=False) > 0, side), item.edit_prompt, index)
             for index, item in enumerate(chunk, start)]
    pipe = load(plan.models[label], config.models, config.sampler.precision)
    results = edit_all(pipe, edits, config.sampler, advance)
    folder = Path(config.out_dir) / label
    folder.mkdir(parents=True, exist_ok=True)
    for item, result in zip(chunk, results):
        Image.fromarray(square(Image.fromarray(result.image), pie_bench.SIDE)).save(folder / f"{item.key}.png")
    return [item.key for item in chunk]


def score_pie_model(plan: PieBenchPlan, label: str, scorers=None) -> list[dict]:
    """The seven scores of each of the model's edited items (read back from ``<out>/<label>/``)."""
    from tokencompose.tasks.editing import pie_bench

    scorers = scorers or pie_bench.load_scorers(plan.config)
    folder = Path(plan.config.out_dir) / label
    rows = []
    for item in plan.items:
        source = np.asarray(read_image(item.image))
        edited = np.asarray(read_image(folder / f"{item.key}.png"))
        rows.append({"key": item.key, "type": item.edit_type,
                     **pie_bench.score_item(scorers, source, edited, item.runs, item.edit_prompt)})
    return rows


def write_pie_report(plan: PieBenchPlan, rows: dict[str, list[dict]]) -> Path:
    """report.json (every item's scores, the means, the seed report's table) and report.md."""
    from tokencompose.tasks.editing import pie_bench

    means = {label: {m: float(np.mean([s[m] for s in scores])) for m in pie_bench.METRICS}
             for label, scores in rows.items()}
    out = Path(plan.config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads(plan.config.model_dump_json(exclude={"runner"}))
    (out / "report.json").write_text(json.dumps({"means": means, "items": rows, "seed_table": pie_bench.seed_rows(),
                                                 "config": config}, indent=1))
    (out / "report.md").write_text(pie_bench.report_markdown(means, {label: len(s) for label, s in rows.items()}))
    return out / "report.md"


def run_pie_bench(config: PieBenchConfig, advance=None) -> Path:
    """Edit every item with each model, score it, and write report.json and report.md (in this process;
    flows/edit.py runs the same steps as tasks)."""
    from tokencompose.tasks.editing import pie_bench

    plan = plan_pie_bench(config)
    scorers = pie_bench.load_scorers(config)
    rows = {}
    for label in plan.models:
        edit_pie_items(plan, label, 0, len(plan.items), advance)
        rows[label] = score_pie_model(plan, label, scorers)
    return write_pie_report(plan, rows)
