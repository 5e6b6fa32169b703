"""Seeded generation: per-image noise, identical bytes for the same seed, shards, ranks, NaN records."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tokencompose.tasks.multigen import generation as gen
from tokencompose.tasks.multigen.prompts import bundled

SETTINGS = dict(seed=0, steps=2, guidance_scale=7.5, resolution=32)


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return gen.load_pipeline(tiny_sd, "cpu", torch.float32)


def test_each_image_has_its_own_seed_from_the_triple():
    seeds = {gen.image_seed(s, p, i) for s in range(3) for p in range(20) for i in range(10)}
    assert len(seeds) == 600
    assert gen.image_seed(0, 5, 3) == gen.image_seed(0, 5, 3)
    a = gen.initial_latents(0, 5, 3, (4, 8, 8))
    assert torch.equal(a, gen.initial_latents(0, 5, 3, (4, 8, 8)))
    assert not torch.equal(a, gen.initial_latents(0, 5, 4, (4, 8, 8)))


def test_same_seed_gives_identical_image_bytes(pipe, tmp_path):
    plan = gen.plan_shards(bundled("coco")[:2], 2)[0]
    kwargs = dict(images_per_prompt=2, batch_size=4, model={"label": "tiny"}, **SETTINGS)
    gen.generate_shard(pipe, plan, tmp_path / "a.tar", **kwargs)
    gen.generate_shard(pipe, plan, tmp_path / "b.tar", **kwargs)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    gen.generate_shard(pipe, plan, tmp_path / "c.tar", **{**kwargs, "seed": 1})
    pngs = [png for _, png in gen.read_shard(tmp_path / "a.tar")]
    assert len(set(pngs)) == 4                                          # every image differs
    assert not set(pngs) & {png for _, png in gen.read_shard(tmp_path / "c.tar")}


def test_any_image_can_be_regenerated_alone(pipe):
    prompts = bundled("coco")[:2]
    batch = gen.generate_images(pipe, [(p, i) for p in prompts for i in range(2)], batch_size=4, **SETTINGS)
    alone = gen.generate_images(pipe, [(prompts[1], 1)], batch_size=1, **SETTINGS)[0]
    # same noise; only float rounding of a batch of 4 against a batch of 1 may differ
    assert np.abs(batch[3].image.astype(int) - alone.image.astype(int)).mean() < 1.0
    assert np.abs(batch[2].image.astype(int) - alone.image.astype(int)).mean() > 10


def test_shards_are_webdataset_with_the_metadata(pipe, tmp_path):
    import webdataset as wds

    plan = gen.plan_shards(bundled("coco")[:3], 2)[1]
    assert plan.name == "prompts-000002-000002"
    path = tmp_path / f"{plan.name}.tar"
    gen.generate_shard(pipe, plan, path, images_per_prompt=2, batch_size=2, model={"label": "tiny", "id": "x"},
                       **SETTINGS)
    samples = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["p000002-i000", "p000002-i001"]
    meta = json.loads(samples[1]["json"])
    assert meta["prompt"] == bundled("coco")[2].text and meta["categories"] == list(bundled("coco")[2].categories)
    assert meta["seed"] == 0 and meta["image_index"] == 1 and meta["model"]["id"] == "x" and meta["nan"] is False
    assert meta["image_seed"] == gen.image_seed(0, 2, 1)
    assert samples[0]["png"].startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*.tmp"))


def test_shards_are_plain_ustar_like_the_build(pipe, tmp_path):
    """The build's shard writer: ustar headers only (no per-member PAX header), fixed metadata, so
    the file is exactly headers + padded data + the end blocks padded to a record."""
    import tarfile

    from tokencompose.tasks.shards.shard_io import BLOCK, RECORD

    plan = gen.plan_shards(bundled("coco")[:1], 1)[0]
    path = tmp_path / f"{plan.name}.tar"
    gen.generate_shard(pipe, plan, path, images_per_prompt=2, batch_size=2, model={"label": "tiny"}, **SETTINGS)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["p000000-i000.json", "p000000-i000.png", "p000000-i001.json",
                                         "p000000-i001.png"]
    assert all(not m.pax_headers and m.mtime == 0 and m.uname == "" and m.mode == 0o644 for m in members)
    body = sum(BLOCK + -(-m.size // BLOCK) * BLOCK for m in members) + 2 * BLOCK
    assert path.stat().st_size == -(-body // RECORD) * RECORD


def test_ranks_split_the_shards_and_give_one_process_bytes(pipe, tmp_path):
    plans = gen.plan_shards(bundled("coco")[:5], 1)
    kwargs = dict(images_per_prompt=1, batch_size=2, model={"label": "tiny"}, **SETTINGS)
    gen.run_generation(pipe, plans, tmp_path / "one", **kwargs)
    for rank in range(2):
        mine = gen.for_rank(plans, rank, 2)
        assert [p.start for p in mine] == list(range(rank, 5, 2))
        gen.run_generation(pipe, mine, tmp_path / "two", **kwargs)
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two] and len([p for p in one if p.suffix == ".tar"]) == 5
    assert {p.name for p in one} - {p.name for p in one if p.suffix == ".tar"} == {f"{p.name}.tar.check.json"
                                                                                  for p in plans}
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))
    # a finished shard is never redone
    assert gen.run_generation(pipe, plans, tmp_path / "one", **kwargs)["shards_skipped"] == 5


def test_nan_generations_are_recorded_per_image(nan_sd, tmp_path):
    pipe = gen.load_pipeline(nan_sd, "cpu", torch.float32)
    plan = gen.plan_shards(bundled("coco")[:1], 1)[0]
    counts = gen.generate_shard(pipe, plan, tmp_path / "nan.tar", images_per_prompt=2, batch_size=2,
                                model={"label": "nan"}, **SETTINGS)
    assert counts == {"images": 2, "nan": 2}
    assert all(meta["nan"] for meta, _ in gen.read_shard(tmp_path / "nan.tar"))


def test_a_folder_that_is_not_a_diffusers_pipeline_is_refused(tiny_sd, tiny_owl, tmp_path):
    assert gen.check_pipeline_folder(tiny_sd) == []
    assert "no model_index.json" in gen.check_pipeline_folder(tiny_owl)[0]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline", "unet": []}))
    problems = " | ".join(gen.check_pipeline_folder(broken))
    assert "KandinskyPipeline" in problems and "missing unet/config.json" in problems
    with pytest.raises(gen.ModelFolderError, match="KandinskyPipeline"):
        gen.load_pipeline(broken, "cpu", torch.float32)
