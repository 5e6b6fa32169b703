"""Every contract in schemas/ is one of two kinds: a configuration section or a pipeline record."""
import importlib
import inspect
import pkgutil
from typing import get_args

import pytest
from pydantic import BaseModel, ValidationError

import tokencompose.schemas as schemas
from tokencompose.schemas.base import StrictModel, StrictRecord
from tokencompose.schemas.config import CaptionConfig
from tokencompose.schemas.evaluation import AttentionConfig, GenerationConfig
from tokencompose.schemas.multigen import ModelReport, ModelScores, MultiGenResult
from tokencompose.schemas.registry import RegistryEntry
from tokencompose.schemas.sample import CaptionCandidate
from tokencompose.schemas.training import TrainConfig
from tokencompose.schemas.types import MixedPrecision, Resolution


def _schema_models() -> list[type[BaseModel]]:
    models = []
    for info in pkgutil.iter_modules(schemas.__path__):
        module = importlib.import_module(f"tokencompose.schemas.{info.name}")
        models += [value for value in vars(module).values() if inspect.isclass(value)
                   and issubclass(value, BaseModel) and value.__module__ == module.__name__]
    return models


def test_every_schema_model_derives_from_one_of_the_two_bases():
    models = _schema_models()
    assert len(models) > 30
    loose = [m.__name__ for m in models if not issubclass(m, (StrictModel, StrictRecord))]
    assert loose == []


def test_every_model_named_config_is_a_frozen_configuration_section():
    configs = [m for m in _schema_models() if m.__name__.endswith("Config")]
    assert len(configs) > 10
    assert [m.__name__ for m in configs if not issubclass(m, StrictModel)] == []


def test_a_configuration_section_rejects_unknown_keys_and_changes():
    with pytest.raises(ValidationError, match="clip_modle"):
        CaptionConfig.model_validate({"clip_modle": "x"})
    with pytest.raises(ValidationError, match="frozen"):
        CaptionConfig().batch_size = 3


def test_a_record_rejects_unknown_keys_but_can_be_filled_in():
    with pytest.raises(ValidationError, match="scor"):
        CaptionCandidate.model_validate({"text": "a", "score": 1.0, "scor": 2})
    candidate = CaptionCandidate(text="a", score=None)
    candidate.score = 0.5
    assert candidate.score == 0.5


@pytest.mark.parametrize("section,field", [(GenerationConfig, "resolution"), (AttentionConfig, "resolution"),
                                           (TrainConfig, "resolution")])
def test_every_resolution_is_one_type_that_names_a_bad_side(section, field):
    info = section.model_fields[field]  # TrainConfig's and AttentionConfig's may be null (the model's own)
    assert info.metadata == GenerationConfig.model_fields["resolution"].metadata or Resolution in get_args(info.annotation)
    with pytest.raises(ValidationError, match="resolution 500 must be a multiple of 8"):
        section.model_validate({"resolution": 500})


def test_the_precisions_are_distinct_types_with_their_own_values():
    assert get_args(GenerationConfig.model_fields["precision"].annotation) == ("auto", "fp32", "fp16", "bf16")
    assert get_args(TrainConfig.model_fields["mixed_precision"].annotation) == get_args(MixedPrecision)
    assert "no" in get_args(MixedPrecision) and "auto" not in get_args(MixedPrecision)


def test_a_model_report_is_its_scores_with_where_the_model_is():
    scores = ModelScores(images=4, scored=3, nan=1, rounds=2, mg={"MG1": {"mean": 50.0, "std": 0.0, "rounds": [50, 50]}})
    report = ModelReport(label="sd", path="/m/sd", model_id="abc", **scores.model_dump())
    assert set(ModelReport.model_fields) - set(ModelScores.model_fields) == {"label", "path", "model_id", "grid",
                                                                           "attention", "metrics"}
    assert report.model_dump(include=set(ModelScores.model_fields)) == scores.model_dump()
    assert report.means() == {"MG1": 50.0}
    assert RegistryEntry.model_fields["multigen"].annotation == MultiGenResult | None
