"""Incremental builds (issue 10): a grown source gets new shards for its new images only, existing
shards are never rewritten, the manifest records dataset versions; the same source adds nothing; a
source that lost images the shards hold is refused with the list."""
import hashlib
import json

import pytest

from tests.support.testkit import demo_config
from tokencompose.data import SAMPLE_DIR
from tokencompose.schemas.reports import ShardIndex
from tokencompose.tasks.shards.dataset import build_directly
from tokencompose.tasks.shards.output import ConfigurationError
from tokencompose.tasks.shards.versions import dataset_versions, version_shards

VSR_LINES = (SAMPLE_DIR / "vsr_train.jsonl").read_text().splitlines(keepends=True)
PART_1 = 4  # 632, 139, 885, 285; the rest (776, 724, 785, 872 and one image not in the source) is part 2


def _config(tmp_path, lines, **overrides):
    """The bundled sample with a VSR file of the given lines, always at the same path (a source that grows)."""
    vsr = tmp_path / "vsr" / "vsr_train.jsonl"
    vsr.parent.mkdir(exist_ok=True)
    vsr.write_text("".join(lines))
    output = {"shard_size": 2, **overrides.pop("output", {})}
    return demo_config(tmp_path / "out", selection={"vsr_files": [str(vsr)]}, output=output, **overrides)


def _shard_hashes(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))}


def _image_ids(out, shard):
    index = ShardIndex.model_validate_json((out / "index" / shard.replace(".tar", ".json")).read_bytes())
    return {int(k) for k in index.samples} | {r.image_id for r in index.rejects}


def test_a_grown_source_adds_shards_for_its_new_images_only(tmp_path):
    out = tmp_path / "out"
    build_directly(_config(tmp_path, VSR_LINES[:PART_1]))
    first = _shard_hashes(out)
    stamps = {name: (out / "shards" / name).stat().st_mtime_ns for name in first}
    assert list(first) == ["shard-000000.tar", "shard-000001.tar"]
    assert [v.version for v in dataset_versions(out)] == [1]

    build_directly(_config(tmp_path, VSR_LINES))
    second = _shard_hashes(out)
    assert {name: second[name] for name in first} == first, "existing shards keep their bytes"
    assert {name: (out / "shards" / name).stat().st_mtime_ns for name in first} == stamps, "and are not rewritten"
    added = sorted(set(second) - set(first))
    assert added == ["shard-000002.tar", "shard-000003.tar"], "new shards numbered after the last one"
    assert set().union(*(_image_ids(out, name) for name in first)) == {632, 139, 885, 285}
    assert set().union(*(_image_ids(out, name) for name in added)) == {776, 724, 785, 872}

    versions = dataset_versions(out)
    assert [v.version for v in versions] == [1, 2]
    assert versions[0].shards == first and versions[1].shards == second and versions[1].added == added
    assert versions[0].config_hash == versions[1].config_hash and versions[0].source_hash != versions[1].source_hash
    assert [p.name for p in version_shards(out)] == list(second)
    assert [p.name for p in version_shards(out, 1)] == list(first)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == list(second)
    assert {s["name"]: s["sha256"] for s in manifest["shards"]} == second
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == manifest["samples"] == json.loads((out / "stats.json").read_text())["samples"]

    # Here the new images come after the old ones in the source's order, so the grown dataset is
    # byte for byte the one a single build of the grown source gives.
    straight = tmp_path / "straight"
    build_directly(_config(tmp_path, VSR_LINES, output={"out_dir": str(straight)}))
    assert _shard_hashes(straight) == second


@pytest.mark.server
def test_the_same_source_again_adds_nothing(prefect_api, tmp_path):
    from tokencompose.flows.build import build_grounded_coco

    config = _config(tmp_path, VSR_LINES[:PART_1])
    out = config.output.out_dir
    first = build_grounded_coco(config=config)
    assert first["new_images"] == 4 and first["dataset version"] == 1
    manifest = (out / "manifest.json").read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    again = build_grounded_coco(config=config)
    assert again["new_images"] == 0 and again["new shards"] == 0 and again["dataset version"] == 1
    assert again["samples written"] == first["samples written"]
    assert (out / "manifest.json").read_bytes() == manifest, "no new version"
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == stamps

    grown = build_grounded_coco(config=_config(tmp_path, VSR_LINES))
    assert grown["new_images"] == 4 and grown["new shards"] == 2 and grown["dataset version"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")
            if p.name in stamps} == stamps


def test_a_source_that_lost_images_is_refused_with_the_list(tmp_path):
    out = tmp_path / "out"
    build_directly(_config(tmp_path, VSR_LINES))
    before = _shard_hashes(out)
    held = set()
    for name in before:
        index = ShardIndex.model_validate_json((out / "index" / name.replace(".tar", ".json")).read_bytes())
        held |= {int(k) for k in index.samples}
    lost = sorted(held - {632, 139, 885, 285})
    assert lost, "part 2 has samples"
    with pytest.raises(ConfigurationError) as error:
        build_directly(_config(tmp_path, VSR_LINES[:PART_1]))
    message = str(error.value)
    assert f"lost {len(lost)} image(s)" in message
    named = [f"{image_id:012d}.jpg" for image_id in lost]
    assert all(name in message for name in named[:5])
    assert _shard_hashes(out) == before and len(dataset_versions(out)) == 1


def test_a_changed_configuration_is_still_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    build_directly(_config(tmp_path, VSR_LINES[:PART_1]))
    with pytest.raises(ConfigurationError, match=r"holds a dataset built with other settings \(output.shard_size"):
        build_directly(_config(tmp_path, VSR_LINES, output={"shard_size": 3}))
    build_directly(_config(tmp_path, VSR_LINES, output={"shard_size": 3, "overwrite": True}))
    versions = dataset_versions(out)
    assert [v.version for v in versions] == [1], "overwrite starts the history again"
    assert set().union(*(_image_ids(out, n) for n in versions[0].shards)) == {632, 139, 885, 285, 776, 724, 785, 872}
