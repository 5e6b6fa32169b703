"""MultiGen image generation: a local Stable Diffusion folder -> shards of seeded images (plain ustar tars
in WebDataset layout, written by the build's shard writer).

Every image's initial noise comes from a CPU generator seeded by a hash of (seed, prompt id, image
index), so any image can be regenerated alone, and the batch an image lands in changes nothing but
float rounding. A shard holds the images of a fixed range of prompts; it is written under a
temporary name and renamed when complete, with its sha256 and size recorded beside it; a run
started again skips a shard only when it still matches its record (see :mod:`.integrity`). Several
processes (``accelerate launch``/``torchrun``, one per GPU) each take every world-th shard: the
shards, and so the images, are those of a single process.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tokencompose.tasks.models.weights import missing_files, read_folder_config
from tokencompose.tasks.multigen import integrity
from tokencompose.tasks.multigen.prompts import Prompt
from tokencompose.tasks.shards.shard_io import write_tar

IMAGES_DIR = "images"
PIPELINE_MEMBERS = {
    "unet": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "text_encoder": (("config.json",), ("model.safetensors", "pytorch_model.bin")),
    "tokenizer": (("vocab.json", "tokenizer.json"),),
    "scheduler": (("scheduler_config.json",),),
}
SUPPORTED_PIPELINES = ("StableDiffusionPipeline",)


class ModelFolderError(ValueError):
    """A model folder that is not what the evaluation needs; the message says what is wrong."""


def check_pipeline_folder(path: Path) -> list[str]:
    """What is wrong with ``path`` as a diffusers Stable Diffusion folder (empty: nothing)."""
    path = Path(path)
    meta, problems = read_folder_config(path, "model_index.json", "not a diffusers pipeline folder (no model_index.json)")
    if problems:
        return problems
    index = path / "model_index.json"
    kind = meta.get("_class_name")
    if kind not in SUPPORTED_PIPELINES:
        problems.append(f"{index}: _class_name is {kind!r}; MultiGen runs a {' or '.join(SUPPORTED_PIPELINES)}")
    for component, members in PIPELINE_MEMBERS.items():
        if component not in meta:
            problems.append(f"{index}: no {component!r} component")
        problems += missing_files(path, members, subfolder=component)
    return problems


def model_id(path: Path) -> str:
    """A short fingerprint of a pipeline folder: its configs, and each weight file's name, size and
    first and last MiB (fast on multi-GB files; changes whenever the weights are re-saved)."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                               p.relative_to(path).parts)):
        rel = file.relative_to(path).as_posix()
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def image_seed(seed: int, prompt_id: int, index: int) -> int:
    """The generator seed of one image: a hash of the triple, so neighbours get unrelated noise."""
    blob = f"multigen:{seed}:{prompt_id}:{index}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") & ((1 << 63) - 1)


def initial_latents(seed: int, prompt_id: int, index: int, shape: Sequence[int]):
    """The image's initial noise, drawn on the CPU in fp32 (the same on every machine and device)."""
    import torch

    generator = torch.Generator("cpu").manual_seed(image_seed(seed, prompt_id, index))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


@dataclass(frozen=True)
class ShardPlan:
    start: int                    # position of the first prompt in the prompt list
    prompts: tuple[Prompt, ...]

    @property
    def name(self) -> str:
        return f"prompts-{self.start:06d}-{self.start + len(self.prompts) - 1:06d}"


def plan_shards(prompts: Sequence[Prompt], per_shard: int) -> list[ShardPlan]:
    return [ShardPlan(start, tuple(prompts[start:start + per_shard])) for start in range(0, len(prompts), per_shard)]


def for_rank(plans: Sequence[ShardPlan], rank: int, world: int) -> list[ShardPlan]:
    """The shards one process generates: every world-th, from its rank."""
    return list(plans[rank::world])


def image_key(prompt_id: int, index: int) -> str:
    return f"p{prompt_id:06d}-i{index:03d}"


def resolve_dtype(precision: str, device: str):
    import torch

    if precision == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def load_pipeline(path: Path, device: str, dtype, scheduler: str = "pndm", compile_unet: bool = False):
    """A StableDiffusionPipeline from a local folder, on ``device`` in ``dtype``, no safety checker,
    SDPA attention (diffusers' default AttnProcessor2_0), PNDM unless asked for the folder's scheduler."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from tokencompose.tasks.progress import timed

    problems = check_pipeline_folder(path)
    if problems:
        raise ModelFolderError("; ".join(problems))
    with timed(f"loading the pipeline {path} onto {device}"):
        pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=dtype, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False,
                                                       local_files_only=True)
        if scheduler == "pndm":
            # PLMS as SD1.x folders configure it; an SD2/2.1 folder's DDIM config would leave the PRK warm-up on
            pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if compile_unet:
        import torch

        pipe.unet = torch.compile(pipe.unet)
    return pipe


@dataclass
class GeneratedImage:
    prompt: Prompt
    index: int
    image: np.ndarray          # H x W x 3 uint8
    nan: bool


def generate_images(pipe, items: Sequence[tuple[Prompt, int]], *, seed: int, steps: int, guidance_scale: float,
                    resolution: int, batch_size: int, advance: Callable[[int], None] | None = None
                    ) -> list[GeneratedImage]:
    """Generate ``(prompt, image index)`` items in batches; each image's noise is its own (see module doc);
    ``advance(n)`` after each batch of n images."""
    import torch

    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = (pipe.unet.config.in_channels, resolution // factor, resolution // factor)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    results: list[GeneratedImage] = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        latents = torch.stack([initial_latents(seed, p.id, i, shape) for p, i in batch]).to(device=device, dtype=dtype)
        with torch.inference_mode():
            images = pipe(prompt=[p.text for p, _ in batch], latents=latents, num_inference_steps=steps,
                          guidance_scale=guidance_scale, height=resolution, width=resolution,
                          output_type="np").images
        for (prompt, index), image in zip(batch, images):
            nan = bool(np.isnan(image).any())
            pixels = np.nan_to_num(image, nan=0.0)
            results.append(GeneratedImage(prompt, index, (pixels * 255).round().clip(0, 255).astype(np.uint8), nan))
        if advance:
            advance(len(batch))
    return results


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar_atomic(path: Path, samples: Sequence[tuple[str, dict[str, bytes]]]) -> tuple[str, int]:
    """A plain ustar shard (the build's byte layout, see :mod:`~tokencompose.tasks.shards.shard_io`) of
    ``(key, {extension: bytes})`` samples, written under a temporary name and renamed when complete;
    its (sha256, size), computed while writing, are recorded beside it (see :mod:`.integrity`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    digest, size, _ = write_tar(tmp, samples)
    integrity.write_record(path, digest, size)
    tmp.replace(path)
    return digest, size


def generate_shard(pipe, plan: ShardPlan, path: Path, *, images_per_prompt: int, seed: int, steps: int,
                   guidance_scale: float, resolution: int, batch_size: int, model: dict,
                   advance: Callable[[int], None] | None = None) -> dict:
    """Generate and write one shard; returns counts (images, nan)."""
    items = [(prompt, index) for prompt in plan.prompts for index in range(images_per_prompt)]
    generated = generate_images(pipe, items, seed=seed, steps=steps, guidance_scale=guidance_scale,
                                resolution=resolution, batch_size=batch_size, advance=advance)
    samples = []
    for item in generated:
        meta = {"prompt_id": item.prompt.id, "image_index": item.index, "prompt": item.prompt.text,
                "categories": list(item.prompt.categories), "seed": seed,
                "image_seed": image_seed(seed, item.prompt.id, item.index), "model": model, "nan": item.nan}
        samples.append((image_key(item.prompt.id, item.index),
                        {"png": png_bytes(item.image), "json": json.dumps(meta, sort_keys=True).encode()}))
    write_tar_atomic(path, samples)
    return {"images": len(generated), "nan": sum(g.nan for g in generated)}


class ShardReadError(ValueError):
    """An image shard that cannot be read; the message names the file."""


def read_shard(path: Path) -> list[tuple[dict, bytes]]:
    """(metadata, PNG bytes) of every image of a shard, in order; a damaged shard raises
    :class:`ShardReadError` naming it."""
    grouped: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                handle = tar.extractfile(member)
                if handle is None:
                    raise ShardReadError(f"{path}: member {member.name} is not a file")
                key, _, field = member.name.partition(".")
                grouped.setdefault(key, {})[field] = handle.read()
        return [(_image_meta(path, key, fields), fields["png"]) for key, fields in grouped.items()]
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ShardReadError(f"{path}: not a readable tar ({error or type(error).__name__})") from None


def _image_meta(path: Path, key: str, fields: dict[str, bytes]) -> dict:
    missing = [f for f in ("json", "png") if f not in fields]
    if missing:
        raise ShardReadError(f"{path}: sample {key} has no {' or '.join(missing)} member")
    try:
        meta = json.loads(fields["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ShardReadError(f"{path}: {key}.json is not JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ShardReadError(f"{path}: {key}.json is not an object")
    return meta


def run_generation(pipe, plans: Sequence[ShardPlan], out: Path, *, images_per_prompt: int, seed: int, steps: int,
                   guidance_scale: float, resolution: int, batch_size: int, model: dict,
                   progress: Callable[[str, dict], None] | None = None,
                   redone: Callable[[Path, str], None] | None = None) -> dict:
    """Every shard of ``plans`` not yet intact on disk (absent, or broken: then ``redone(path, why)``);
    returns counts of this call. The images' rate and ETA are reported (:mod:`tokencompose.tasks.progress`)."""
    from tokencompose.tasks.progress import Progress

    totals = {"shards_done": 0, "shards_skipped": 0, "images": 0, "nan": 0}
    with Progress("generation", sum(len(p.prompts) for p in plans) * images_per_prompt, "image") as images:
        for plan in plans:
            path = Path(out) / f"{plan.name}.tar"
            done, reason = integrity.status(path)
            if done:
                totals["shards_skipped"] += 1
                images.skip(len(plan.prompts) * images_per_prompt)
                continue
            if reason is not None and redone:
                redone(path, reason)
            counts = generate_shard(pipe, plan, path, images_per_prompt=images_per_prompt, seed=seed, steps=steps,
                                    guidance_scale=guidance_scale, resolution=resolution, batch_size=batch_size,
                                    model=model, advance=images.advance)
            totals["shards_done"] += 1
            totals["images"] += counts["images"]
            totals["nan"] += counts["nan"]
            if progress:
                progress(plan.name, counts)
    return totals
