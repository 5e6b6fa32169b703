"""Fixtures of the evaluation tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_pipe(tiny_sd):
    """The tiny random Stable Diffusion pipeline, fp32 on the CPU, loaded once per module."""
    import torch

    from tokencompose.tasks.multigen.generation import load_pipeline

    return load_pipeline(tiny_sd, "cpu", torch.float32)
