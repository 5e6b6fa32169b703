"""Latency on the tiny random SD with a few steps: positive, finite figures with the device and precision
recorded; with a scripted clock, the warm-up calls are excluded, the std is the population std of the
recorded times and the throughput is images over the batched run's time; pipeline calls are counted."""
from __future__ import annotations

import math

import pytest
import torch

from tokencompose.tasks.evaluation.latency import cpu_name, measure_latency, population_std, precision_name

PROMPTS = ["a cat and a dog", "a rocket", "a cup on a table", "two horses", "a pizza", "an astronaut",
           "a red car", "a bird above a tree"]


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


class CountingPipeline:
    """The real pipeline, with each call's batch size recorded."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, **kwargs):
        self.calls.append(len(kwargs["prompt"]))
        assert kwargs["latents"].shape[0] == len(kwargs["prompt"])
        return self.pipe(**kwargs)


def scripted_clock(durations: list[float]):
    """A clock whose successive (start, stop) readings are ``durations`` apart, far apart between calls."""
    readings = []
    now = 1000.0
    for duration in durations:
        readings += [now, now + duration]
        now += 1000.0
    iterator = iter(readings)
    return lambda: next(iterator), readings


def test_real_clock_gives_positive_finite_figures(tiny_pipe):
    from tests.support.training_kit import RESOLUTION

    counted = CountingPipeline(tiny_pipe)
    result = measure_latency(counted, PROMPTS[:3], steps=2, resolution=RESOLUTION, warmup=1, batch_size=2)
    assert counted.calls == [1, 1, 1, 1, 2, 2, 1]      # 1 warm-up, 3 timed, the batched warm-up, 2 batches
    assert len(result.times) == 3 and len(result.warmup_times) == 1
    for value in [*result.times, result.seconds_per_image_mean, result.throughput.seconds]:
        assert math.isfinite(value) and value > 0
    assert math.isfinite(result.seconds_per_image_std) and result.seconds_per_image_std >= 0
    assert result.throughput.images == 3 and result.throughput.images_per_second > 0
    assert (result.device, result.device_type, result.precision) == (cpu_name(), "cpu", "fp32")
    assert result.scheduler == "PNDMScheduler" and result.steps == 2 and not result.paper_settings
    assert result.device and result.device != "unknown CPU"


def test_warmups_are_excluded_and_the_std_is_the_population_std(tiny_pipe):
    from tests.support.training_kit import RESOLUTION

    per_image = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]       # mean 5, population std 2 (sample std 2.14)
    clock, readings = scripted_clock([100.0, 100.0] + per_image + [12.0])
    counted = CountingPipeline(tiny_pipe)
    result = measure_latency(counted, PROMPTS, steps=1, resolution=RESOLUTION, warmup=2, batch_size=3, clock=clock)
    assert counted.calls == [1] * 10 + [3, 3, 3, 2]           # batched: one warm-up batch, then 3 + 3 + 2
    assert result.warmup_times == [100.0, 100.0]
    assert result.times == per_image
    assert result.seconds_per_image_mean == 5.0
    assert result.seconds_per_image_std == pytest.approx(2.0, abs=1e-12)
    assert population_std(per_image) == pytest.approx(2.0, abs=1e-12)
    assert result.throughput is not None
    assert (result.throughput.seconds, result.throughput.images) == (12.0, 8)
    assert result.throughput.images_per_second == pytest.approx(8 / 12)
    assert result.throughput.seconds_per_image == pytest.approx(1.5)
    assert (result.warmup, result.prompts) == (2, 8)


def test_batch_one_has_no_throughput_and_bad_settings_are_refused(tiny_pipe):
    clock, _ = scripted_clock([1.0, 3.0])
    result = measure_latency(tiny_pipe, PROMPTS[:2], steps=1, warmup=0, batch_size=None, clock=clock)
    assert result.throughput is None and result.times == [1.0, 3.0] and result.seconds_per_image_std == 1.0
    # no resolution given: the model's own (tiny_sd: 64 px), which the paper-settings flag reads
    assert result.resolution == 64 and not result.paper_settings
    with pytest.raises(ValueError, match="at least one prompt"):
        measure_latency(tiny_pipe, [], steps=1, resolution=64)
    with pytest.raises(ValueError, match="warmup"):
        measure_latency(tiny_pipe, PROMPTS[:1], steps=1, resolution=64, warmup=-1)
    with pytest.raises(ValueError, match="batch_size"):
        measure_latency(tiny_pipe, PROMPTS[:1], steps=1, resolution=64, batch_size=0)


def test_precision_names():
    assert [precision_name(d) for d in (torch.float32, torch.float16, torch.bfloat16)] == ["fp32", "fp16", "bf16"]
