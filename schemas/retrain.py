"""The scheduled retraining configuration: which data to grow, how long to train, how to judge."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from tokencompose.schemas.base import StrictModel
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.evaluation import EvaluateConfig, MetricsConfig
from tokencompose.schemas.training import TrainConfig

# The keys of the mean-MGk comparison that the gate replaced; an old configuration's values map onto the gate.
OLD_KEYS = {"metric": "level", "margin": "margin"}
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


class GateSettings(StrictModel):
    """The promotion gate (tasks/evaluation/gate.py): a candidate replaces the promoted model only when its
    composition gain's paired-bootstrap lower bound exceeds ``margin`` and its FID and CLIP score have not
    degraded beyond their tolerances, all measured on the same quick evaluation. A tolerance of None
    (``null``) leaves that criterion unjudged: an explicit opt-out for a run without real images."""

    level: int = Field(default=3, ge=1, le=5, description="the MG_k whose gain is judged (MG3: the paper's headline)")
    margin: float = Field(default=0.0, ge=0, description="the gain's lower bound must exceed this (MG percentage "
                          "points)")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="one-sided confidence of the gain's lower "
                              "bound (CLIP score's two-sided interval uses the same)")
    bootstrap_samples: int = Field(default=2000, ge=100, description="paired bootstrap resamples of the prompts")
    seed: int = Field(default=0, description="seed of the bootstrap's prompt draws")
    fid_tolerance: float | None = Field(default=0.5, ge=0, description="largest allowed FID increase (candidate "
                                        "minus baseline, on the first evaluation.metrics.fid.real set); null: FID is "
                                        "not judged")
    clip_tolerance: float | None = Field(default=0.5, ge=0, description="largest allowed drop of the mean per-prompt "
                                         "CLIP score (100 x cosine); null: CLIP score is not judged")


def _old_comparison_onto_gate(data: Any) -> Any:
    """``metric: MG3`` / ``margin: 1.0`` of configurations written before the gate become ``gate.level`` /
    ``gate.margin``; an old key beside its gate key is refused, naming both."""
    if not isinstance(data, dict) or not set(OLD_KEYS) & set(data):
        return data
    gate = data.get("gate", {})
    if isinstance(gate, BaseModel):
        gate = gate.model_dump(exclude_unset=True)
    if not isinstance(gate, dict):
        return data   # gate's own validation names what is wrong with it
    data, gate = dict(data), dict(gate)
    for old, new in OLD_KEYS.items():
        if old not in data:
            continue
        if new in gate:
            raise ValueError(f"{old} and gate.{new} are both set: {old} is the old name of gate.{new}; keep gate.{new}")
        value = data.pop(old)
        if old == "metric":
            if not (isinstance(value, str) and value.upper() in {f"MG{k}" for k in range(1, 6)}):
                raise ValueError(f"metric {value!r} must be one of MG1..MG5 (it sets gate.level; prefer gate.level)")
            value = int(value[2:])
        gate[new] = value
    data["gate"] = gate
    return data


class RetrainConfig(StrictModel):
    """grow the dataset -> train the candidate -> quick evaluation of candidate and promoted -> the gate decides."""

    build: BuildConfig = Field(description="the build-grounded-coco configuration of the growing dataset")
    base_model: Path = Field(description="the Stable Diffusion folder trained from while nothing is promoted")
    registry_dir: Path = Field(default=Path("registry"), description="the model registry folder")
    runs_dir: Path = Field(default=Path("runs/retrain"), description="each run's training and evaluation output")
    steps: int = Field(default=1000, ge=1, description="optimizer steps per retraining")
    train: TrainOverrides = Field(default=TrainOverrides(), description="other TrainConfig fields (e.g. "  # type: ignore[valid-type]
                                  "mixed_precision)")
    evaluation: EvaluationOverrides = Field(default=EvaluationOverrides.model_validate(QUICK_EVALUATION),  # type: ignore[valid-type]
                                            description="EvaluateConfig fields of the quick evaluation "
                                            "(benchmark, generation, detection, report, metrics, models)")
    gate: GateSettings = Field(default=GateSettings(), description="when the candidate is promoted: its MG gain "
                               "beyond noise and the margin, FID and CLIP score within tolerance (old keys metric / "
                               "margin map onto gate.level / gate.margin)")

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return _old_comparison_onto_gate(data)

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

    @model_validator(mode="after")
    def _gate_has_its_evidence(self) -> "RetrainConfig":
        """A judged FID needs a real image set, a judged CLIP score the CLIP score: said at load, before work."""
        metrics = self._metrics()
        missing = []
        if self.gate.fid_tolerance is not None and not metrics.fid.real:
            missing.append(f"gate.fid_tolerance is {self.gate.fid_tolerance:g} but the evaluation measures no FID: "
                           "add a real image set under evaluation.metrics.fid.real (name, images, captions), or set "
                           "gate.fid_tolerance: null to promote without judging FID")
        if self.gate.clip_tolerance is not None and not metrics.clip_score.enabled:
            missing.append(f"gate.clip_tolerance is {self.gate.clip_tolerance:g} but the evaluation measures no CLIP "
                           "score: set evaluation.metrics.clip_score.enabled: true, or set gate.clip_tolerance: null "
                           "to promote without judging CLIP score")
        if missing:
            raise ValueError("; ".join(missing))
        return self

    def _metrics(self) -> MetricsConfig:
        return self.evaluate_config([str(self.base_model)], ["baseline"], self.runs_dir).metrics

    def fid_set(self) -> str | None:
        """The image set whose FID the gate judges: the first real set, None without one."""
        real = self._metrics().fid.real
        return real[0].name if real else None

    def clip_set(self) -> str:
        """The image set whose CLIP score the gate judges: the first real set's generations, else MultiGen's."""
        return self.fid_set() or "multigen"

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
