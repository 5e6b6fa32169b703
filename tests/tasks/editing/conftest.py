"""The editing tests' shared pieces: the tiny random pipeline loaded once, and a photo with a box mask."""
from __future__ import annotations

import numpy as np
import pytest

SIDE = 32  # the tiny VAE's factor is 4: an 8 x 8 latent


@pytest.fixture(scope="session")
def tiny_pipe(tiny_sd):
    import torch

    from tokencompose.tasks.multigen.generation import load_pipeline

    return load_pipeline(tiny_sd, "cpu", torch.float32)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.chelsea()).resize((SIDE, SIDE), Image.Resampling.BICUBIC))


@pytest.fixture(scope="session")
def box_mask() -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    mask[8:24, 4:20] = True      # latent cells 2..5 x 1..4 exactly
    return mask


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """The tiny models gain nothing from intra-op threads on the shared CPUs (see tests/conftest.py)."""
    yield
