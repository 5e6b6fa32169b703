"""`tokencompose edit` / `edit-bench`: flags from EditConfig and PieBenchConfig, an edit end to end on a tiny
random model, and one-line refusals of bad input."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tokencompose.cli import parser_for


def run(argv):
    args = parser_for(argv[0]).parse_args(argv)
    return args.handler(args)


def test_flags_resolve_into_the_configuration(capsys):
    code = run(["edit", "--model", "sd", "--image", "cat.jpg", "--mask-word", "cat", "--prompt", "a dog",
                "--sampler.strength", "1", "--attention-word", "dog", "--print-config"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mask"]["word"] == "cat" and printed["sampler"]["strength"] == 1.0
    assert printed["attention"]["words"] == ["dog"] and printed["sampler"]["background"] == "optimize_decoder"
    code = run(["edit-bench", "--root", "pie", "--model", "a", "--model", "b", "--clip-checkpoint", "c.pt",
                "--dino", "dino", "--limit", "3", "--print-config"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pipelines"] == ["a", "b"] and printed["lpips_net"] == "squeeze" and printed["limit"] == 3


def test_bad_configurations_are_refused_before_work(capsys):
    assert run(["edit", "--model", "sd", "--image", "a.png", "--prompt", "x"]) == 2
    assert "exactly one mask source" in capsys.readouterr().err
    assert run(["edit", "--model", "sd", "--image", "a.png", "--prompt", "x", "--mask-word", "a",
                "--sampler.strength", "1.5"]) == 2
    assert "strength" in capsys.readouterr().err


def test_an_edit_end_to_end_writes_result_mask_and_attention(tiny_sd, one_thread, tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    mask = np.zeros((24, 20), np.uint8)
    mask[6:18, 4:14] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")          # half the image's size: resized with a warning
    out = tmp_path / "edit"
    code = run(["edit", "--no-prefect", "--quiet", "--model", str(tiny_sd), "--image", str(tmp_path / "src.png"),
                "--mask-file", str(tmp_path / "mask.png"), "--prompt", "a hippopotamus", "--attention-word",
                "hippopotamus", "--sampler.steps", "2", "--sampler.strength", "1", "--sampler.resolution", "32",
                "--sampler.background", "paste", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "edit.json").read_text())
    assert info["attention_tokens"] == [[2, 3, 4]] and info["attention_steps"] == 2
    result, source = np.asarray(Image.open(out / "result.png")), np.asarray(Image.open(out / "source.png"))
    used = np.asarray(Image.open(out / "mask.png")) > 0
    assert used.shape == (32, 32) and 0 < used.mean() < 1
    assert np.array_equal(result[~used], source[~used])
    assert Image.open(out / "attention.png").size[0] > 0

    code = run(["edit", "--no-prefect", "--quiet", "--model", str(tiny_sd), "--image", str(tmp_path / "src.png"),
                "--mask-file", str(tmp_path / "mask.png"), "--prompt", "a cat", "--attention-word", "dog",
                "--device", "cpu", "--sampler.resolution", "32", "--out", str(out)])
    assert code == 2 and "word 'dog' is not in the prompt 'a cat'" in capsys.readouterr().err
    code = run(["edit", "--no-prefect", "--model", str(tiny_sd), "--image", str(tmp_path / "none.png"),
                "--mask-word", "cat", "--prompt", "a cat", "--device", "cpu", "--out", str(out)])
    assert code == 2 and "cannot read the image" in capsys.readouterr().err


def test_attention_steps_past_the_edit_are_refused_before_the_model_loads(tmp_path, capsys):
    code = run(["edit", "--no-prefect", "--model", str(tmp_path / "no-model"), "--image", "a.png", "--mask-word",
                "cat", "--prompt", "a cat", "--sampler.steps", "4", "--sampler.strength", "0.5",
                "--attention.steps", "0,2", "--out", str(tmp_path / "out")])
    assert code == 2 and "attention steps [2] are outside the edit's 2 denoising steps" in capsys.readouterr().err


def test_runner_flags_are_the_shared_runner_section(capsys):
    code = run(["edit", "--model", "sd", "--image", "a.png", "--mask-word", "cat", "--prompt", "a dog",
                "--dask-address", "tcp://head:8786", "--runner.gpus-per-task", "1", "--print-config"])
    assert code == 0
    runner = json.loads(capsys.readouterr().out)["runner"]
    assert (runner["kind"], runner["dask_address"], runner["gpus_per_task"]) == ("dask", "tcp://head:8786", 1)
    code = run(["edit-bench", "--root", "pie", "--model", "a", "--clip-checkpoint", "c.pt", "--dino", "dino",
                "--runner-kind", "ray", "--processes", "2", "--batches-per-task", "3", "--print-config"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["runner"]["kind"], printed["runner"]["processes"], printed["batches_per_task"]) == ("ray", 2, 3)
    assert run(["edit", "--model", "sd", "--image", "a.png", "--mask-word", "cat", "--prompt", "a dog",
                "--ray-address", "http://head:10001"]) == 2
    assert "runner.ray_address" in capsys.readouterr().err
