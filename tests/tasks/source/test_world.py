"""The synthetic world's generator: deterministic bytes, masks that are the drawn pixels, held-out pairs."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokencompose.tasks.grounding.masks import decode
from tokencompose.tasks.source.world import (BY_NAME, CATEGORIES, HELD_OUT_PAIRS, WORLD_FILE, allowed, prompt_rows,
                                             write_world)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def drawn(folder: Path) -> tuple[dict, dict[int, list[dict]], dict[int, str]]:
    instances = json.loads((folder / "instances.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for annotation in instances["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    names = {c["id"]: c["name"] for c in instances["categories"]}
    return instances, by_image, names


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a, b, c = (write_world(tmp_path / name, 12, seed=seed, image_size=32) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert digests(a) == digests(b)
    assert digests(a)["images/000000000001.png"] != digests(c)["images/000000000001.png"]


def test_masks_are_exactly_the_drawn_pixels_of_the_category_colour(tmp_path):
    folder = write_world(tmp_path / "w", 20, seed=1, image_size=32)
    instances, by_image, names = drawn(folder)
    for image in instances["images"]:
        pixels = np.asarray(Image.open(folder / "images" / image["file_name"]).convert("RGB"))
        union = np.zeros(pixels.shape[:2], dtype=bool)
        for annotation in by_image[image["id"]]:
            mask = decode(annotation["segmentation"])
            colour = np.array(BY_NAME[names[annotation["category_id"]]].rgb)
            assert mask.sum() == annotation["area"] > 0
            assert (pixels[mask] == colour).all()                       # every mask pixel has the colour
            assert ((pixels == colour).all(axis=-1) == mask).all()      # and nothing else has it
            assert not (union & mask).any()
            union |= mask
        assert 2 <= len(by_image[image["id"]]) <= 4


def test_held_out_pairs_never_co_occur_in_images_or_captions(tmp_path):
    folder = write_world(tmp_path / "w", 300, seed=2, image_size=32)
    _, by_image, names = drawn(folder)
    for annotations in by_image.values():
        assert allowed([names[a["category_id"]] for a in annotations], HELD_OUT_PAIRS)
    captions = json.loads((folder / "captions.json").read_text())["annotations"]
    for caption in captions:
        assert not any(a in caption["caption"] and b in caption["caption"] for a, b in HELD_OUT_PAIRS)
    # and each held-out category does occur, with others
    seen = {names[a["category_id"]] for annotations in by_image.values() for a in annotations}
    assert seen == set(BY_NAME)
    meta = json.loads((folder / WORLD_FILE).read_text())
    assert meta["held_out_pairs"] == [list(p) for p in HELD_OUT_PAIRS] and meta["seed"] == 2


def test_a_test_world_draws_the_held_out_pairs_too(tmp_path):
    _, by_image, names = drawn(write_world(tmp_path / "w", 300, seed=2, image_size=32, held_out=()))
    assert any(not allowed([names[a["category_id"]] for a in annotations], HELD_OUT_PAIRS)
               for annotations in by_image.values())


def test_captions_name_each_object_once_and_categories_are_coco_ids(tmp_path):
    folder = write_world(tmp_path / "w", 10, seed=0, image_size=32)
    instances, by_image, names = drawn(folder)
    captions = {c["image_id"]: c["caption"] for c in json.loads((folder / "captions.json").read_text())["annotations"]}
    for image_id, annotations in by_image.items():
        for annotation in annotations:
            assert captions[image_id].count(f"a {names[annotation['category_id']]}") == 1
    assert {c["name"]: c["id"] for c in instances["categories"]}["stop sign"] == 13


def test_prompts_are_every_five_of_the_eight_and_flag_held_out_pairs():
    rows = prompt_rows()
    assert len(rows) == 56 and len(CATEGORIES) == 8
    assert sum(r["held_out_pair"] for r in rows) == 36


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 16 px"):
        write_world(tmp_path / "w", 5, image_size=8)


def test_the_normal_offline_build_grounds_every_object_noun(tmp_path):
    from tokencompose.schemas.config import BuildConfig
    from tokencompose.tasks.shards.dataset import build_directly

    folder = write_world(tmp_path / "w", 40, seed=0, image_size=32)
    build_directly(BuildConfig.model_validate({
        "source": {"images_dir": str(folder / "images"), "captions_json": str(folder / "captions.json"),
                   "instances_json": str(folder / "instances.json")},
        "output": {"out_dir": str(tmp_path / "built"), "image_field": "png"}}))
    stats = json.loads((tmp_path / "built" / "stats.json").read_text())
    _, by_image, _ = drawn(folder)
    assert stats["samples"] == 40 and not stats["rejects_by_reason"]
    assert sum(stats["noun_texts_with_mask"].values()) == sum(len(a) for a in by_image.values())
    assert set(stats["noun_texts_without_mask"]) <= {"picture", "background"}     # the stop-list's words
