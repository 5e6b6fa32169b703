"""The side MultiGen (and the metrics beside it) generates at: each model's own (UNet sample_size x VAE
factor, read from its folder without weights) unless ``generation.resolution`` is set, resolved at preflight
and recorded resolved where reuse is decided (run.json) and in the report."""
from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

from tokencompose.tasks.multigen.generation import read_shard
from tokencompose.tasks.multigen.plan import RUN_FILE, EvaluationError, preflight, run_record
from tokencompose.tasks.multigen.report import generated_sides, sides_text
from tokencompose.tasks.multigen.run import generate_model

from tests.support.sd2_models import SD2_RESOLUTION, sd2_models

assert sd2_models  # a fixture, used by name below

TINY_SD_RESOLUTION = 64          # tasks/training/toy.py "tiny": sample_size 16 x VAE factor 4
OWN = {"resolution": None}


def test_each_model_resolves_its_own_side_unless_one_is_set(make_eval_config, tiny_sd, sd2_models):
    models, labels = [tiny_sd, sd2_models / "v", sd2_models / "base"], ["sd1", "sd2-v", "sd2-base"]
    plan = preflight(make_eval_config(models, labels=labels, generation=OWN))
    sides = {run.label: run.resolution for run in plan.runs}
    assert sides == {"sd1": TINY_SD_RESOLUTION, "sd2-v": SD2_RESOLUTION["v"], "sd2-base": SD2_RESOLUTION["base"]}
    assert generated_sides(plan) == sides
    assert sides_text(sides) == f"sd1 64 px, sd2-v {SD2_RESOLUTION['v']} px, sd2-base {SD2_RESOLUTION['base']} px"
    for run in plan.runs:
        assert run_record(plan.config, run, "prompts")["generation"]["resolution"] == sides[run.label]
    explicit = preflight(make_eval_config(models, labels=labels, generation={"resolution": 32}))
    assert [run.resolution for run in explicit.runs] == [32, 32, 32] and generated_sides(explicit) == 32


def test_a_768_style_model_generates_at_its_own_side_and_never_reuses_another_sides_images(make_eval_config,
                                                                                             sd2_models):
    config = make_eval_config([sd2_models / "v"], prompts=1, generation={**OWN, "images_per_prompt": 1, "steps": 1},
                              report={"attention_prompts": 0})
    plan = preflight(config)
    (run,) = plan.runs
    generate_model(plan, run, "cpu")
    side = SD2_RESOLUTION["v"]
    (shard,) = sorted(run.images_dir.glob("*.tar"))
    (_, png), = read_shard(shard)
    assert Image.open(io.BytesIO(png)).size == (side, side)
    assert json.loads((run.folder / RUN_FILE).read_text())["generation"]["resolution"] == side
    # the same side asked for explicitly reuses the images; another side is refused before any work
    same = make_eval_config([sd2_models / "v"], prompts=1, generation={"resolution": side, "images_per_prompt": 1,
                                                                       "steps": 1}, report={"attention_prompts": 0})
    assert preflight(same).runs[0].resolution == side
    other = make_eval_config([sd2_models / "v"], prompts=1, generation={"resolution": 32, "images_per_prompt": 1,
                                                                        "steps": 1}, report={"attention_prompts": 0})
    with pytest.raises(EvaluationError, match="holds images made with other generation"):
        preflight(other)


def test_a_model_whose_config_lacks_its_side_is_named_unless_a_side_is_set(make_eval_config, tiny_sd, tmp_path):
    model = tmp_path / "no-sample-size"
    shutil.copytree(tiny_sd, model)
    unet_config = model / "unet" / "config.json"
    values = json.loads(unet_config.read_text())
    del values["sample_size"]
    unet_config.write_text(json.dumps(values))
    with pytest.raises(EvaluationError) as error:
        preflight(make_eval_config([model], generation=OWN))
    assert (f"model no-sample-size: {unet_config} has no 'sample_size', so the model's own resolution is unknown; "
            "set generation.resolution") in str(error.value)
    assert preflight(make_eval_config([model], generation={"resolution": 32})).runs[0].resolution == 32
