"""The edit-images flow under a real Prefect API, with the tiny random model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokencompose.flows.edit import FLOW_NAME, edit_images
from tokencompose.schemas.editing import EditConfig

pytestmark = pytest.mark.server


def test_the_flow_edits_and_keeps_the_background(prefect_api, one_thread, tiny_sd, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    config = EditConfig.model_validate({
        "model": str(tiny_sd), "image": str(tmp_path / "src.png"), "prompt": "a red cup",
        "mask": {"file": str(tmp_path / "mask.png")}, "out_dir": str(tmp_path / "edit"),
        "sampler": {"steps": 1, "strength": 1.0, "resolution": 32, "background": "paste"}, "models": {"device": "cpu"}})
    state = edit_images(config=config, return_state=True)
    assert state.is_completed() and edit_images.name == FLOW_NAME
    out = Path(state.result())
    result, source = (np.asarray(Image.open(out / f"{name}.png")) for name in ("result", "source"))
    kept = mask == 0
    assert np.array_equal(result[kept], source[kept]) and not np.array_equal(result[~kept], source[~kept])
