"""RetrainConfig's train and evaluation sections: typed, strict, laid over the defaults; its promotion gate:
old keys mapped onto it, and FID / CLIP score judged only when the evaluation measures them (said at load)."""
import pytest
from pydantic import ValidationError

from tokencompose.cli.options import explain
from tokencompose.schemas.retrain import GateSettings, RetrainConfig

NOT_JUDGED = {"fid_tolerance": None, "clip_tolerance": None}
BASE = {"build": {"source": {"images_dir": "i", "captions_json": "c"}, "output": {"out_dir": "o"}},
        "base_model": "sd", "gate": NOT_JUDGED}
REAL = {"name": "coco", "images": "val2017", "captions": "captions_val2017.json"}


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


def test_old_metric_and_margin_map_onto_the_gate():
    old = {key: value for key, value in BASE.items() if key != "gate"}
    config = RetrainConfig.model_validate({**old, "metric": "MG2", "margin": 1.5, "gate": NOT_JUDGED})
    assert (config.gate.level, config.gate.margin, config.gate.confidence) == (2, 1.5, 0.95)
    assert "metric" not in config.model_dump() and "margin" not in config.model_dump()
    again = RetrainConfig.model_validate_json(config.model_dump_json())     # what a Prefect parameter carries
    assert again == config
    only_margin = RetrainConfig.model_validate({**BASE, "margin": 0.5})
    assert (only_margin.gate.level, only_margin.gate.margin, only_margin.gate.fid_tolerance) == (3, 0.5, None)
    as_object = RetrainConfig.model_validate({**old, "metric": "MG4", "gate": GateSettings(**NOT_JUDGED)})
    assert as_object.gate.level == 4


@pytest.mark.parametrize("settings,named", [
    ({"metric": "MG2", "gate": {**NOT_JUDGED, "level": 3}}, "metric and gate.level are both set"),
    ({"margin": 1.0, "gate": {**NOT_JUDGED, "margin": 2.0}}, "margin and gate.margin are both set"),
    ({"metric": "MG2", "gate": GateSettings(level=2, **NOT_JUDGED)}, "metric and gate.level are both set"),
    ({"metric": "MG7"}, "metric 'MG7' must be one of MG1..MG5"),
    ({"margin": -1.0}, "gate.margin"),
    ({"gate": {**NOT_JUDGED, "confidence": 1.0}}, "gate.confidence"),
    ({"gate": {**NOT_JUDGED, "levle": 2}}, "gate.levle"),
])
def test_a_bad_gate_setting_is_named(settings, named):
    with pytest.raises(ValidationError) as error:
        RetrainConfig.model_validate({**BASE, **settings})
    assert named in explain(error.value)


def test_judging_fid_or_clip_score_needs_them_measured_and_says_how_to_opt_out():
    without_gate = {key: value for key, value in BASE.items() if key != "gate"}
    with pytest.raises(ValidationError) as error:
        RetrainConfig.model_validate(without_gate)              # the defaults judge both
    message = explain(error.value)
    assert len(message.splitlines()) == 2                       # "invalid ...:" and one line naming both
    assert "gate.fid_tolerance is 0.5" in message and "evaluation.metrics.fid.real" in message
    assert "gate.fid_tolerance: null" in message
    assert "evaluation.metrics.clip_score.enabled: true" in message and "gate.clip_tolerance: null" in message
    with pytest.raises(ValidationError, match="gate.clip_tolerance is 0.5") as error:
        RetrainConfig.model_validate({**BASE, "gate": {"fid_tolerance": None}})
    assert "fid_tolerance" not in explain(error.value)


def test_fid_and_clip_score_are_judged_on_the_first_real_set():
    measured = {**BASE, "gate": {"fid_tolerance": 1.0},
                "evaluation": {"metrics": {"fid": {"real": [REAL, {**REAL, "name": "flickr30k"}]},
                                           "clip_score": {"enabled": True}}}}
    config = RetrainConfig.model_validate(measured)
    assert (config.gate.fid_tolerance, config.gate.clip_tolerance) == (1.0, 0.5)
    assert (config.fid_set(), config.clip_set()) == ("coco", "coco")
    evaluate = config.evaluate_config(["sd", "cand"], ["base", "candidate"], "out")
    assert [r.name for r in evaluate.metrics.fid.real] == ["coco", "flickr30k"] and evaluate.metrics.clip_score.enabled
    clip_only = RetrainConfig.model_validate({**BASE, "gate": {"fid_tolerance": None},
                                              "evaluation": {"metrics": {"clip_score": {"enabled": True}}}})
    assert (clip_only.fid_set(), clip_only.clip_set()) == (None, "multigen")
