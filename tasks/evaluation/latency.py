"""Latency: seconds per image at the paper's settings, and the batched path's throughput beside it.

The paper reports 7.54 +- 0.17 s (SD1.4) and 7.56 +- 0.14 s (TokenCompose) per image: 50 PNDM steps,
guidance 7.5, batch 1, 512 px. Here each of ``prompts`` images is generated alone after ``warmup`` untimed
(but recorded) calls, timed with ``time.perf_counter`` around the whole pipeline call (text encoding,
denoising, VAE decoding to an array), with ``torch.cuda.synchronize`` before starting and before stopping
the clock on CUDA; the figure is the mean and the population std (ddof 0) of those times. The throughput
is the same prompts generated in batches of ``batch_size`` after one warm-up batch: images per second and
its inverse. Each image's initial noise is the MultiGen one (:func:`~tokencompose.tasks.multigen.generation.
initial_latents`), so the work per image is the same in both paths. The device's name (CUDA's device name,
or the CPU's model name) and the precision are recorded: latencies of different machines do not compare.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel

PAPER_STEPS = 50
PAPER_GUIDANCE = 7.5
PAPER_RESOLUTION = 512
PAPER_SECONDS_PER_IMAGE = {"SD1.4": (7.54, 0.17), "TokenCompose": (7.56, 0.14)}   # mean, std


class Throughput(BaseModel):
    batch_size: int
    images: int
    seconds: float
    images_per_second: float
    seconds_per_image: float


class LatencyResult(BaseModel):
    device: str                         # e.g. "NVIDIA H200" or the CPU's model name
    device_type: str                    # "cuda", "cpu", ...
    precision: str                      # "fp32", "fp16", "bf16"
    scheduler: str
    steps: int
    guidance_scale: float
    resolution: int
    warmup: int
    prompts: int
    seconds_per_image_mean: float
    seconds_per_image_std: float        # population std (ddof 0)
    times: list[float]                  # seconds of each timed image, in prompt order
    warmup_times: list[float]           # the warm-up calls, excluded from the figures
    throughput: Throughput | None = None
    paper_seconds_per_image: dict[str, tuple[float, float]] = dict(PAPER_SECONDS_PER_IMAGE)

    @property
    def paper_settings(self) -> bool:
        """Measured as the paper did (50 PNDM steps, guidance 7.5, 512 px, batch 1): ``resolution`` is the side
        actually generated (the model's own unless one was set), so a 768 px model is never taken for it."""
        return (self.scheduler == "PNDMScheduler" and self.steps == PAPER_STEPS
                and self.guidance_scale == PAPER_GUIDANCE and self.resolution == PAPER_RESOLUTION)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: Any) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_name()
    return device.type


def precision_name(dtype: Any) -> str:
    import torch

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
    return names.get(dtype, str(dtype).removeprefix("torch."))


def population_std(values: Sequence[float]) -> float:
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=0))


def measure_latency(pipe, prompts: Sequence[str], *, steps: int = PAPER_STEPS, guidance_scale: float = PAPER_GUIDANCE,
                    resolution: int | None = None, warmup: int = 2, batch_size: int | None = 8, seed: int = 0,
                    clock: Callable[[], float] = time.perf_counter) -> LatencyResult:
    """Seconds per image over ``prompts`` (batch 1, after ``warmup`` calls on the first prompts) and, when
    ``batch_size`` > 1, the throughput of the same prompts in batches, at ``resolution`` (None: the model's own,
    UNet sample_size x VAE factor). ``clock`` is read twice per timed call (or batched run), before and after."""
    import torch

    from tokencompose.tasks.multigen.generation import initial_latents

    if not prompts:
        raise ValueError("latency needs at least one prompt")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    device, dtype = pipe.unet.device, pipe.unet.dtype
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    resolution = resolution or int(pipe.unet.config.sample_size) * factor
    shape = (pipe.unet.config.in_channels, resolution // factor, resolution // factor)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def generate(indices: Sequence[int]) -> None:
        latents = torch.stack([initial_latents(seed, i, 0, shape) for i in indices]).to(device=device, dtype=dtype)
        with torch.inference_mode():
            pipe(prompt=[prompts[i % len(prompts)] for i in indices], latents=latents, num_inference_steps=steps,
                 guidance_scale=guidance_scale, height=resolution, width=resolution, output_type="np")

    def timed(indices: Sequence[int]) -> float:
        synchronize()
        start = clock()
        generate(indices)
        synchronize()
        return clock() - start

    warmup_times = [timed([i]) for i in range(warmup)]
    times = [timed([i]) for i in range(len(prompts))]
    throughput = None
    if batch_size is not None and batch_size > 1:
        batches = [list(range(s, min(s + batch_size, len(prompts)))) for s in range(0, len(prompts), batch_size)]
        generate(batches[0])                                   # warm-up at the batched shapes
        synchronize()
        start = clock()
        for batch in batches:
            generate(batch)
        synchronize()
        seconds = clock() - start
        throughput = Throughput(batch_size=batch_size, images=len(prompts), seconds=seconds,
                                images_per_second=len(prompts) / seconds, seconds_per_image=seconds / len(prompts))
    return LatencyResult(device=device_name(device), device_type=device.type, precision=precision_name(dtype),
                         scheduler=type(pipe.scheduler).__name__, steps=steps, guidance_scale=guidance_scale,
                         resolution=resolution, warmup=warmup, prompts=len(prompts),
                         seconds_per_image_mean=float(np.mean(times)), seconds_per_image_std=population_std(times),
                         times=times, warmup_times=warmup_times, throughput=throughput)
