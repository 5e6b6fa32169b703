"""What the metrics beside MultiGen need, found and checked before any work (part of the run's preflight):
the weights of each enabled metric, the VISOR prompts, the real image sets with their captions, the
grounded shards. Problems are returned as lines, like MultiGen's own preflight.

A real set's captions file is COCO's captions JSON (``images`` with ``id``/``file_name``,
``annotations`` with ``image_id``/``caption``) or JSON Lines of ``{"image": file name, "caption": text}``.
Its prompts are its images that exist in the folder, sorted by file name, each with its first caption
(prompt id = position); captions naming a missing image, and images without a caption, are counted
and left out, and the counts are reported.
"""
from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path

from tokencompose.schemas.evaluation import EvaluateConfig, RealImagesConfig
from tokencompose.tasks.models.weights import WeightSpec, locate_weights, missing_files, read_folder_config
from tokencompose.tasks.multigen.prompts import Prompt

VISOR_SET = "visor"
OPTIGEN_SET = "optigen"
MULTIGEN_SET = "multigen"


class CaptionsError(ValueError):
    """A captions file that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class RealSet:
    name: str
    images: Path
    prompts: tuple[Prompt, ...]
    files: tuple[Path, ...]                      # the real image of each prompt, in prompt order
    left_out: dict[str, int] = field(default_factory=dict)


@dataclass
class MetricsPlan:
    """Everything the enabled metrics need, located; None / empty where a metric is off."""

    visor_prompts: list = field(default_factory=list)       # SpatialPrompt
    visor_detector: Path | None = None
    real_sets: list[RealSet] = field(default_factory=list)
    inception: Path | None = None
    clip_checkpoint: Path | None = None
    language_model: Path | None = None
    grounding_shards: list[str] = field(default_factory=list)

    def real_set(self, name: str) -> RealSet:
        return next(s for s in self.real_sets if s.name == name)


def _file_spec(key: str, what: str, name: str, source: str) -> WeightSpec:
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        return WeightSpec(key=key, what=what, candidates=(name,), source=source, explicit=path)
    return WeightSpec(key=key, what=what, candidates=(name,), source=source)


def _folder_spec(key: str, what: str, name: str, members: tuple[tuple[str, ...], ...]) -> WeightSpec:
    path = Path(name).expanduser()
    if path.is_dir() or path.is_absolute() or name.startswith((".", "~")):
        return WeightSpec(key=key, what=what, candidates=(name,), source="a transformers folder (save_pretrained)",
                          members=members, explicit=path)
    return WeightSpec(key=key, what=what, candidates=(name,), hub=((name, ()),), members=members,
                      source=f"the hub repository {name}")


DETECTOR_MEMBERS = (("config.json",), ("preprocessor_config.json",), ("model.safetensors", "pytorch_model.bin"),
                    ("tokenizer.json", "vocab.json"))
LANGUAGE_MODEL_MEMBERS = (("config.json",), ("model.safetensors", "pytorch_model.bin"), ("tokenizer.json", "vocab.json"))


def check_owl_folder(path: Path) -> list[str]:
    """What is wrong with ``path`` as an OWL-ViT or OWLv2 detector folder (empty: nothing)."""
    config, problems = read_folder_config(path, "config.json", "no config.json (not a transformers model folder)")
    if problems:
        return problems
    if config.get("model_type") not in ("owlvit", "owlv2"):
        problems.append(f"{path / 'config.json'}: model_type is {config.get('model_type')!r}, VISOR's detector must be "
                        "an OWL-ViT ('owlvit') or OWLv2 ('owlv2')")
    return problems + missing_files(path, DETECTOR_MEMBERS)


def read_captions(path: Path) -> dict[str, list[str]]:
    """Image file name -> its captions (file order), from COCO's captions JSON or JSON Lines."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CaptionsError(f"{path}: cannot be read ({error})") from None
    if path.suffix.lower() == ".json":
        return _coco_captions(path, text)
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise CaptionsError(f"{path}: line {number}: not JSON ({error})") from None
        if not (isinstance(row, dict) and isinstance(row.get("image"), str) and isinstance(row.get("caption"), str)):
            raise CaptionsError(f'{path}: line {number}: expected {{"image": file name, "caption": text}}')
        if row["caption"].strip():
            captions.setdefault(row["image"], []).append(row["caption"].strip())
    return captions


def _coco_captions(path: Path, text: str) -> dict[str, list[str]]:
    try:
        data = json.loads(text)
        files = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
        pairs = [(int(a["image_id"]), str(a["caption"])) for a in data["annotations"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CaptionsError(f"{path}: not a COCO captions file (images with id and file_name, annotations with "
                            f"image_id and caption): {type(error).__name__}: {error}") from None
    captions: dict[str, list[str]] = {}
    for image_id, caption in sorted(pairs, key=lambda pair: pair[0]):
        if image_id in files and caption.strip():
            captions.setdefault(files[image_id], []).append(" ".join(caption.split()))
    return captions


def real_set(spec: RealImagesConfig) -> RealSet:
    """The prompts of one real set: its images that exist, sorted, with their first caption."""
    folder = Path(spec.images).expanduser()
    if not folder.is_dir():
        raise CaptionsError(f"{folder}: the real-image folder of set {spec.name!r} does not exist")
    captions = read_captions(Path(spec.captions).expanduser())
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    usable = sorted(name for name in captions if name in present)
    left_out = {"captions naming a missing image": len(set(captions) - present),
                "images without a caption": len({n for n in present if n.lower().endswith(
                    (".png", ".jpg", ".jpeg", ".webp", ".bmp"))} - set(captions))}
    if spec.limit:
        usable = usable[:spec.limit]
    if len(usable) < 2:
        raise CaptionsError(f"set {spec.name!r}: {len(usable)} images of {folder} have a caption in {spec.captions}; "
                            f"FID needs at least 2")
    prompts = tuple(Prompt(id=i, text=captions[name][0], categories=(), where=f"{spec.captions}: {name}")
                    for i, name in enumerate(usable))
    return RealSet(spec.name, folder, prompts, tuple(folder / name for name in usable),
                   {k: v for k, v in left_out.items() if v})


def metrics_preflight(config: EvaluateConfig) -> tuple[MetricsPlan, list[str]]:
    """The metrics' inputs located and checked; (plan, problems)."""
    from tokencompose.tasks.evaluation.optigen import check_language_model_folder
    from tokencompose.tasks.evaluation.visor import quick_prompts, spatial_prompts
    metrics, plan, problems = config.metrics, MetricsPlan(), []
    if metrics.visor.enabled:
        every = spatial_prompts()
        plan.visor_prompts = quick_prompts(every, metrics.visor.limit, metrics.visor.sample_seed) \
            if metrics.visor.limit else every
        found, problem = locate_weights(_folder_spec("visor_detector", "VISOR's OWL-ViT detector", metrics.visor.detector,
                                              DETECTOR_MEMBERS), config)
        problems += [f"visor detector: {problem}"] if problem else \
            [f"visor detector: {p}" for p in check_owl_folder(found)]  # type: ignore[arg-type]
        plan.visor_detector = found
    for spec in metrics.fid.real:
        try:
            plan.real_sets.append(real_set(spec))
        except CaptionsError as error:
            problems.append(f"fid set {spec.name}: {error}")
    if metrics.fid.real:
        plan.inception, problem = locate_weights(_file_spec("inception", "torch-fidelity's Inception weights",
                                                     metrics.fid.inception, "torch-fidelity's release "
                                                     "weights-inception-2015-12-05-6726825d.pth"), config)
        problems += [f"fid inception: {problem}"] if problem else []
    if metrics.clip_score.enabled:
        plan.clip_checkpoint, problem = _clip_checkpoint(config)
        problems += [f"clip score: {problem}"] if problem else []
    if metrics.optigen.enabled:
        found, problem = locate_weights(_folder_spec("optigen_lm", "OptiGen's language model", metrics.optigen.language_model,
                                              LANGUAGE_MODEL_MEMBERS), config)
        problems += [f"optigen language model: {problem}"] if problem else \
            [f"optigen language model: {p}" for p in check_language_model_folder(found)]  # type: ignore[arg-type]
        plan.language_model = found
    if metrics.grounding.shards:
        plan.grounding_shards, missing = _expand(metrics.grounding.shards)
        problems += [f"grounding: no shard matches {pattern}" for pattern in missing]
    return plan, problems


def _clip_checkpoint(config: EvaluateConfig) -> tuple[Path | None, str | None]:
    from tokencompose.tasks.models.weights import clip_spec

    spec = clip_spec(config.metrics.clip_score.model, config.metrics.clip_score.pretrained)
    if spec.explicit_problem:
        return None, spec.explicit_problem
    return locate_weights(spec, config)


def _expand(patterns: list[str]) -> tuple[list[str], list[str]]:
    """Shard paths of brace/glob patterns (sorted per pattern) and the patterns that match nothing."""
    from braceexpand import braceexpand

    shards: list[str] = []
    missing: list[str] = []
    for pattern in patterns:
        matched = sorted({path for part in braceexpand(str(Path(pattern).expanduser()))
                          for path in (glob.glob(part) or ([part] if Path(part).is_file() else []))})
        shards += matched
        if not matched:
            missing.append(pattern)
    return shards, missing
