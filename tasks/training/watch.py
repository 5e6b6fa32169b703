"""Watching a training run: accelerate's experiment trackers and validation images with attention maps.

Trackers (``report_to``): the metrics record of every ``log_every`` steps goes to them under
``loss/<term>`` (``loss/total``, ``loss/ldm``, ``loss/token``, ``loss/token/<resolution>``, ...),
``lr``, ``throughput/*``, ``count/*`` and ``bad/*``. Validation: every ``validation_every`` steps and
at the end, each validation prompt is generated with the current weights from a fixed noise (the
same at every validation, so the images are comparable along the run) into
``validation/step-NNNNNN/NN.png``; the first prompt is generated through
:func:`~tokencompose.tasks.multigen.attention_maps.capture_maps`, whose noun maps are saved beside it
(``attention/``), and the images go to the trackers that take images.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokencompose.schemas.training import TrainConfig

log = logging.getLogger("tokencompose.tasks.training")

VALIDATION_DIR = "validation"
TRACKER_DIR = "logs"
ATTENTION_SUBDIR = "attention"
ALL_TRACKERS = ("tensorboard", "wandb", "mlflow")


def trackers(report_to: str) -> list[str]:
    """accelerate's ``log_with`` names for ``report_to``."""
    if report_to == "none":
        return []
    return list(ALL_TRACKERS) if report_to == "all" else [report_to]


def tracker_problems(report_to: str) -> list[str]:
    """The trackers whose library is not installed, as messages (checked before any model loads)."""
    import importlib.util

    modules = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
    return [f"report_to {report_to!r} needs {modules[name]}: pip install {modules[name]} "
            f"(or tokencompose[tracking])" for name in trackers(report_to)
            if importlib.util.find_spec(modules[name]) is None]


def hyperparameters(config: TrainConfig) -> dict[str, int | float | str | bool]:
    """The configuration as scalars (what TensorBoard's hparams accept): lists and null as JSON text."""
    values = {}
    for key, value in config.model_dump(mode="json").items():
        values[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return values


def tracker_values(record: dict) -> dict[str, float]:
    """A metrics record under the trackers' tag names (the step is passed apart)."""
    renamed = {"loss": "loss/total", "lr": "lr", "samples_per_s": "throughput/samples_per_s",
               "data_wait_fraction": "throughput/data_wait_fraction"}
    values = {}
    for key, value in record.items():
        if key == "step" or not isinstance(value, (int, float)):
            continue
        if key in renamed:
            values[renamed[key]] = value
        elif key.startswith(("count/", "bad/")):
            values[key] = value
        else:  # a loss term, maybe per resolution: ldm, token, token/res16 ...
            values[f"loss/{key}"] = value
    return values


@dataclass
class Validation:
    step: int
    folder: Path
    images: list[Path]
    attention: Path | None      # the first prompt's noun-map grid


def validation_folder(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / VALIDATION_DIR / f"step-{step:06d}"


def latest_validation(output_dir: Path) -> Path | None:
    root = Path(output_dir) / VALIDATION_DIR
    done = sorted(root.glob("step-*")) if root.exists() else []
    return done[-1] if done else None


def validation_pipeline(models, unet):
    """A StableDiffusionPipeline over the training components (the UNet being trained, PLMS sampling as SD1.x
    folders configure PNDM; an SD2/2.1 folder's DDIM config would leave PNDM's PRK warm-up on)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer,
                                   unet=unet, scheduler=PNDMScheduler.from_config(models.noise_scheduler.config,
                                                                                  skip_prk_steps=True),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_validation(config: TrainConfig, models, unet, step: int, autocast) -> Validation:
    """Generate the validation prompts with ``unet`` as it is now; its attention processors and
    training mode are restored afterwards."""
    import torch
    from PIL import Image

    from tokencompose.tasks.multigen.attention_maps import capture_maps, save_grid, spacy_nouns, spans_of
    from tokencompose.tasks.multigen.generation import initial_latents

    folder = validation_folder(config.output_dir, step)
    folder.mkdir(parents=True, exist_ok=True)
    pipe = validation_pipeline(models, unet)
    processors, training = dict(unet.attn_processors), unet.training
    resolution = config.resolution or models.native_resolution  # the trainer has resolved it already
    shape = (unet.config.in_channels, resolution // models.vae_scale_factor, resolution // models.vae_scale_factor)
    images, grid = [], None
    unet.eval()
    try:
        with autocast:
            for index, prompt in enumerate(config.validation_prompts):
                latents = initial_latents(config.seed, index, 0, shape)[None]
                if index == 0:
                    spans = (spans_of(prompt, config.validation_nouns) if config.validation_nouns
                             else spacy_nouns(prompt))
                    maps = capture_maps(pipe, prompt, spans, latents, steps=config.validation_inference_steps,
                                        guidance_scale=config.validation_guidance_scale,
                                        resolution=resolution)
                    unet.set_attn_processor(dict(processors))  # it empties the dict it is given
                    grid = save_grid(maps, folder / ATTENTION_SUBDIR, prompt)
                    image = maps.image
                else:
                    with torch.inference_mode():
                        out = pipe(prompt=prompt, latents=latents.to(unet.device, unet.dtype),
                                   num_inference_steps=config.validation_inference_steps,
                                   guidance_scale=config.validation_guidance_scale, height=resolution,
                                   width=resolution, output_type="np").images[0]
                    image = (np.nan_to_num(out, nan=0.0) * 255).round().clip(0, 255).astype(np.uint8)
                path = folder / f"{index:02d}.png"
                Image.fromarray(image).save(path)
                images.append(path)
    finally:
        unet.set_attn_processor(dict(processors))  # it empties the dict it is given
        unet.train(training)
    (folder / "prompts.json").write_text(json.dumps(config.validation_prompts, indent=1))
    return Validation(step, folder, images, grid)


def log_validation(accelerator, validation: Validation, prompts: list[str]) -> None:
    """The validation images (and the attention grid) to the trackers that take images."""
    from PIL import Image

    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in validation.images]
    grid = np.asarray(Image.open(validation.attention).convert("RGB")) if validation.attention else None
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", np.stack(pictures), validation.step, dataformats="NHWC")
            if grid is not None:
                tracker.writer.add_image("validation_attention", grid, validation.step, dataformats="HWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb  # type: ignore[import-not-found]

            logged = [wandb.Image(p, caption=c) for p, c in zip(pictures, prompts)]
            extra = {"validation_attention": wandb.Image(grid)} if grid is not None else {}
            tracker.log({"validation": logged, **extra}, step=validation.step)
        elif tracker.name == "mlflow":
            import mlflow  # type: ignore[import-not-found]

            for path in [*validation.images, *([validation.attention] if validation.attention else [])]:
                mlflow.log_artifact(str(path), artifact_path=f"{VALIDATION_DIR}/{validation.folder.name}")
