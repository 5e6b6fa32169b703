"""Model weights: which files each backend needs, where they are looked for, and what is missing.

Nothing here downloads anything. Weights are looked for, in order:

1. an explicit path given in the configuration (``captions.clip_pretrained``, ``nouns.flair_model``,
   ``grounding.text_encoder`` may each be a file or folder path);
2. the models folder: ``models.models_dir``, else ``$TOKENCOMPOSE_MODELS``, else
   ``~/.cache/tokencompose/models``. Single checkpoints lie at its top level
   (``groundingdino_swint_ogc.pth``, ``sam_hq_vit_h.pth``); hub-hosted models mirror their hub
   name (``bert-base-uncased/``, ``flair/pos-english/pytorch_model.bin``,
   ``timm/vit_large_patch14_clip_336.openai/open_clip_model.safetensors``);
3. an existing Hugging Face hub cache (``models.hf_cache``, else ``$HF_HUB_CACHE``, else
   ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``): the snapshot that ``refs/main`` names, as
   huggingface_hub resolves it, for every file that a hub repository hosts.

docs/models.md lists every file with its size, checksum (where recorded) and origin.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tokencompose.schemas.config import BuildConfig

ENV_MODELS_DIR = "TOKENCOMPOSE_MODELS"
DEFAULT_MODELS_DIR = Path("~/.cache/tokencompose/models")
NOT_RECORDED = "not recorded"


class MissingWeights(RuntimeError):
    """A backend cannot load because weight files are missing; the message names each of them."""


@dataclass(frozen=True)
class WeightSpec:
    """One model's weights: a single file, or a folder of files (``members``).

    ``candidates`` are paths under the models folder, any one of which satisfies the spec (the
    first is where the docs tell you to put it); ``hub`` lists (repository, file names) pairs
    looked for in the Hugging Face cache. For a folder, ``members`` are the files it must hold,
    each a tuple of alternatives (e.g. ``model.safetensors`` or ``pytorch_model.bin``).
    """

    key: str
    what: str
    candidates: tuple[str, ...]
    source: str
    hub: tuple[tuple[str, tuple[str, ...]], ...] = ()
    members: tuple[tuple[str, ...], ...] = ()
    size: str = NOT_RECORDED
    checksums: tuple[tuple[str, str], ...] = ()  # (file name, sha256) where recorded for certain
    explicit: Path | None = None
    explicit_problem: str | None = None

    @property
    def is_folder(self) -> bool:
        return bool(self.members)

    @property
    def display_name(self) -> str:
        return self.candidates[0]


@dataclass
class Locations:
    models_dir: Path
    hf_cache: Path | None
    searched: list[str] = field(default_factory=list)


def models_dir(config: BuildConfig | None = None) -> Path:
    """The models folder: configuration, then $TOKENCOMPOSE_MODELS, then ~/.cache/tokencompose/models."""
    if config is not None and config.models.models_dir is not None:
        return Path(config.models.models_dir).expanduser()
    if os.environ.get(ENV_MODELS_DIR):
        return Path(os.environ[ENV_MODELS_DIR]).expanduser()
    return DEFAULT_MODELS_DIR.expanduser()


def hf_cache_dir(config: BuildConfig | None = None) -> Path | None:
    """The Hugging Face hub cache to read, or None when the configuration turns it off."""
    if config is not None and not config.models.use_hf_cache:
        return None
    if config is not None and config.models.hf_cache is not None:
        return Path(config.models.hf_cache).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def _hub_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def _cached_snapshot(hf_cache: Path, repo: str) -> Path | None:
    """The snapshot folder that the cache's ``refs/main`` names (huggingface_hub's own lookup)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, cache_dir=hf_cache, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _cached_file(hf_cache: Path, repo: str, name: str) -> Path | None:
    """A file of the ``refs/main`` snapshot, or None (huggingface_hub's own lookup)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, name, cache_dir=hf_cache)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _folder_complete(folder: Path, members: Sequence[tuple[str, ...]]) -> bool:
    return folder.is_dir() and all(any((folder / name).is_file() for name in options) for options in members)


def find_weights(spec: WeightSpec, models_dir: Path, hf_cache: Path | None = None,
                 searched: list[str] | None = None) -> Path | None:
    """Where a spec's file (or folder) is, or None; ``searched`` collects every place looked at."""
    searched = searched if searched is not None else []
    if spec.explicit is not None:
        searched.append(str(spec.explicit))
        ok = _folder_complete(spec.explicit, spec.members) if spec.is_folder else spec.explicit.is_file()
        return spec.explicit if ok else None
    if spec.explicit_problem:
        return None
    for candidate in spec.candidates:
        path = models_dir / candidate
        searched.append(str(path))
        if (spec.is_folder and _folder_complete(path, spec.members)) or (not spec.is_folder and path.is_file()):
            return path
    if hf_cache is not None:
        for repo, names in spec.hub:
            searched.append(str(hf_cache / _hub_folder(repo)) + " (the snapshot refs/main names)")
            if spec.is_folder:
                snapshot = _cached_snapshot(hf_cache, repo)
                if snapshot is not None and _folder_complete(snapshot, spec.members):
                    return snapshot
            else:
                for name in names:
                    found = _cached_file(hf_cache, repo, name)
                    if found is not None:
                        return found
    return None


def describe_missing(spec: WeightSpec, searched: Sequence[str], models_dir: Path) -> str:
    if spec.explicit_problem:
        return spec.explicit_problem
    kind = "folder" if spec.is_folder else "file"
    needs = ""
    if spec.is_folder:
        needs = " (holding " + ", ".join(" or ".join(options) for options in spec.members) + ")"
    return (f"missing {kind} {spec.display_name}{needs}: {spec.what}; looked in {', '.join(searched)}; "
            f"get it from {spec.source} and put it at {models_dir / spec.display_name}")


# ---------------------------------------------------------------------------------------------
# The registry: which weights each backend needs under a configuration.
# ---------------------------------------------------------------------------------------------

GROUNDINGDINO_SWINT_OGC = WeightSpec(
    key="groundingdino_swint_ogc",
    what="GroundingDINO SwinT-OGC detector weights",
    candidates=("groundingdino_swint_ogc.pth",),
    hub=(("ShilongLiu/GroundingDINO", ("groundingdino_swint_ogc.pth",)),),
    source="https://github.com/IDEA-Research/GroundingDINO/releases/download/v0.1.0-alpha/groundingdino_swint_ogc.pth "
           "(also the hub repository ShilongLiu/GroundingDINO)",
)

SAM_HQ_VARIANTS = ("vit_h", "vit_l", "vit_b", "vit_tiny")


def sam_hq_spec(variant: str) -> WeightSpec:
    if variant not in SAM_HQ_VARIANTS:
        raise ValueError(f"unknown SAM-HQ variant {variant!r}; known: {', '.join(SAM_HQ_VARIANTS)}")
    name = f"sam_hq_{variant}.pth"
    return WeightSpec(
        key=f"sam_hq_{variant}", what=f"SAM-HQ {variant} segmenter weights", candidates=(name,),
        hub=(("lkeab/hq-sam", (name,)),),
        source=f"the hub repository lkeab/hq-sam (file {name}); links also in the README of "
               "https://github.com/SysCV/sam-hq")


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def text_encoder_spec(name: str = "bert-base-uncased") -> WeightSpec:
    members = (("config.json",), ("vocab.txt",), ("model.safetensors", "pytorch_model.bin"))
    if Path(name).expanduser().is_dir() or _looks_like_path(name):
        path = Path(name).expanduser()
        return WeightSpec(key="text_encoder", what="GroundingDINO text encoder (BERT model and tokenizer)",
                          candidates=(name,), source="a BERT folder saved with save_pretrained",
                          members=members, explicit=path)
    repos = ("google-bert/bert-base-uncased", "bert-base-uncased") if name == "bert-base-uncased" else (name,)
    candidates = (name,) + tuple(r for r in repos if r != name)
    return WeightSpec(
        key="text_encoder", what=f"GroundingDINO text encoder {name} (BERT model and tokenizer)",
        candidates=candidates, hub=tuple((r, ()) for r in repos), members=members,
        source=f"the hub repository {repos[0]} (files config.json, vocab.txt, tokenizer_config.json, "
               "tokenizer.json, model.safetensors)")


def flair_spec(model: str = "flair/pos-english") -> WeightSpec:
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "pytorch_model.bin"
    if path.is_file() or _looks_like_path(model):
        return WeightSpec(key="flair_pos", what="flair part-of-speech tagger", candidates=(model,),
                          source="a flair SequenceTagger saved with .save()", explicit=path)
    return WeightSpec(
        key="flair_pos", what=f"flair part-of-speech tagger {model}",
        candidates=(f"{model}/pytorch_model.bin", f"{model.replace('/', '-')}.pt"),
        hub=((model, ("pytorch_model.bin",)),),
        source=f"the hub repository {model} (file pytorch_model.bin)")


def known_clip_pretrained(model: str, pretrained: str) -> dict | None:
    """open_clip's pretrained config (``hf_hub``, ``url``) of common model/tag pairs, from the table bundled in
    data/ (tests check it against open_clip), so a preflight answers without importing open_clip."""
    from tokencompose.data import DATA_DIR

    table = json.loads((DATA_DIR / "open_clip_pretrained.json").read_text())
    return table.get(f"{model}/{pretrained}")


def clip_spec(model: str = "ViT-L-14-336", pretrained: str = "openai") -> WeightSpec:
    """The CLIP checkpoint for an open_clip model and pretrained tag (or file path)."""
    path = Path(pretrained).expanduser()
    if path.is_file() or _looks_like_path(pretrained):
        return WeightSpec(key="clip", what=f"open_clip {model} checkpoint", candidates=(pretrained,),
                          source="an open_clip checkpoint (state dict)", explicit=path)
    cfg = known_clip_pretrained(model, pretrained)
    if cfg is None:
        import open_clip     # seconds to import: only for a tag the bundled table does not know

        cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        import open_clip

        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        return WeightSpec(key="clip", what="CLIP checkpoint", candidates=(f"{model}/{pretrained}",), source="",
                          explicit_problem=f"captions: open_clip has no pretrained tag {pretrained!r} for model "
                                           f"{model!r} (known tags: {tags}); or give a checkpoint file path")
    candidates: list[str] = []
    hub: list[tuple[str, tuple[str, ...]]] = []
    sources: list[str] = []
    if cfg.get("hf_hub"):
        hf = cfg["hf_hub"]
        names: tuple[str, ...]
        if hf.endswith("/"):
            repo, names = hf.rstrip("/"), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        else:
            repo, filename = hf.rsplit("/", 1)
            names = (filename,)
        candidates += [f"{repo}/{name}" for name in names]
        hub.append((repo, names))
        sources.append(f"the hub repository {repo} (file {' or '.join(names)})")
    checksums: list[tuple[str, str]] = []
    if cfg.get("url"):
        url_name = cfg["url"].rsplit("/", 1)[-1]
        candidates.append(f"open_clip/{url_name}")
        sources.append(cfg["url"])
        parts = cfg["url"].split("/")
        if len(parts) > 2 and len(parts[-2]) == 64 and all(c in "0123456789abcdef" for c in parts[-2]):
            # OpenAI's download URLs carry the file's sha256 (open_clip checks it after downloading)
            checksums.append((url_name, parts[-2]))
    return WeightSpec(key="clip", what=f"open_clip {model} weights, pretrained tag {pretrained!r}",
                      candidates=tuple(candidates), hub=tuple(hub), source=" or ".join(sources) or "unknown",
                      checksums=tuple(checksums))


def _clip_specs(config: BuildConfig) -> list[WeightSpec]:
    return [clip_spec(config.captions.clip_model, config.captions.clip_pretrained)]


def _flair_specs(config: BuildConfig) -> list[WeightSpec]:
    return [flair_spec(config.nouns.flair_model)]


def _grounded_sam_specs(config: BuildConfig) -> list[WeightSpec]:
    return [GROUNDINGDINO_SWINT_OGC, text_encoder_spec(config.grounding.text_encoder),
            sam_hq_spec(config.grounding.sam_variant)]


SD14_REPO = "CompVis/stable-diffusion-v1-4"
OWLV2_REPO = "google/owlv2-large-patch14-ensemble"

# A diffusers Stable Diffusion folder (what save_pretrained writes and the hub repository holds)
STABLE_DIFFUSION_MEMBERS: tuple[tuple[str, ...], ...] = (
    ("model_index.json",),
    ("unet/config.json",), ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
    ("vae/config.json",), ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
    ("text_encoder/config.json",), ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
    ("tokenizer/vocab.json", "tokenizer/tokenizer.json"), ("scheduler/scheduler_config.json",),
)
OWLV2_MEMBERS: tuple[tuple[str, ...], ...] = (
    ("config.json",), ("preprocessor_config.json",), ("model.safetensors", "pytorch_model.bin"),
    ("tokenizer.json", "vocab.json"), ("tokenizer_config.json",),
)


TRAINING_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_training_folder(path: Path) -> None:
    """The Stable Diffusion folder a training starts from: fail early, naming what is missing (nothing is
    downloaded, nothing heavy imported)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Stable Diffusion folder {path} does not exist; download a diffusers-format model "
                                "(e.g. CompVis/stable-diffusion-v1-4) on a machine with hub access and copy it here")
    missing = [name for name in TRAINING_SUBFOLDERS if not (path / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{path} is not a diffusers Stable Diffusion folder: missing {', '.join(missing)}/ "
                                "(expected model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)")


def stable_diffusion_spec(name: str = SD14_REPO) -> WeightSpec:
    """A Stable Diffusion pipeline folder (MultiGen generation, attention maps): a path, or a hub name
    mirrored under the models folder (``CompVis/stable-diffusion-v1-4/``)."""
    what = "Stable Diffusion pipeline (diffusers folder)"
    path = Path(name).expanduser()
    if path.is_dir() or _looks_like_path(name):
        return WeightSpec(key=f"stable_diffusion:{name}", what=what, candidates=(name,),
                          source="a diffusers StableDiffusionPipeline folder (save_pretrained, or a train-tokencompose "
                                 "export's pipeline/)", members=STABLE_DIFFUSION_MEMBERS, explicit=path)
    return WeightSpec(
        key=f"stable_diffusion:{name}", what=what, candidates=(name,), hub=((name, ()),),
        members=STABLE_DIFFUSION_MEMBERS,
        source=f"the hub repository {name} (the files above; safety_checker/ and feature_extractor/ are not used)")


def owlv2_spec(name: str = OWLV2_REPO) -> WeightSpec:
    """The OWLv2 detector folder (MultiGen detection): a path, or a hub name under the models folder."""
    what = "OWLv2 detector (transformers folder)"
    path = Path(name).expanduser()
    if path.is_dir() or _looks_like_path(name):
        return WeightSpec(key=f"owlv2:{name}", what=what, candidates=(name,),
                          source="an Owlv2ForObjectDetection + Owlv2Processor folder (save_pretrained)",
                          members=OWLV2_MEMBERS, explicit=path)
    return WeightSpec(
        key=f"owlv2:{name}", what=what, candidates=(name,), hub=((name, ()),), members=OWLV2_MEMBERS,
        source=f"the hub repository {name} (config.json, preprocessor_config.json, model.safetensors, tokenizer.json, "
               "tokenizer_config.json, vocab.json, merges.txt, special_tokens_map.json)")


def evaluation_specs(pipelines: Iterable[str], detector: str) -> list[WeightSpec]:
    """The folders a MultiGen run needs: each Stable Diffusion pipeline and the detector."""
    specs: dict[str, WeightSpec] = {}
    for name in pipelines:
        spec = stable_diffusion_spec(name)
        specs.setdefault(spec.key, spec)
    spec = owlv2_spec(detector)
    specs.setdefault(spec.key, spec)
    return list(specs.values())


# backend name -> the weights it needs under a configuration
BACKEND_WEIGHTS: dict[str, Callable[[BuildConfig], list[WeightSpec]]] = {
    "clip": _clip_specs,
    "flair": _flair_specs,
    "grounded_sam": _grounded_sam_specs,
    "hybrid": _grounded_sam_specs,
}


def specs_for(config: BuildConfig, backends: Iterable[str] | None = None) -> list[WeightSpec]:
    """The weights the configuration's backends (or the named ones) need, without duplicates."""
    names = backends if backends is not None else [config.backend(s) for s in ("captions", "nouns", "grounding")]
    specs: dict[str, WeightSpec] = {}
    for name in names:
        for spec in BACKEND_WEIGHTS.get(name, lambda c: [])(config):
            specs.setdefault(spec.key, spec)
    return list(specs.values())


def locate(config: BuildConfig, spec: WeightSpec) -> Path:
    """The path of a spec's weights, or :class:`MissingWeights` naming the file and where to get it."""
    searched: list[str] = []
    root = models_dir(config)
    found = find_weights(spec, root, hf_cache_dir(config), searched)
    if found is None:
        raise MissingWeights(describe_missing(spec, searched, root))
    return found


def missing_weights(config: BuildConfig, backends: Iterable[str] | None = None) -> list[str]:
    """One message per missing weight file of the configuration's backends: the file, every place it
    was looked for, and where to get it. Empty when everything is present."""
    root, cache = models_dir(config), hf_cache_dir(config)
    problems = []
    for spec in specs_for(config, backends):
        searched: list[str] = []
        if find_weights(spec, root, cache, searched) is None:
            problems.append(describe_missing(spec, searched, root))
    return problems


def all_specs(config: BuildConfig | None = None) -> list[WeightSpec]:
    """Every weight file the project knows of (all SAM-HQ variants included)."""
    clip = config.captions if config else None
    specs = [clip_spec(clip.clip_model, clip.clip_pretrained) if clip else clip_spec(),
             flair_spec(config.nouns.flair_model if config else "flair/pos-english"),
             GROUNDINGDINO_SWINT_OGC,
             text_encoder_spec(config.grounding.text_encoder if config else "bert-base-uncased")]
    specs += [sam_hq_spec(v) for v in SAM_HQ_VARIANTS]
    specs += [stable_diffusion_spec(), owlv2_spec()]  # MultiGen (tokencompose evaluate / attention)
    return specs


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def read_folder_config(folder: Path, file_name: str, not_found: str) -> tuple[dict, list[str]]:
    """A model folder's JSON description (``config.json``, ``model_index.json``) and the problem that
    stops reading it, if any; ``not_found`` says what a folder without the file is not."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}, [f"{folder}: not a folder"]
    file = folder / file_name
    if not file.is_file():
        return {}, [f"{folder}: {not_found}"]
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return {}, [f"{file}: not valid JSON ({error})"]
    if not isinstance(config, dict):
        return {}, [f"{file}: not a JSON object"]
    return config, []


def missing_files(folder: Path, needed: Iterable[Sequence[str]], subfolder: str = "") -> list[str]:
    """One line per group of alternative file names of which ``folder`` (or its ``subfolder``) has none."""
    where = Path(folder) / subfolder
    prefix = f"{subfolder}/" if subfolder else ""
    return [f"{folder}: missing {prefix}{' or '.join(options)}" for options in needed
            if not any((where / name).is_file() for name in options)]


def locate_weights(spec: WeightSpec, config) -> tuple[Path | None, str | None]:
    """(where ``spec``'s weights are, None) or (None, why not). A path given is used as is (a folder spec
    needs a folder; its own check then says what is wrong inside it); a name is looked up in the models
    folder and the hub cache."""
    if spec.explicit is not None:
        if spec.explicit.is_dir() if spec.is_folder else spec.explicit.exists():
            return spec.explicit, None
        if spec.is_folder:
            return None, f"{spec.explicit}: no such folder (a local path; expected {spec.what}: {spec.source})"
        return None, f"{spec.explicit} does not exist ({spec.what})"
    searched: list[str] = []
    root = models_dir(config)
    found = find_weights(spec, root, hf_cache_dir(config), searched)
    return (found, None) if found is not None else (None, describe_missing(spec, searched, root))

