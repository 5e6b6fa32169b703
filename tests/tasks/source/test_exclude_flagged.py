"""selection.exclude_flagged: a build leaves out the samples a flags file (the viewer's flags.jsonl) flags,
deterministically, and the flagged set is part of the configuration hash."""
from __future__ import annotations

import json
import tarfile

import pytest

from tokencompose.schemas.config import BuildConfig
from tokencompose.tasks.curation.store import FlagStore
from tokencompose.tasks.models.preflight import build_problems
from tokencompose.tasks.source.selection import select_images

CUP_KEY, CAT_KEY, PERSON_KEY = "000000000632", "000000000285", "000000000139"


def shard_keys(out) -> list[str]:
    keys = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            keys += [m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".json")]
    return keys


@pytest.fixture
def flags(tmp_path):
    store = FlagStore(tmp_path / "curation")
    store.path.parent.mkdir()
    store.flag(CUP_KEY, "blurry")
    store.flag(CAT_KEY, "bad mask")
    store.flag(PERSON_KEY, "the person's mask is cut", noun=0, noun_text="man")  # a mask flag: the image stays
    return store


def test_a_build_with_a_flags_file_lacks_the_flagged_samples(make_demo_config, flags):
    from tokencompose.tasks.shards.dataset import build_directly

    config = make_demo_config("flagged", selection={"exclude_flagged": str(flags.path)})
    assert build_problems(config) == []
    build_directly(config)
    out = config.output.out_dir
    keys = shard_keys(out)
    assert len(keys) == 6 and CUP_KEY not in keys and CAT_KEY not in keys and PERSON_KEY in keys
    assert not (out / "flags.jsonl").exists()  # the flags stay where the viewer keeps them
    assert json.loads((out / "config.json").read_text())["config"]["selection"]["exclude_flagged"] == str(flags.path)


def test_excluding_is_deterministic_and_in_the_configuration_hash(make_demo_config, flags, tmp_path):
    config = make_demo_config("a", selection={"exclude_flagged": str(flags.path)})
    plain = make_demo_config("plain")
    first, again = select_images(config), select_images(config)
    assert [r.image_id for r in first.images] == [r.image_id for r in again.images]
    assert len(first.images) == len(select_images(plain).images) - 2
    assert "exclude_flagged" not in plain.content_dict()["selection"]  # earlier configurations keep their hash
    flagged_hash = config.config_hash()
    assert flagged_hash != plain.config_hash()
    # the same flags in another place (and another reason) give the same hash; another flagged sample does not
    moved = FlagStore(tmp_path / "elsewhere")
    moved.path.parent.mkdir()
    for flag in flags.read():
        moved.flag(flag.key, "re-flagged", noun=flag.noun)
    assert make_demo_config("b", selection={"exclude_flagged": str(moved.path)}).config_hash() == flagged_hash
    moved.flag("000000000724", "rocket")
    assert make_demo_config("c", selection={"exclude_flagged": str(moved.path)}).config_hash() != flagged_hash


def test_a_missing_or_bad_flags_file_stops_before_work(make_demo_config, tmp_path):
    missing = make_demo_config("m", selection={"exclude_flagged": str(tmp_path / "nope.jsonl")})
    assert f"selection.exclude_flagged: {tmp_path / 'nope.jsonl'} does not exist" in build_problems(missing)
    bad = tmp_path / "flags.jsonl"
    bad.write_text('{"key": "000000000632", "reason": "x", "flagged_at": "t"}\n["not", "a", "flag"]\n')
    problems = build_problems(make_demo_config("b", selection={"exclude_flagged": str(bad)}))
    assert [p for p in problems if "exclude_flagged" in p] == [
        f"selection.exclude_flagged: {bad}:2: not a Flag record (Input should be an object)"]


def test_the_flag_is_a_command_line_shortcut():
    assert BuildConfig.model_fields["selection"].annotation.model_fields["exclude_flagged"].json_schema_extra == {
        "cli_shortcut": "exclude-flagged"}
