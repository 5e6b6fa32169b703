"""Cross-attention maps on the Stable Diffusion 2.x layouts (tiny random folders): the image side is the
model's own unless one is asked for, and the maps have the model's latent side and cross-attention layers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tokencompose.cli import parser_for
from tokencompose.tasks.multigen import attention_maps as am
from tokencompose.tasks.multigen.generation import initial_latents, load_pipeline

from tests.support.sd2_models import SD2_LATENT, SD2_RESOLUTION, sd2_models

assert sd2_models  # a fixture, used by name below

# the middle block's and both attention decoder blocks' cross-attention (use_linear_projection: no conv in/out)
SD2_CROSS_ATTENTION = {"mid_block.attentions.0.transformer_blocks.0.attn2",
                       *(f"up_blocks.{b}.attentions.{i}.transformer_blocks.0.attn2" for b in (1, 2) for i in (0, 1))}


@pytest.mark.parametrize("variant", ["v", "base"])
def test_maps_at_the_models_resolution(sd2_models, variant):
    pipe = load_pipeline(sd2_models / variant, "cpu", torch.float32)
    assert am.native_resolution(pipe) == SD2_RESOLUTION[variant]
    side = SD2_LATENT[variant]
    prompt = "a cat to the left of a red cup"
    result = am.capture_maps(pipe, prompt, am.spans_of(prompt, ["cat", "cup"]),
                             initial_latents(0, 0, 0, (4, side, side))[None], steps=2, guidance_scale=7.5)
    assert result.image.shape == (SD2_RESOLUTION[variant], SD2_RESOLUTION[variant], 3)
    assert result.maps.shape == (2, side, side) and set(result.layers) == SD2_CROSS_ATTENTION
    assert (result.maps > 0).all() and (result.maps < 1).all() and not np.array_equal(*result.maps)


def test_the_attention_command_uses_the_models_resolution_unless_given(sd2_models, tmp_path, capsys):
    base = ["attention", "--model", str(sd2_models / "v"), "--prompt", "a cat on a mat", "--noun", "cat",
            "--steps", "1", "--models.device", "cpu"]
    for extra, side in (([], SD2_RESOLUTION["v"]), (["--resolution", "32"], 32)):
        out = tmp_path / f"at-{side}"
        args = parser_for("attention").parse_args(base + ["--out", str(out), *extra])
        assert args.handler(args) == 0
        json.loads(capsys.readouterr().out)
        assert Image.open(out / am.IMAGE_FILE).size == (side, side)
        assert np.load(out / am.MAPS_FILE).shape == (1, side // 4, side // 4)
