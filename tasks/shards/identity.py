"""What decides a shard's bytes besides its records and the configuration: the build identity.

:func:`build_identity` collects, without loading any model, everything else that changes a
shard's bytes: the dataset format version, the code that runs (every module and table of the
package a shard depends on), the device and precisions as they resolve on this machine, the
versions of the libraries each backend uses, and each weight file's size and sha256. It goes
into the shard task's cache key and into every sample's provenance (``Provenance.build``).

Weight files are hashed once: digests are remembered by (path, size, mtime) in the process and in
``OUT/.cache/weight-digests.json``, so a rerun does not read gigabytes again.
"""
from __future__ import annotations

import hashlib
import json
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import tokencompose
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import FORMAT_VERSION, canonical_json, write_atomic

# The package folder as it is imported (in a checkout its stage folders are links to the card's top level).
PACKAGE_ROOT = Path(tokencompose.__file__).parent
DIGEST_CACHE = ".cache/weight-digests.json"

# Code a shard's bytes depend on: every module imported (at any depth, in any function) from these
# roots, the package's __init__ (its version is in every sample) and the bundled tables.
CODE_ROOTS = ("tasks/shards/dataset.py", "tasks/shards/build.py", "tasks/source/selection.py", "tasks/models/backends.py")
TABLE_PATTERNS = ("data/*.csv", "data/*_categories.json")

# Distributions whose versions matter, per backend (a backend's info() names some of them too).
BASE_LIBRARIES = ("pillow", "numpy", "pydantic")
BACKEND_LIBRARIES: dict[str, tuple[str, ...]] = {
    "consensus": (),
    "spacy": ("spacy", "thinc"),
    "coco": ("pycocotools",),
    "human": ("pycocotools",),
    "clip": ("torch", "open_clip_torch"),
    "flair": ("torch", "flair", "transformers"),
    "grounded_sam": ("torch", "torchvision", "transformers", "groundingdino-py", "segment-anything-hq", "pycocotools"),
    "hybrid": ("torch", "torchvision", "transformers", "groundingdino-py", "segment-anything-hq", "pycocotools"),
}
MODEL_BACKENDS = frozenset({"clip", "flair", "grounded_sam", "hybrid"})


def _module_file(name: str, root: Path) -> Path | None:
    """The file of a tokencompose module name (package or module) under ``root``, if it is one of ours."""
    if name != "tokencompose" and not name.startswith("tokencompose."):
        return None
    parts = name.split(".")[1:]
    if not parts:
        return root / "__init__.py"
    relative = Path(*parts)
    for candidate in (root / relative.with_suffix(".py"), root / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, root: Path) -> set[Path]:
    """The tokencompose modules a file imports (module level and inside functions)."""
    import ast

    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            module = _module_file(name, root)
            if module is not None:
                found.add(module)
    return found


def code_files(root: Path = PACKAGE_ROOT) -> list[Path]:
    """The files whose content decides a shard's bytes: the import closure of CODE_ROOTS, the
    package's __init__ files on the way, and the bundled tables (of the package at ``root``)."""
    todo = [root / module for module in CODE_ROOTS] + [root / "__init__.py"]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        todo += _imports(path, root)
        folder = path.parent.parent if path.name == "__init__.py" else path.parent  # each package up to root
        init = folder / "__init__.py"
        if folder.is_relative_to(root) and init.is_file():
            todo.append(init)
    tables = {p for pattern in TABLE_PATTERNS for p in root.glob(pattern)}
    return sorted(seen | tables)


_fingerprint: list[str] = []


def code_fingerprint() -> str:
    """Hash of the code and tables that decide a shard's bytes (see :func:`code_files`), taken once
    per process: the code that runs is what was imported, whatever happens to the files later."""
    if not _fingerprint:
        _fingerprint.append(hash_code(PACKAGE_ROOT))
    return _fingerprint[0]


def hash_code(root: Path) -> str:
    """Hash of the code files and tables of the package at ``root``, by path relative to it and content."""
    digest = hashlib.sha256()
    for path in code_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        for dist in metadata.packages_distributions().get(name, []):
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        return "not installed"


def library_versions(config: BuildConfig) -> dict[str, str]:
    names = set(BASE_LIBRARIES)
    for stage in ("captions", "nouns", "grounding"):
        names.update(BACKEND_LIBRARIES.get(config.backend(stage), ()))
    if config.backend("nouns") == "spacy":
        names.add(config.nouns.spacy_model)  # the model is a package of its own
    return {name: _version(name) for name in sorted(names)}


def runtime(config: BuildConfig) -> dict[str, str]:
    """The device and precisions as they resolve here; empty when no backend runs a model."""
    used = {config.backend(stage) for stage in ("captions", "nouns", "grounding")}
    if not used & MODEL_BACKENDS:
        return {}
    from tokencompose.tasks.models import devices

    device = devices.resolve_device(config.models.device)
    result = {"device": device.split(":")[0]}
    if "clip" in used:
        result["captions_precision"] = "fp16-autocast" if devices.uses_half(device, config.captions.half_precision) \
            else "fp32"
    if used & {"grounded_sam", "hybrid"}:
        result["grounding_precision"] = _grounding_precision(config, device)
    return result


def _grounding_precision(config: BuildConfig, device: str) -> str:
    """The grounding backend's autocast precision, resolved as the backend resolves it."""
    from tokencompose.tasks.grounding import grounded_sam

    precision = getattr(config.grounding, "precision", None)
    resolve = getattr(grounded_sam, "resolve_precision", None)
    if resolve is not None:
        return resolve(device, precision, config.grounding.half_precision)
    from tokencompose.tasks.models import devices

    return "fp16" if devices.uses_half(device, config.grounding.half_precision) else "fp32"


_digests: dict[tuple[str, int, int], str] = {}
_digest_lock = threading.Lock()


def _file_digest(path: Path, disk_cache: dict[str, Any]) -> dict[str, Any]:
    from tokencompose.tasks.shards.shard_io import file_sha256

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    text_key = f"{key[0]}|{key[1]}|{key[2]}"
    digest = _digests.get(key) or disk_cache.get(text_key)
    if digest is None:
        digest = file_sha256(path)
    _digests[key] = disk_cache[text_key] = digest
    return {"bytes": stat.st_size, "sha256": digest}


def _read_disk_cache(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def weight_digests(config: BuildConfig, cache_file: Path | None = None) -> dict[str, Any]:
    """Each weight file of the configuration's backends (every file of a weight folder): size and
    sha256, by the spec's name and the file's path inside its folder."""
    from tokencompose.tasks.models import weights

    specs = weights.specs_for(config)
    if not specs:
        return {}
    with _digest_lock:
        disk = _read_disk_cache(cache_file)
        before = dict(disk)
        result: dict[str, Any] = {}
        for spec in specs:
            root = weights.locate(config, spec)
            files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
            for path in files:
                name = spec.key if path == root else f"{spec.key}/{path.relative_to(root).as_posix()}"
                result[name] = _file_digest(path, disk)
        if cache_file is not None and disk != before:
            write_atomic(cache_file, canonical_json(disk))
    return dict(sorted(result.items()))


def noun_table_digest(config: BuildConfig) -> str | None:
    """A custom noun table decides masks; the configuration holds only its file name."""
    if config.backend("grounding") not in ("coco", "human", "hybrid") or config.grounding.noun_table is None:
        return None
    from tokencompose.tasks.shards.shard_io import file_sha256

    return file_sha256(config.grounding.noun_table)


def build_identity(config: BuildConfig) -> dict[str, Any]:
    """Everything besides the configuration and the records that decides a shard's bytes."""
    identity: dict[str, Any] = {"format_version": FORMAT_VERSION, "code": code_fingerprint(),
                                "runtime": runtime(config), "libraries": library_versions(config),
                                "weights": weight_digests(config, config.output.out_dir / DIGEST_CACHE)}
    table = noun_table_digest(config)
    if table is not None:
        identity["noun_table_sha256"] = table
    return identity


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

