import pytest
from pydantic import ValidationError

from tests.support.testkit import demo_config
from tokencompose.schemas.config import BuildConfig


def test_profile_selects_backends_and_stage_overrides_win(tmp_path):
    config = demo_config(tmp_path, profile="paper", grounding={"backend": "coco"},
                         source={"lvis_json": [], "stuff_json": []})  # with them coco is human (test below)
    assert (config.backend("captions"), config.backend("nouns"), config.backend("grounding")) == ("clip", "flair", "coco")


def test_hash_ignores_output_location_and_workers_but_not_content(tmp_path):
    base = demo_config(tmp_path / "a")
    assert base.config_hash() == demo_config(tmp_path / "b", workers=4).config_hash()
    assert base.config_hash() != demo_config(tmp_path / "a", output={"shard_size": 7}).config_hash()
    assert base.config_hash() != demo_config(tmp_path / "a", nouns={"stop_list": ["front"]}).config_hash()


@pytest.mark.parametrize("settings,where", [
    ({"selection": {"policy": "vsr"}}, "selection"),
    ({"output": {"out_dir": "x", "shard_size": 0}}, "output.shard_size"),
    ({"profile": "fastest"}, "profile"),
    ({"grounding": {"box_threshold": 2}}, "grounding.box_threshold"),
    ({"unknown": 1}, "unknown"),
])
def test_bad_settings_name_the_field(tmp_path, settings, where):
    base = {"source": {"images_dir": "i", "captions_json": "c"}, "output": {"out_dir": str(tmp_path)}}
    with pytest.raises(ValidationError) as error:
        BuildConfig.model_validate({**base, **settings})
    assert where.split(".")[0] in str(error.value)


def test_a_configuration_round_trips_through_json_with_the_same_hash(tmp_path):
    config = demo_config(tmp_path)
    assert BuildConfig.model_validate_json(config.model_dump_json()).config_hash() == config.config_hash()


@pytest.mark.parametrize("name,text", [("c.json", '{"workers": 2}'), ("c.yaml", "workers: 2\n"), ("c.toml", "workers = 2\n")])
def test_settings_files_in_three_formats(tmp_path, name, text):
    from tokencompose.schemas.settings_file import read_settings

    (tmp_path / name).write_text(text)
    assert read_settings(tmp_path / name) == {"workers": 2}


def test_a_broken_settings_file_names_itself(tmp_path):
    from tokencompose.schemas.settings_file import read_settings

    (tmp_path / "c.yaml").write_text("workers: [1,\n")
    with pytest.raises(ValueError, match="c.yaml is not valid yaml"):
        read_settings(tmp_path / "c.yaml")


def test_grounding_backend_names_what_runs_and_hashes_without_human_files_are_kept(tmp_path):
    no_human_files = {"lvis_json": [], "stuff_json": []}
    # without LVIS / COCO-Stuff files: coco stays coco (the offline hashes changed with the longer default
    # stop-list of issue 13; the paper profile has none, its hash is the one datasets were built with)
    coco = demo_config(tmp_path, source=no_human_files)
    assert coco.backend("grounding") == "coco" and coco.content_dict()["grounding"]["backend"] == "coco"
    assert coco.config_hash() == "e0781085729f5521"
    explicit_coco = demo_config(tmp_path, source=no_human_files, grounding={"backend": "coco"})
    assert explicit_coco.config_hash() == "e0781085729f5521"
    assert demo_config(tmp_path, source=no_human_files, profile="paper").config_hash() == "cd5743dda8966e59"
    explicit_human = demo_config(tmp_path, source=no_human_files, grounding={"backend": "human"})
    assert explicit_human.config_hash() == "6f2bd96a4a31d7a8"
    # with them, coco grounding is the human grounding (tasks/models/backends.py): config.json and the hash say so,
    # the same as choosing human outright (the same dataset)
    for human_files in ({}, {"lvis_json": []}, {"stuff_json": []}):
        config = demo_config(tmp_path, source=human_files)
        assert config.source.lvis_json or config.source.stuff_json
        assert config.backend("grounding") == "human" and config.content_dict()["grounding"]["backend"] == "human"
        explicit = demo_config(tmp_path, source=human_files, grounding={"backend": "human"})
        assert config.config_hash() == explicit.config_hash()
        assert demo_config(tmp_path, source=human_files, grounding={"backend": "coco"}).backend("grounding") == "human"
    assert demo_config(tmp_path).config_hash() == "e443606d0c79492d"
    # the other backends are left as chosen
    assert demo_config(tmp_path, grounding={"backend": "hybrid"}).backend("grounding") == "hybrid"
    assert demo_config(tmp_path, profile="paper").backend("grounding") == "grounded_sam"
    assert demo_config(tmp_path, grounding={"backend": "grounded_sam"}).backend("grounding") == "grounded_sam"


def test_the_provenance_and_config_json_agree_on_the_grounding_backend(tmp_path):
    from tokencompose.tasks.models.backends import load_backends

    config = demo_config(tmp_path)
    assert load_backends(config).grounding.info().name == config.backend("grounding") == "human"
    coco = demo_config(tmp_path, source={"lvis_json": [], "stuff_json": []})
    assert load_backends(coco).grounding.info().name == coco.backend("grounding") == "coco"


def test_shards_sized_by_time_cut_by_the_count_that_time_gives(tmp_path):
    timed = demo_config(tmp_path, output={"shard_seconds": 600, "seconds_per_image": 0.078})
    assert timed.output.shard_size == 7692  # floor(600 / 0.078)
    assert timed.config_hash() == demo_config(tmp_path, output={"shard_size": 7692}).config_hash()
    again = BuildConfig.model_validate_json(timed.model_dump_json())  # config.json holds all three, consistent
    assert again.output.shard_size == 7692 and again.config_hash() == timed.config_hash()
    assert demo_config(tmp_path, output={"shard_seconds": 1, "seconds_per_image": 5}).output.shard_size == 1
    for output, message in (({"shard_seconds": 600}, "give both"),
                            ({"seconds_per_image": 0.5}, "give both"),
                            ({"shard_seconds": 600, "seconds_per_image": 0.5, "shard_size": 10},
                             "shard_size 10 disagrees with shard_seconds / seconds_per_image = 1200"),
                            ({"shard_seconds": 600, "seconds_per_image": 0}, "seconds_per_image")):
        with pytest.raises(ValidationError, match=message):
            demo_config(tmp_path, output=output)
