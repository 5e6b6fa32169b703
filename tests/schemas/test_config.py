import pytest
from pydantic import ValidationError

from testkit import demo_config
from tokencompose.schemas.config import BuildConfig


def test_profile_selects_backends_and_stage_overrides_win(tmp_path):
    config = demo_config(tmp_path, profile="paper", grounding={"backend": "coco"})
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
