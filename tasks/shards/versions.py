"""The versions of a complete dataset and the shard files of each, read from its manifest (no Prefect)."""
from __future__ import annotations

from pathlib import Path

from tokencompose.schemas.reports import MANIFEST_FILE, SHARDS_DIR, DatasetVersion, Manifest


def dataset_versions(out_dir: Path) -> list[DatasetVersion]:
    """The versions of the complete dataset in ``out_dir`` (oldest first); empty when there is none.
    For code without Prefect, e.g. scheduled retraining on the latest version."""
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        return []
    return list(Manifest.model_validate_json(path.read_bytes()).versions)


def version_shards(out_dir: Path, version: int | None = None) -> list[Path]:
    """The shard files of a dataset version (default: the latest), in shard order."""
    versions = dataset_versions(out_dir)
    if not versions:
        raise FileNotFoundError(f"{out_dir} holds no complete dataset (no {MANIFEST_FILE} with versions)")
    chosen = versions[-1] if version is None else next((v for v in versions if v.version == version), None)
    if chosen is None:
        raise KeyError(f"{out_dir} has versions {[v.version for v in versions]}, not {version}")
    return [Path(out_dir) / SHARDS_DIR / name for name in sorted(chosen.shards)]
