"""The weights registry: where files are looked for, the missing-weights messages, the CLI."""
from __future__ import annotations


from pathlib import Path

import re

import pytest

from tokencompose.cli import parser_for
from tokencompose.tasks.models import devices
from tokencompose.tasks.models import weights as models
from tokencompose.data import demo_settings
from tokencompose.schemas.config import BuildConfig
from tokencompose.tasks.models import backends


def config(tmp_path, profile="paper", **sections) -> BuildConfig:
    settings = {**demo_settings(), "output": {"out_dir": str(tmp_path / "out")}, "profile": profile,
                "models": {"models_dir": str(tmp_path / "models"), "hf_cache": str(tmp_path / "hub")}}
    for key, value in sections.items():
        settings[key] = {**settings.get(key, {}), **value}
    return BuildConfig.model_validate(settings)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_every_missing_file_is_named_with_places_and_origin(tmp_path):
    problems = models.missing_weights(config(tmp_path))
    assert len(problems) == 5
    text = "\n".join(problems)
    for name in ("open_clip_model.safetensors", "flair/pos-english/pytorch_model.bin", "groundingdino_swint_ogc.pth",
                 "bert-base-uncased", "sam_hq_vit_h.pth"):
        assert name in text
    dino = next(p for p in problems if "groundingdino_swint_ogc.pth" in p)
    assert str(tmp_path / "models" / "groundingdino_swint_ogc.pth") in dino
    assert str(tmp_path / "hub" / "models--ShilongLiu--GroundingDINO") in dino
    assert "https://github.com/IDEA-Research/GroundingDINO/releases" in dino


def test_offline_profile_needs_no_weights(tmp_path):
    assert models.missing_weights(config(tmp_path, profile="offline")) == []


def test_preflight_lists_all_problems_before_any_work(tmp_path):
    from tokencompose.tasks.shards.output import ConfigurationError
    from tokencompose.tasks.shards.planning import plan

    cfg = config(tmp_path, profile="hybrid")
    problems = backends.preflight(cfg)
    assert len(problems) == 5 and all("missing" in p for p in problems)
    with pytest.raises(ConfigurationError) as error:
        plan(cfg)
    assert "sam_hq_vit_h.pth" in str(error.value) and "groundingdino_swint_ogc.pth" in str(error.value)
    assert not (tmp_path / "out").exists()


def hub_snapshot(hub: Path, repo: str, commit: str, main: bool = True) -> Path:
    """A snapshot folder in the Hugging Face cache layout; ``main`` makes refs/main name it."""
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    if main:
        touch(repo_dir / "refs" / "main").write_text(commit)
    return repo_dir / "snapshots" / commit


def test_models_folder_and_hf_cache_are_found(tmp_path):
    cfg = config(tmp_path, grounding={"sam_variant": "vit_b"})
    touch(tmp_path / "models" / "groundingdino_swint_ogc.pth")
    snapshot = hub_snapshot(tmp_path / "hub", "lkeab/hq-sam", "0123abcd")
    touch(snapshot / "sam_hq_vit_b.pth")
    bert = hub_snapshot(tmp_path / "hub", "google-bert/bert-base-uncased", "feed")
    for name in ("config.json", "vocab.txt"):
        touch(bert / name)
    assert any("bert-base-uncased" in p for p in models.missing_weights(cfg, ["grounded_sam"]))
    touch(bert / "model.safetensors")
    assert models.missing_weights(cfg, ["grounded_sam"]) == []
    assert models.locate(cfg, models.sam_hq_spec("vit_b")) == snapshot / "sam_hq_vit_b.pth"
    assert models.locate(cfg, models.text_encoder_spec()) == bert


def test_hf_cache_follows_refs_main_not_the_newest_snapshot(tmp_path):
    """refs/main names the snapshot to use; a newer snapshot left by another revision is not it."""
    import os

    cfg = config(tmp_path, grounding={"sam_variant": "vit_b"})
    hub = tmp_path / "hub"
    main = hub_snapshot(hub, "lkeab/hq-sam", "aaaa1111")
    touch(main / "sam_hq_vit_b.pth")
    other = hub_snapshot(hub, "lkeab/hq-sam", "bbbb2222", main=False)
    touch(other / "sam_hq_vit_b.pth")
    os.utime(main, (1_000_000, 1_000_000))           # refs/main's snapshot is the older one
    assert models.locate(cfg, models.sam_hq_spec("vit_b")) == main / "sam_hq_vit_b.pth"
    bert_main = hub_snapshot(hub, "google-bert/bert-base-uncased", "cafe")
    for name in ("config.json", "vocab.txt", "model.safetensors"):
        touch(bert_main / name)
        touch(hub_snapshot(hub, "google-bert/bert-base-uncased", "beef", main=False) / name)
    (hub / "models--google-bert--bert-base-uncased" / "refs" / "main").write_text("cafe")
    os.utime(bert_main, (1_000_000, 1_000_000))
    assert models.locate(cfg, models.text_encoder_spec()) == bert_main
    (bert_main / "model.safetensors").unlink()       # refs/main's folder incomplete: not found, never the other
    assert any("bert-base-uncased" in p for p in models.missing_weights(cfg, ["grounded_sam"]))


def test_clip_tag_resolves_to_hub_files_and_openai_checksum(tmp_path):
    spec = models.clip_spec("ViT-L-14-336", "openai")
    assert spec.candidates[0] == "timm/vit_large_patch14_clip_336.openai/open_clip_model.safetensors"
    assert dict(spec.checksums)["ViT-L-14-336px.pt"].startswith("3035c92b")
    touch(tmp_path / "models" / "open_clip" / "ViT-L-14-336px.pt")
    assert models.locate(config(tmp_path), spec).name == "ViT-L-14-336px.pt"
    unknown = models.missing_weights(config(tmp_path, captions={"clip_pretrained": "no-such-tag"}), ["clip"])
    assert len(unknown) == 1 and "no pretrained tag 'no-such-tag'" in unknown[0]


def test_explicit_paths_and_environment(tmp_path, monkeypatch):
    checkpoint = touch(tmp_path / "elsewhere" / "my_clip.pt")
    cfg = config(tmp_path, captions={"clip_pretrained": str(checkpoint)}, nouns={"flair_model": str(tmp_path / "nope.pt")})
    assert models.missing_weights(cfg, ["clip"]) == []
    flair_problem = models.missing_weights(cfg, ["flair"])
    assert len(flair_problem) == 1 and str(tmp_path / "nope.pt") in flair_problem[0]
    monkeypatch.setenv(models.ENV_MODELS_DIR, str(tmp_path / "from-env"))
    without = BuildConfig.model_validate({**demo_settings(), "output": {"out_dir": str(tmp_path / "o")}})
    assert models.models_dir(without) == tmp_path / "from-env"
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert models.hf_cache_dir(without) == tmp_path / "hf" / "hub"


def test_cli_lists_present_and_missing(tmp_path, capsys):
    touch(tmp_path / "models" / "sam_hq_vit_tiny.pth")
    parser = parser_for("models")
    args = parser.parse_args(["models", "--models-dir", str(tmp_path / "models"), "--profile", "paper"])
    assert args.handler(args) == 1
    out = capsys.readouterr().out
    needed, others = out.split("weights the paper profile needs:")[1].split("other weights tokencompose knows:")
    assert re.search(r"MISSING +sam_hq_vit_h\.pth ", needed) and "sam_hq_vit_tiny" not in needed
    assert re.search(r"present +sam_hq_vit_tiny\.pth +1 bytes at ", others)
    assert "5 weight file(s) this configuration needs are missing" in out
    assert all(len(line) < 200 for line in out.splitlines())          # a compact table, details only with -v
    args = parser.parse_args(["models", "--models-dir", str(tmp_path / "models"), "--profile", "paper", "-v"])
    assert args.handler(args) == 1
    assert "get it from" in capsys.readouterr().out
    args = parser.parse_args(["models", "--models-dir", str(tmp_path / "models")])
    assert args.handler(args) == 0


def test_device_rules():
    assert devices.resolve_device("cpu") == "cpu"
    assert not devices.uses_half("cpu", True) and devices.uses_half("cuda:0", True)
    with pytest.raises(ValueError):
        BuildConfig.model_validate({**demo_settings(), "output": {"out_dir": "x"}, "models": {"device": "gpu"}})


def test_the_bundled_open_clip_table_matches_open_clip():
    """clip_spec answers common model/tag pairs from data/open_clip_pretrained.json without importing
    open_clip (seconds); the table must say what open_clip itself says."""
    import json

    import open_clip

    from tokencompose.data import DATA_DIR
    from tokencompose.tasks.models.weights import known_clip_pretrained

    table = json.loads((DATA_DIR / "open_clip_pretrained.json").read_text())
    assert "ViT-L-14-336/openai" in table and "ViT-L-14/openai" in table
    for key, entry in table.items():
        model, tag = key.split("/")
        cfg = open_clip.get_pretrained_cfg(model, tag)
        assert entry == {"hf_hub": cfg.get("hf_hub", ""), "url": cfg.get("url", "")}, key
    assert known_clip_pretrained("ViT-L-14-336", "no-such-tag") is None
