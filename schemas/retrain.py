"""The scheduled retraining configuration: which data to grow, how long to train, how to judge."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from tokencompose.schemas.base import StrictModel
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.evaluation import EvaluateConfig
from tokencompose.schemas.training import TrainConfig

Metric = Literal["MG1", "MG2", "MG3", "MG4", "MG5"]
# The flow fills these in itself: a run must not set them.
TRAIN_SET_BY_FLOW = ("pretrained_model", "shards", "output_dir", "max_steps")
EVALUATE_SET_BY_FLOW = ("pipelines", "labels", "out_dir")
QUICK_EVALUATION: dict[str, Any] = {"benchmark": {"name": "coco", "limit": 50},
                                    "generation": {"images_per_prompt": 2}}


def _overrides(name: str, section: type[StrictModel], set_by_flow: tuple[str, ...]) -> type[StrictModel]:
    """A model of ``section``'s fields less those the flow sets, with the same types, defaults and field
    validators: an unknown key is an error naming it."""
    fields: dict[str, Any] = {key: (field.annotation, field) for key, field in section.model_fields.items()
                              if key not in set_by_flow}
    validators = {}
    for label, decorator in section.__pydantic_decorators__.field_validators.items():
        kept = [key for key in decorator.info.fields if key in fields]
        if kept:
            function = getattr(decorator.func, "__func__", decorator.func)  # the classmethod's function
            validators[label] = field_validator(*kept, mode=decorator.info.mode)(function)
    return create_model(name, __base__=StrictModel, __doc__=f"The {section.__name__} fields a retraining run "
                        f"sets (all but {', '.join(set_by_flow)}).", __validators__=validators, **fields)


TrainOverrides = _overrides("TrainOverrides", TrainConfig, TRAIN_SET_BY_FLOW)
EvaluationOverrides = _overrides("EvaluationOverrides", EvaluateConfig, EVALUATE_SET_BY_FLOW)


def _changed(overrides: BaseModel) -> dict[str, Any]:
    """The values that differ from the defaults (nested sections too), as JSON data: what is laid over the
    defaults, and what the training hash covers (the same after a JSON round trip of the configuration)."""
    return overrides.model_dump(mode="json", exclude_defaults=True)


class RetrainConfig(StrictModel):
    """grow the dataset -> train the candidate -> MultiGen quick mode on candidate and promoted -> decide."""

    build: BuildConfig = Field(description="the build-grounded-coco configuration of the growing dataset")
    base_model: Path = Field(description="the Stable Diffusion folder trained from while nothing is promoted")
    registry_dir: Path = Field(default=Path("registry"), description="the model registry folder")
    runs_dir: Path = Field(default=Path("runs/retrain"), description="each run's training and evaluation output")
    steps: int = Field(default=1000, ge=1, description="optimizer steps per retraining")
    train: TrainOverrides = Field(default=TrainOverrides(), description="other TrainConfig fields (e.g. "  # type: ignore[valid-type]
                                  "mixed_precision)")
    evaluation: EvaluationOverrides = Field(default=EvaluationOverrides.model_validate(QUICK_EVALUATION),  # type: ignore[valid-type]
                                            description="EvaluateConfig fields of the quick MultiGen run "
                                            "(benchmark, generation, detection, report, models)")
    metric: Metric = Field(default="MG3", description="the MultiGen metric that decides")
    margin: float = Field(default=0.0, ge=0, description="percentage points the candidate must beat the promoted by")

    @model_validator(mode="before")
    @classmethod
    def _flow_settings_left_alone(cls, data: Any) -> Any:
        for name, fixed in (("train", TRAIN_SET_BY_FLOW), ("evaluation", EVALUATE_SET_BY_FLOW)):
            given = data.get(name) if isinstance(data, dict) else None
            clash = sorted(set(given) & set(fixed)) if isinstance(given, dict) else []
            if clash:
                raise ValueError(f"{name} must not set {', '.join(clash)}: the retraining flow sets them")
        return data

    @model_validator(mode="after")
    def _nested_settings(self) -> "RetrainConfig":
        self.train_config(self.base_model, ["validation.tar"], self.runs_dir)
        self.evaluate_config([str(self.base_model)], ["baseline"], self.runs_dir)
        return self

    def train_config(self, model: Path, shards: list[str], output_dir: Path) -> TrainConfig:
        return TrainConfig.model_validate({**_changed(self.train), "pretrained_model": model, "shards": shards,
                                           "output_dir": output_dir, "max_steps": self.steps})

    def evaluate_config(self, pipelines: list[str], labels: list[str], out_dir: Path) -> EvaluateConfig:
        return EvaluateConfig.model_validate({**_changed(self.evaluation), "pipelines": pipelines, "labels": labels,
                                              "out_dir": out_dir})

    def train_hash(self) -> str:
        """What decides the training besides the data and the starting model."""
        blob = json.dumps({"train": _changed(self.train), "steps": self.steps}, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
