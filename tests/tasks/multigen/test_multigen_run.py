"""The whole MultiGen run without Prefect: two models in one report, resume, refusals before work."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokencompose.tasks.multigen.run import EvaluationError, evaluate_models, preflight


def tree_bytes(root: Path, pattern: str) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob(pattern))}


@pytest.mark.slow
def test_two_models_in_one_report(make_eval_config, tiny_sd, tuned_sd):
    config = make_eval_config([tiny_sd, tuned_sd], labels=["sd", "tuned"])
    report = evaluate_models(config)
    assert [m.label for m in report.models] == ["sd", "tuned"]
    for model in report.models:
        assert (model.images, model.nan, model.rounds) == (8, 0, 2)
        assert set(model.mg) == {"MG1", "MG2", "MG3", "MG4", "MG5"} and len(model.mg["MG2"]["rounds"]) == 2
        assert (config.out_dir / model.grid).exists() and len(model.attention) == 1
    assert report.models[0].model_id != report.models[1].model_id
    (comparison,) = report.comparisons
    assert comparison.baseline == "sd" and comparison.model == "tuned" and comparison.mg["MG3"]["prompts"] == 4
    for k, values in comparison.mg.items():
        diff = report.models[1].mg[k]["mean"] - report.models[0].mg[k]["mean"]
        assert values["diff"] == pytest.approx(diff) and values["low"] <= values["diff"] <= values["high"]
    markdown = report.markdown_path.read_text()
    assert "| sd | 8 | 0 |" in markdown and "| tuned | 8 | 0 |" in markdown and "## Difference to sd" in markdown
    assert "![sd samples](sd/grid.png)" in markdown and "sd/attention/prompt-000000/attention.png" in markdown
    saved = json.loads(report.json_path.read_text())
    assert saved["models"][1]["mg"] == report.models[1].mg and saved["benchmark"]["prompts"] == 4
    # every image carries the prompt, categories, seed and model in its JSON
    shard = next((config.out_dir / "tuned" / "images").glob("*.tar"))
    from tokencompose.tasks.multigen.generation import read_shard

    meta = read_shard(shard)[0][0]
    assert meta["model"]["label"] == "tuned" and meta["seed"] == 0 and len(meta["categories"]) == 5
    # a second run finds everything done and gives the same report
    again = evaluate_models(config)
    assert again.models == report.models and again.comparisons == report.comparisons


def test_nan_images_are_counted_in_the_report(make_eval_config, nan_sd):
    report = evaluate_models(make_eval_config([nan_sd], prompts=2, report={"attention_prompts": 0}))
    (model,) = report.models
    assert (model.images, model.scored, model.nan) == (4, 0, 4)
    assert "| nan-sd | 4 | 4 |" in report.markdown and "NaNs are not scored" in report.markdown


def test_problems_stop_the_run_before_any_work(make_eval_config, tiny_owl, tmp_path):
    bad_prompts = tmp_path / "bad.json"
    bad_prompts.write_text(json.dumps([{"unique_id": 0, "obj_1_attributes": ["cat"], "text": "a photo of a cat."}]))
    config = make_eval_config([tiny_owl, tmp_path / "absent"], benchmark={"file": str(bad_prompts)},
                              detection={"detector": str(tmp_path / "no-owl")},
                              models={"models_dir": str(tmp_path / "models")})
    with pytest.raises(EvaluationError) as error:
        evaluate_models(config)
    text = str(error.value)
    assert f"{bad_prompts}: row 0: 1 categories" in text
    assert "tiny-owlv2: not a diffusers pipeline folder (no model_index.json)" in text
    assert "absent: no such folder (a local path" in text and "no-owl: no such folder (a local path" in text
    assert not config.out_dir.exists()


def test_models_are_found_by_name_in_the_models_folder(make_eval_config, tiny_sd, tiny_owl, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_sd, models / "CompVis" / "stable-diffusion-v1-4")
    shutil.copytree(tiny_owl, models / "google" / "owlv2-large-patch14-ensemble")
    config = make_eval_config(["CompVis/stable-diffusion-v1-4"],
                              detection={"detector": "google/owlv2-large-patch14-ensemble"},
                              models={"models_dir": str(models), "use_hf_cache": False})
    plan = preflight(config)
    assert plan.runs[0].path == models / "CompVis" / "stable-diffusion-v1-4" and plan.runs[0].label == "stable-diffusion-v1-4"
    assert plan.detector == models / "google" / "owlv2-large-patch14-ensemble"
    shutil.rmtree(models / "CompVis" / "stable-diffusion-v1-4" / "unet")
    with pytest.raises(EvaluationError, match="unet/config.json"):
        preflight(config)


@pytest.mark.slow
def test_a_folder_made_with_other_settings_is_refused(make_eval_config):
    evaluate_models(make_eval_config(prompts=2, report={"attention_prompts": 0, "grid_prompts": 0}))
    with pytest.raises(EvaluationError, match="other generation"):
        preflight(make_eval_config(prompts=2, generation={"steps": 3}))
    # more prompts of the same set reuse the finished shards (quick mode grows into a full run)
    plan = preflight(make_eval_config(prompts=4))
    assert len(plan.shards) == 2


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_bytes(make_eval_config, tmp_path):
    """A real process killed with SIGKILL after its first shard, then resumed, equals an uninterrupted run."""
    # 8 one-prompt shards of 4 steps: seconds of work left after the first shard, so the kill lands mid-run
    fast = dict(benchmark={"limit": 8}, generation={"prompts_per_shard": 1, "images_per_prompt": 2, "steps": 4},
                report={"attention_prompts": 0, "grid_prompts": 1})
    whole = make_eval_config(out_dir=str(tmp_path / "whole"), **fast)
    evaluate_models(whole)
    killed = make_eval_config(out_dir=str(tmp_path / "killed"), **fast)
    settings = tmp_path / "killed.json"
    settings.write_text(killed.to_json())
    command = [sys.executable, "-m", "tokencompose", "evaluate", "--no-prefect", "--config", str(settings)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    images = tmp_path / "killed" / Path(whole.pipelines[0]).name / "images"
    deadline = time.monotonic() + 300
    while not list(images.glob("prompts-*.tar")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    done = sorted(p.name for p in images.glob("prompts-*.tar"))
    assert 1 <= len(done) < 8, done           # killed after the first shard, before the last
    assert not (tmp_path / "killed" / "report.md").exists()
    evaluate_models(killed)                   # resume in this process
    name = Path(whole.pipelines[0]).name
    for pattern in ("images/*.tar", "detections-*/*.jsonl"):
        assert tree_bytes(tmp_path / "whole" / name, pattern) == tree_bytes(tmp_path / "killed" / name, pattern)
    assert (tmp_path / "whole" / "report.json").read_text() == (tmp_path / "killed" / "report.json").read_text() \
        .replace(str(tmp_path / "killed"), str(tmp_path / "whole"))


@pytest.mark.slow
def test_two_processes_split_the_shards_and_equal_one(make_eval_config, tmp_path):
    """torchrun with 2 CPU processes (gloo via accelerate): each rank takes every other shard, rank 0
    reports after both finish, and the bytes equal a single process's."""
    fast = dict(benchmark={"limit": 4}, generation={"prompts_per_shard": 1},
                report={"attention_prompts": 0, "grid_prompts": 1})
    single = make_eval_config(out_dir=str(tmp_path / "single"), **fast)
    evaluate_models(single)
    double = make_eval_config(out_dir=str(tmp_path / "double"), **fast)
    settings = tmp_path / "double.json"
    settings.write_text(double.to_json())
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
               "-m", "tokencompose", "evaluate", "--no-prefect", "--config", str(settings)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 of 2" in result.stderr and "rank 0 of 2" in result.stderr
    name = Path(single.pipelines[0]).name
    for pattern in ("images/*.tar", "detections-*/*.jsonl"):
        one = tree_bytes(tmp_path / "single" / name, pattern)
        assert len(one) == 4 and one == tree_bytes(tmp_path / "double" / name, pattern)
    assert json.loads((tmp_path / "double" / "report.json").read_text())["models"][0]["mg"] == \
        json.loads((tmp_path / "single" / "report.json").read_text())["models"][0]["mg"]
