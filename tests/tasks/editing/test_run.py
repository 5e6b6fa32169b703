"""The editing jobs end to end on tiny random models: a PIE-Bench folder edited and scored into a report,
and an edit of a grounded shard's noun."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tokencompose.schemas.editing import EditConfig, PieBenchConfig
from tokencompose.tasks.editing import pie_bench
from tokencompose.tasks.editing.run import edit_image, run_pie_bench

FAST = {"steps": 1, "strength": 1.0, "resolution": 32, "background": "paste", "batch_size": 2}


@pytest.fixture
def local_weights(tmp_path, monkeypatch):
    """A random DINO-shaped ViT folder, a random open_clip checkpoint, and random SqueezeNet weights where
    torchvision looks for LPIPS' backbone (TORCH_HOME)."""
    import torch
    import torchvision
    from transformers import ViTConfig, ViTModel

    from tokencompose.tasks.evaluation.toy import save_random_clip

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), checkpoints / "squeezenet1_1-b8a52dc0.pth")
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       patch_size=16), add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    return {"clip_model": "ViT-S-32", "clip_checkpoint": str(save_random_clip(tmp_path / "clip.pt")),
            "dino": str(tmp_path / "dino")}


def write_pie_bench(root) -> None:
    rng = np.random.default_rng(0)
    (root / pie_bench.IMAGES_DIR / "0_random").mkdir(parents=True)
    entries = {}
    for index in range(2):
        key = f"00000000000{index}"
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(
            root / pie_bench.IMAGES_DIR / "0_random" / f"{key}.png")
        runs = [v for row in range(128, 384) for v in (512 * row + 128, 256)]
        entries[key] = {"image_path": f"0_random/{key}.png", "original_prompt": "a [cat] on a sofa",
                        "editing_prompt": "a [dog] on a sofa", "editing_type_id": "0", "mask": runs}
    (root / pie_bench.MAPPING_FILE).write_text(json.dumps(entries))


def test_pie_bench_edits_scores_and_reports_beside_the_seed_table(tiny_sd, local_weights, tmp_path):
    write_pie_bench(tmp_path / "pie")
    config = PieBenchConfig.model_validate({"root": str(tmp_path / "pie"), "pipelines": [str(tiny_sd)],
                                            "sampler": FAST, "out_dir": str(tmp_path / "out"),
                                            "models": {"device": "cpu"}, **local_weights})
    report = run_pie_bench(config)
    table = report.read_text()
    assert "(seed report)" in table and "| tiny-sd-" in table
    scores = json.loads((tmp_path / "out" / "report.json").read_text())
    (label, items), = scores["items"].items()
    assert [i["key"] for i in items] == ["000000000000", "000000000001"]
    for item in items:
        assert set(pie_bench.METRICS) <= set(item) and item["structure_distance"] > 0
        assert 0 <= item["clip_edited"] and 0 < item["ssim"] <= 1
    assert (tmp_path / "out" / label / "000000000001.png").is_file()


def test_pie_bench_needs_its_local_weights(tiny_sd, tmp_path, monkeypatch):
    write_pie_bench(tmp_path / "pie")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    (tmp_path / "dino").mkdir()
    (tmp_path / "dino" / "config.json").write_text("{}")
    config = PieBenchConfig.model_validate({"root": str(tmp_path / "pie"), "pipelines": [str(tiny_sd)],
                                            "clip_checkpoint": str(tmp_path / "c.pt"), "dino": str(tmp_path / "dino")})
    with pytest.raises(ValueError, match="lpips: torchvision's squeezenet1_1 weights are not in"):
        run_pie_bench(config)


def test_an_edit_of_a_grounded_shard_noun(tiny_sd, shard_dir, tmp_path):
    from tokencompose.tasks.training.samples import read_shard

    shard = sorted(shard_dir.glob("shard-*.tar"))[0]
    key = next(read_shard(str(shard)))["__key__"]
    config = EditConfig.model_validate({"model": str(tiny_sd), "prompt": "a dog",
                                        "mask": {"shard": str(shard), "sample_key": key, "noun": "cat"},
                                        "sampler": FAST, "out_dir": str(tmp_path / "edit"), "models": {"device": "cpu"}})
    out = edit_image(config)
    info = json.loads((out / "edit.json").read_text())
    assert info["mask_from"].endswith("noun 'cat'") and 0 < info["mask_pixels"] < 32 * 32
    result, source, mask = (np.asarray(Image.open(out / f"{n}.png")) for n in ("result", "source", "mask"))
    assert np.array_equal(result[mask == 0], source[mask == 0])


def test_a_registry_entry_names_the_model(tiny_sd, tmp_path):
    from tokencompose.schemas.registry import RegistryEntry
    from tokencompose.tasks.editing.run import resolve_model
    from tokencompose.tasks.registry.store import ModelRegistry

    registry = ModelRegistry(tmp_path / "registry")
    common = dict(base_model=tmp_path / "sd", dataset_dir=tmp_path / "data", dataset_version=1,
                  train_config_hash="abc", steps=10, reason="test")
    registry.register(RegistryEntry(id="good", status="promoted", created="2026-12-01T00:00:00+00:00",
                                    pipeline_dir=tiny_sd, **common))
    registry.register(RegistryEntry(id="broken", status="failed", created="2026-12-01T01:00:00+00:00",
                                    pipeline_dir=None, **common))
    config = EditConfig.model_validate({"model": "promoted", "registry_dir": str(tmp_path / "registry"),
                                        "image": "a.png", "prompt": "a dog", "mask": {"word": "cat"}})
    assert resolve_model("promoted", config.registry_dir, config) == tiny_sd
    assert resolve_model("good", config.registry_dir, config) == tiny_sd
    with pytest.raises(ValueError, match="entry broken failed: it has no model"):
        resolve_model("broken", config.registry_dir, config)
