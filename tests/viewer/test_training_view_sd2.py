"""The sample page's training view takes its resolution and map sides from the run or the model it is
given (here the tiny SD2 layouts: "v" at 48 px with maps 3/6/12, "base" at 32 px with maps 2/4/8), not
from SD1.4's 512 px and 8-64."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tokencompose.schemas.training import TrainConfig
from tokencompose.viewer.app import create_app

from tests.support.sd2_models import SD2_RESOLUTION, sd2_models, sd2_resolutions

assert sd2_models  # a fixture, used by name below

KEY = "000000000001"  # the training photos' cat: "a cat to the left of a cup", both masked


def sides(variant: str) -> list[int]:
    return sorted(set(sd2_resolutions(variant).values()))


def page_geometry(shards, folder) -> tuple[str, list[tuple[str, int]], TestClient]:
    client = TestClient(create_app(shards, tokenizer_dir=folder))
    html = client.get(f"/sample/{KEY}").text
    shown = [(noun, int(side)) for noun, side in
             re.findall(r'<img class="res-mask" data-noun="(\d)" data-resolution="(\d+)"', html)]
    return html, shown, client


@pytest.mark.parametrize("variant", ["v", "base"])
def test_a_run_folder_shows_its_models_resolutions(sd2_models, shard_dir, tmp_path, variant):
    from tokencompose.tasks.training.trainer import Trainer

    config = TrainConfig(pretrained_model=sd2_models / variant, shards=[str(shard_dir / "shard-*.tar")],
                         output_dir=tmp_path / "run", num_workers=0, export=False, mask_antialias=True)
    Trainer(config)  # the run folder as training leaves it: train_config.json with the resolved resolution
    side = SD2_RESOLUTION[variant]
    html, shown, client = page_geometry(shard_dir.parent, tmp_path / "run")
    assert f"{side} px centre crop; masks at {', '.join(map(str, sides(variant)))}." in html
    assert shown == [(noun, r) for noun in "01" for r in sides(variant)]
    largest = max(sides(variant))
    mask = client.get(f"/sample/{KEY}/training/mask/0/{largest}.png")
    assert mask.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(mask.content))).shape == (largest, largest)
    assert client.get(f"/sample/{KEY}/training/mask/0/64.png").status_code == 404   # SD1.4's side: not trained
    with Image.open(io.BytesIO(client.get(f"/sample/{KEY}/training/crop.jpg").content)) as crop:
        assert crop.size == (side, side)
    assert client.app.state.viewer.training.antialias  # the run's mask resize, too
    # SD2's tokenizer pads with "!" after the end token
    assert re.search(r"Positions \d+–76: padding", html)


def test_a_model_folder_shows_its_own_resolution_and_a_bare_tokenizer_keeps_sd14s(sd2_models, shard_dir):
    html, shown, _ = page_geometry(shard_dir.parent, sd2_models / "base")
    assert f"{SD2_RESOLUTION['base']} px centre crop; masks at {', '.join(map(str, sides('base')))}." in html
    html, shown, _ = page_geometry(shard_dir.parent, sd2_models / "base" / "tokenizer")
    assert "512 px centre crop; masks at 8, 16, 32, 64." in html
