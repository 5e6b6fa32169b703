"""`tokencompose evaluate`: flags generated from EvaluateConfig, the quick mode, clear errors."""
from __future__ import annotations

import json

from tokencompose.cli import parser_for


def run(argv):
    args = parser_for(argv[0]).parse_args(argv)
    return args.handler(args)


def test_flags_and_shortcuts_override_the_settings_file(tmp_path, capsys):
    settings = tmp_path / "eval.json"
    settings.write_text(json.dumps({"out_dir": "from-file", "generation": {"steps": 20, "batch_size": 8}}))
    code = run(["evaluate", "--config", str(settings), "--model", "sd14", "--model", "tuned", "--prompts", "50",
                "--images", "2", "--prompt-set", "ade20k", "--generation.batch-size", "32", "--print-config"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pipelines"] == ["sd14", "tuned"] and printed["out_dir"] == "from-file"
    assert printed["benchmark"] == {**printed["benchmark"], "limit": 50, "name": "ade20k"}
    assert printed["generation"]["images_per_prompt"] == 2 and printed["generation"]["steps"] == 20
    assert printed["generation"]["batch_size"] == 32
    # the paper's protocol is the default
    assert (printed["generation"]["guidance_scale"], printed["generation"]["scheduler"]) == (7.5, "pndm")
    assert printed["detection"]["threshold"] == 0.1 and printed["detection"]["query_template"] == "a photo of a {category}"


def test_an_invalid_configuration_is_explained(capsys):
    assert run(["evaluate", "--out", "x", "--prompt-set", "lvis", "--generation.resolution", "500"]) == 2
    error = capsys.readouterr().err
    assert "benchmark.name" in error and "generation.resolution" in error and "multiple of 8" in error
    assert run(["evaluate", "--out", "x", "--model", "a/sd", "--model", "b/sd"]) == 2
    assert "model labels must differ" in capsys.readouterr().err


def test_a_bad_prompt_file_stops_with_file_and_row(tmp_path, capsys):
    prompts = tmp_path / "mine.json"
    rows = [{"unique_id": 0, "num_objects": 5, **{f"obj_{k}_attributes": [c] for k, c in
                                                 enumerate(["cat", "dog", "cup", "car", "dog"], 1)},
             "text": "a photo of a cat, a dog, a cup, a car, and a dog."}]
    prompts.write_text(json.dumps(rows))
    code = run(["evaluate", "--out", str(tmp_path / "out"), "--prompt-file", str(prompts), "--no-prefect",
                "--models-dir", str(tmp_path / "models")])
    assert code == 2
    error = capsys.readouterr().err
    assert f"{prompts}: row 0: repeated categories ['dog']" in error
    assert "CompVis/stable-diffusion-v1-4" in error and "google/owlv2-large-patch14-ensemble" in error
    assert not (tmp_path / "out").exists()


def test_models_lists_the_evaluation_folders(tmp_path, capsys):
    from tokencompose.tasks.models.weights import STABLE_DIFFUSION_MEMBERS

    assert run(["models", "--models-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.lower().splitlines()
    for name in ("compvis/stable-diffusion-v1-4", "google/owlv2-large-patch14-ensemble"):
        assert any(name in line and "missing" in line for line in lines), name
    # a complete diffusers layout under the hub name is found
    for options in STABLE_DIFFUSION_MEMBERS:
        path = tmp_path / "CompVis" / "stable-diffusion-v1-4" / options[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    assert run(["models", "--models-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.lower().splitlines()
    assert any("compvis/stable-diffusion-v1-4" in line and "present" in line for line in lines)
    assert any("google/owlv2-large-patch14-ensemble" in line and "missing" in line for line in lines)
