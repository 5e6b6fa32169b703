"""Cross-attention grids: one map per noun, from the project's capture, for MultiGen and free prompts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tokencompose.cli import parser_for
from tokencompose.tasks.multigen import attention_maps as am
from tokencompose.tasks.multigen.generation import initial_latents, load_pipeline
from tokencompose.tasks.multigen.prompts import bundled


def test_one_map_per_category_averaged_over_steps_and_layers(tiny_sd, tmp_path):
    pipe = load_pipeline(tiny_sd, "cpu", torch.float32)
    prompt = bundled("coco")[2]          # elephant, giraffe, mouse, sports ball, tennis racket
    spans = list(zip(prompt.categories, prompt.spans()))
    result = am.capture_maps(pipe, prompt.text, spans, initial_latents(0, prompt.id, 0, (4, 8, 8))[None], steps=2,
                             guidance_scale=7.5, resolution=32)
    assert result.nouns == list(prompt.categories) and result.maps.shape == (5, 8, 8)
    assert [len(t) for t in result.tokens][3:] == [2, 2]      # "sports ball", "tennis racket": two tokens each
    assert set(result.layers) == set(am.cross_attention_layers(pipe.unet).values())
    assert all(layer.startswith(("mid_block", "up_blocks")) for layer in result.layers)
    # maps are attention probabilities: each lies in (0, 1), and the five differ
    assert (result.maps > 0).all() and (result.maps < 1).all()
    assert len({m.tobytes() for m in result.maps}) == 5
    grid = am.save_grid(result, tmp_path, prompt.text)
    info = json.loads((tmp_path / am.INFO_FILE).read_text())
    assert info["nouns"] == list(prompt.categories) and np.load(tmp_path / am.MAPS_FILE).shape[0] == 5
    width, height = Image.open(grid).size
    assert width == pytest.approx(6 * 2.4 * 80, abs=2)      # the image and one panel per noun
    # the fused attention is back afterwards
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}


def test_the_attention_command_finds_nouns_with_spacy(tiny_sd, tmp_path, capsys):
    out = tmp_path / "free"
    args = parser_for("attention").parse_args(
        ["attention", "--model", str(tiny_sd), "--prompt", "a photo of a dog chasing a red ball near a teddy bear",
         "--out", str(out), "--steps", "2", "--resolution", "32", "--models.device", "cpu"])
    assert args.handler(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["nouns"] == ["dog", "ball", "teddy bear"]      # "photo" is on the stop-list
    assert np.load(out / am.MAPS_FILE).shape[0] == 3
    assert (out / am.IMAGE_FILE).exists() and (out / am.GRID_FILE).exists()


def test_named_nouns_must_occur_in_the_prompt(tiny_sd, tmp_path, capsys):
    base = ["attention", "--model", str(tiny_sd), "--prompt", "a cat on a mat", "--out", str(tmp_path / "n"),
            "--steps", "1", "--resolution", "32", "--models.device", "cpu"]
    args = parser_for("attention").parse_args(base + ["--noun", "mat"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["nouns"] == ["mat"]
    args = parser_for("attention").parse_args(base + ["--noun", "dog"])
    assert args.handler(args) == 2
    assert "noun 'dog' does not occur" in capsys.readouterr().err
    args = parser_for("attention").parse_args(["attention", "--model", str(tmp_path), "--prompt", "a cat"])
    assert args.handler(args) == 2
    assert "not a diffusers pipeline folder" in capsys.readouterr().err
