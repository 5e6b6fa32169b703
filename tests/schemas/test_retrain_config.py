"""RetrainConfig's train and evaluation sections: typed, strict, laid over the defaults."""
import pytest
from pydantic import ValidationError

from tokencompose.schemas.retrain import RetrainConfig

BASE = {"build": {"source": {"images_dir": "i", "captions_json": "c"}, "output": {"out_dir": "o"}},
        "base_model": "sd"}


@pytest.mark.parametrize("settings,named", [
    ({"train": {"mixed_precison": "bf16"}}, "train.mixed_precison"),
    ({"evaluation": {"generation": {"imags_per_prompt": 2}}}, "evaluation.generation.imags_per_prompt"),
    ({"evaluation": {"benchmarks": {}}}, "evaluation.benchmarks"),
    ({"train": {"resolution": 500}}, "train.resolution"),
    ({"train": {"max_steps": 5}}, "train must not set max_steps"),
    ({"evaluation": {"out_dir": "x"}}, "evaluation must not set out_dir"),
])
def test_a_bad_key_or_value_is_named(settings, named):
    with pytest.raises(ValidationError) as error:
        RetrainConfig.model_validate({**BASE, **settings})
    assert named in str(error.value)


def test_the_sections_are_typed_and_laid_over_the_defaults(tmp_path):
    config = RetrainConfig.model_validate({**BASE, "train": {"mixed_precision": "bf16", "train_layers": "mid_block.attentions.0"},
                                           "evaluation": {"generation": {"steps": 20}}})
    assert config.train.mixed_precision == "bf16" and config.evaluation.generation.steps == 20
    train = config.train_config(tmp_path, ["a.tar"], tmp_path / "out")
    assert (train.mixed_precision, train.train_layers, train.max_steps, train.learning_rate) == \
        ("bf16", ["mid_block.attentions.0"], config.steps, 5e-6)
    evaluate = config.evaluate_config(["sd"], ["base"], tmp_path)
    assert (evaluate.generation.steps, evaluate.generation.images_per_prompt, evaluate.benchmark.name) == (20, 10, "coco")


def test_the_quick_evaluation_is_the_default():
    evaluate = RetrainConfig.model_validate(BASE).evaluate_config(["sd"], ["base"], "out")
    assert (evaluate.benchmark.limit, evaluate.generation.images_per_prompt) == (50, 2)


def test_the_training_hash_covers_changed_values_and_survives_a_json_round_trip():
    config = RetrainConfig.model_validate({**BASE, "train": {"mixed_precision": "bf16"}})
    assert RetrainConfig.model_validate_json(config.model_dump_json()).train_hash() == config.train_hash()
    assert RetrainConfig.model_validate({**BASE, "train": {"mixed_precision": "no"}}).train_hash() == \
        RetrainConfig.model_validate(BASE).train_hash()  # "no" is the default
    assert config.train_hash() != RetrainConfig.model_validate(BASE).train_hash()
