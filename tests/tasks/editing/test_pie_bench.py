"""PIE-Bench: its mask decoding, its folder, and each score against a hand computation or its library."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tokencompose.tasks.editing import pie_bench
from tokencompose.tasks.editing.pie_bench import (background_scores, clip_scores, decode_runs, read_items,
                                                  structure_distance)


def test_runs_decode_row_major_and_the_border_is_forced_to_one():
    mask = decode_runs([7, 2, 22, 5], (4, 6), border=False)       # the last run is cut at the image's end
    expected = np.zeros(24, np.float32)
    expected[[7, 8, 22, 23]] = 1
    np.testing.assert_array_equal(mask, expected.reshape(4, 6))
    bordered = decode_runs([7, 2], (4, 6))
    assert bordered[0].all() and bordered[-1].all() and bordered[:, 0].all() and bordered[:, -1].all()
    assert bordered[1:3, 1:5].sum() == 2
    with pytest.raises(ValueError, match="odd count"):
        decode_runs([1, 2, 3])


def write_folder(root, entries):
    (root / pie_bench.IMAGES_DIR / "0_random").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / pie_bench.IMAGES_DIR / "0_random" / "a.jpg")
    (root / pie_bench.MAPPING_FILE).write_text(json.dumps(entries))


def test_folder_reader_cleans_prompts_and_names_a_broken_item(tmp_path):
    entry = {"image_path": "0_random/a.jpg", "original_prompt": "a [cat] on a mat",
             "editing_prompt": "a [dog] on a mat", "editing_type_id": "0", "mask": [3, 4]}
    write_folder(tmp_path, {"000000000001": entry, "000000000000": entry})
    items = read_items(tmp_path)
    assert [i.key for i in items] == ["000000000000", "000000000001"]
    assert items[0].edit_prompt == "a dog on a mat" and items[0].source_prompt == "a cat on a mat"
    assert items[0].runs == (3, 4) and len(read_items(tmp_path, limit=1)) == 1
    write_folder(tmp_path, {"7": {k: v for k, v in entry.items() if k != "mask"}})
    with pytest.raises(ValueError, match="item 7 has no mask"):
        read_items(tmp_path)
    write_folder(tmp_path, {"7": {**entry, "image_path": "0_random/missing.jpg"}})
    with pytest.raises(ValueError, match="item 7's image .* is missing"):
        read_items(tmp_path)
    with pytest.raises(ValueError, match="not a PIE-Bench folder"):
        read_items(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    edited = source.copy()
    edited[20:40, 10:30] = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)   # the edit
    edited[50:54, 50:54] = 0                                                    # a background change
    mask = decode_runs([v for row in range(20, 40) for v in (64 * row + 10, 20)], (64, 64))  # the edit's box
    return source, edited, mask


@pytest.fixture(scope="module")
def lpips_model():
    import lpips

    torch.manual_seed(0)
    return lpips.LPIPS(net="squeeze", pnet_rand=True, verbose=False).eval()


def test_background_scores_equal_hand_and_library_values(images, lpips_model):
    import torchmetrics

    source, edited, mask = images
    keep = (1 - mask)[..., None]
    a, b = source / 255.0 * keep, edited / 255.0 * keep
    mse = ((a - b) ** 2).mean()
    scores = background_scores(source, edited, mask, lpips_model)
    assert scores["mse"] == pytest.approx(mse, rel=1e-5)
    assert scores["psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    ta, tb = (torch.from_numpy(x).permute(2, 0, 1)[None].float() for x in (a, b))
    ssim = torchmetrics.image.StructuralSimilarityIndexMeasure(data_range=1.0)(tb, ta)
    assert scores["ssim"] == pytest.approx(float(ssim), rel=1e-5) and scores["ssim"] < 1
    assert scores["lpips"] == pytest.approx(float(lpips_model(tb * 2 - 1, ta * 2 - 1).detach()), rel=1e-5)

    inside_only = source.copy()
    inside_only[mask.astype(bool)] = 255 - inside_only[mask.astype(bool)]
    same = background_scores(source, inside_only, mask, lpips_model)
    assert same["mse"] == 0 and same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0)
    assert same["lpips"] == pytest.approx(0.0, abs=1e-6)


def random_vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=224, patch_size=16)
    return ViTModel(config, add_pooling_layer=False).eval()


def test_structure_distance_is_the_mse_of_the_last_keys_self_similarity(images):
    from PIL import Image

    source, edited, _ = images
    vit = random_vit()
    captured = []
    hook = vit.encoder.layer[-1].attention.attention.key.register_forward_hook(lambda m, i, o: captured.append(o))

    def self_similarity(image):
        resized = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BILINEAR)) / 255.0
        normed = (resized - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        captured.clear()
        with torch.no_grad():
            vit(pixel_values=torch.from_numpy(normed).permute(2, 0, 1)[None].float())
        keys = captured[0][0].double().numpy()
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        return keys @ keys.T

    expected = ((self_similarity(edited) - self_similarity(source)) ** 2).mean()
    hook.remove()
    got = structure_distance(vit, source, edited)
    assert got == pytest.approx(expected, rel=0.05)       # PIL's and torchvision's bilinear resizes differ slightly
    assert structure_distance(vit, source, source) == 0


def test_clip_similarity_of_the_whole_image_and_of_the_masked_region(images):
    from PIL import Image

    from tokencompose.tasks.evaluation.clip_score import ClipScorer

    _, edited, mask = images
    scorer = ClipScorer("ViT-S-32", None)
    scores = clip_scores(scorer, edited, mask, "a red dog")

    def by_hand(image):
        with torch.no_grad():
            picture = scorer.model.encode_image(scorer.transform(Image.fromarray(image))[None]).double()
            text = scorer.model.encode_text(scorer.tokenizer(["a red dog"])).double()
        return max(100 * float(torch.nn.functional.cosine_similarity(picture, text)), 0.0)

    region = edited * mask[..., None].astype(np.uint8)
    assert scores["clip_whole"] == pytest.approx(by_hand(edited), abs=1e-3)
    assert scores["clip_edited"] == pytest.approx(by_hand(region), abs=1e-3)
    assert scores["clip_whole"] != pytest.approx(scores["clip_edited"], abs=1e-3)


def test_report_prints_the_seed_rows_beside_in_the_same_units():
    means = {"mine": {"structure_distance": 0.05, "psnr": 28.0, "lpips": 0.04, "mse": 0.0024, "ssim": 0.86,
                      "clip_whole": 25.0, "clip_edited": 23.0}}
    table = pie_bench.report_markdown(means, {"mine": 3})
    assert "| mine | 3 | 50.00 | 28.00 | 40.00 | 24.00 | 86.00 | 25.00 | 23.00 |" in table
    assert "Blended Diffusion (TokenCompose) (seed report) | 700 | 56.61 | 28.46 | 39.19 | 23.63 | 86.08 | 26.02 | 23.23" in table
