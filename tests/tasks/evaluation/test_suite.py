"""The metrics beside MultiGen run through evaluate_models with random-weight models of every kind (tiny
SD, OWLv2 as VISOR's and MultiGen's detector, torch-fidelity's Inception, open_clip ViT-S-32, GPT-2):
every metric lands in metrics.json and the report, a second run reuses every file, a changed set gets
its own folder, and a configuration problem stops the run before any work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokencompose.data import DATA_DIR
from tokencompose.schemas.evaluation import EvaluateConfig
from tokencompose.tasks.evaluation.toy import save_random_clip, save_random_gpt2, save_random_inception
from tokencompose.tasks.evaluation.visor import coco_categories
from tokencompose.tasks.multigen.plan import EvaluationError, preflight
from tokencompose.tasks.multigen.run import evaluate_models


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("metric-models")
    return {"gpt2": save_random_gpt2(root / "gpt2", coco_categories()),
            "inception": save_random_inception(root / "inception.pth"),
            "clip": save_random_clip(root / "clip-vit-s-32.pt")}


@pytest.fixture(scope="module")
def real_set(tmp_path_factory) -> dict:
    """Four bundled COCO photos with a JSON Lines captions file (a fifth caption names a missing image)."""
    folder = tmp_path_factory.mktemp("real")
    images = sorted((DATA_DIR / "sample" / "images").glob("*.jpg"))[:4]
    lines = [{"image": p.name, "caption": f"a photo number {i} of the sample"} for i, p in enumerate(images)]
    lines.append({"image": "missing.jpg", "caption": "an image that is not there"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"name": "coco", "images": str(DATA_DIR / "sample" / "images"), "captions": str(folder / "captions.jsonl"),
            "limit": 4}


def metrics_config(models, real, tiny_owl, shard_dir, tmp_path) -> dict:
    return {"visor": {"enabled": True, "limit": 3, "images_per_prompt": 2, "detector": str(tiny_owl)},
            "optigen": {"enabled": True, "language_model": str(models["gpt2"]), "count": 2},
            "fid": {"real": [real], "inception": str(models["inception"]), "cache_dir": str(tmp_path / "fid-cache"),
                    "layer": "64"},
            "clip_score": {"enabled": True, "model": "ViT-S-32", "pretrained": str(models["clip"])},
            "latency": {"enabled": True, "prompts": 2, "warmup": 1, "batch_size": 2},
            "grounding": {"shards": [str(shard_dir / "shard-*.tar")], "timesteps": [100, 400], "max_samples": 2,
                          "protocol": "both", "daam_steps": 2, "inner_steps": 1}}


@pytest.mark.slow
def test_every_metric_runs_beside_multigen_and_resumes(make_eval_config, tiny_sd, tuned_sd, tiny_owl, metric_models,
                                                      real_set, shard_dir, tmp_path):
    config = make_eval_config([tiny_sd, tuned_sd], prompts=2,
                              metrics=metrics_config(metric_models, real_set, tiny_owl, shard_dir, tmp_path))
    report = evaluate_models(config)
    for model in report.models:
        m = model.metrics
        assert m.visor["images"] == 3 * 2 and 0 <= m.visor["OA"] <= 100 and len(m.visor["per_prompt"]) == 3
        assert m.optigen["level"] == "MG2" and m.optigen["prompts"] == 2 and m.optigen["images"] == 2 * 2
        assert m.fid["coco"]["generated_images"] == 4 and m.fid["coco"]["real_images"] == 4
        assert m.fid["coco"]["fid"] >= 0
        assert set(m.clip_score) == {"coco"} and len(m.clip_score["coco"]["per_prompt"]) == 4
        assert m.latency["prompts"] == 2 and m.latency["throughput"]["batch_size"] == 2
        assert m.grounding["protocol"] == "fast" and m.grounding["images"] == 2 and 0 <= m.grounding["miou"] <= 1
        assert m.grounding_daam["protocol"] == "daam" and m.grounding_daam["daam_steps"] == 2
    assert report.models[0].metrics.fid["coco"]["real_cache_hit"] is False
    assert report.models[1].metrics.fid["coco"]["real_cache_hit"] is True      # real statistics computed once
    # the two models were judged on the same prompts: the comparison has every metric with its interval
    differences = report.comparisons[0].metrics
    assert {"OA", "VISOR_uncond", "OptiGen", "CLIP score (coco)", "FID (coco)", "latency", "mIoU",
            "mIoU (DAAM)"} <= set(differences)
    assert differences["OA"]["prompts"] == 3 and differences["CLIP score (coco)"]["prompts"] == 4
    assert differences["FID (coco)"]["diff"] == pytest.approx(report.models[1].metrics.fid["coco"]["fid"]
                                                              - report.models[0].metrics.fid["coco"]["fid"])
    markdown = report.markdown_path.read_text()
    assert "## Beside the paper's Table 1" in markdown and "| paper: TokenCompose | 52.15 |" in markdown
    saved = json.loads(report.json_path.read_text())
    assert saved["models"][1]["metrics"]["optigen"]["per_prompt"] == report.models[1].metrics.optigen["per_prompt"]

    # the same run again: every image, detection, latency and grounding file is reused, figures unchanged
    out = Path(config.out_dir)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".tar", ".jsonl")
             or p.name in ("latency.json", "grounding.json", "grounding-daam.json", "optigen-selection.json")}
    said: list[str] = []
    again = evaluate_models(config, progress=said.append)
    assert {p: p.stat().st_mtime_ns for p in files} == files
    for before, after in zip(report.models, again.models):
        assert after.metrics.latency == before.metrics.latency
        assert after.metrics.visor == before.metrics.visor and after.metrics.optigen == before.metrics.optigen
        assert after.metrics.fid["coco"]["fid"] == before.metrics.fid["coco"]["fid"]
        assert after.metrics.clip_score == before.metrics.clip_score
    assert not [line for line in said if "generation" in line and "'shards_done': 0" not in line], said
    assert not [line for line in said if "metric_images" in line], said     # no pipeline was loaded


@pytest.mark.slow
def test_a_changed_set_gets_its_own_folder(make_eval_config, tiny_sd, tiny_owl, tmp_path):
    def visor_folders(limit: int) -> list[str]:
        config = make_eval_config([tiny_sd], prompts=1, metrics={"visor": {"enabled": True, "limit": limit,
                                                                           "images_per_prompt": 1,
                                                                           "detector": str(tiny_owl)}})
        evaluate_models(config)
        return sorted(p.name for p in (Path(config.out_dir) / tiny_sd.name).glob("visor-*"))

    first = visor_folders(2)
    assert len(first) == 1
    both = visor_folders(3)
    assert len(both) == 2 and first[0] in both


def test_metric_configuration_problems_stop_before_any_work(make_eval_config, tiny_sd, tmp_path):
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"image": "a.jpg", "caption": "x"}\nnot json\n')
    config = make_eval_config([tiny_sd], prompts=1, metrics={
        "visor": {"enabled": True, "detector": str(tmp_path / "no-owl")},
        "optigen": {"enabled": True, "language_model": str(tiny_sd)},
        "fid": {"real": [{"name": "coco", "images": str(tmp_path), "captions": str(captions)}],
                "inception": str(tmp_path / "none.pth")},
        "clip_score": {"enabled": True, "model": "ViT-S-32", "pretrained": str(tmp_path / "none.pt")},
        "grounding": {"shards": [str(tmp_path / "nothing-{0..3}.tar")]}})
    with pytest.raises(EvaluationError) as raised:
        preflight(config)
    message = str(raised.value)
    for expected in ("visor detector:", "no-owl: no such folder (a local path", "optigen language model:", "fid set coco:",
                     "captions.jsonl: line 2: not JSON", "fid inception:", "none.pth does not exist",
                     "clip score:", "grounding: no shard matches"):
        assert expected in message, (expected, message)
    assert not (Path(config.out_dir)).exists()


def test_real_set_names_must_differ_and_be_folder_names():
    real = {"name": "coco", "images": "x", "captions": "y.json"}
    with pytest.raises(ValueError, match="names must differ"):
        EvaluateConfig.model_validate({"out_dir": "o", "metrics": {"fid": {"real": [real, real]}}})
    with pytest.raises(ValueError, match="used as a folder name"):
        EvaluateConfig.model_validate({"out_dir": "o", "metrics": {"fid": {"real": [{**real, "name": "../x"}]}}})
