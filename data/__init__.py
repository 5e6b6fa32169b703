"""Bundled data: the sample dataset and the curated tables."""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
SAMPLE_DIR = DATA_DIR / "sample"


def demo_settings() -> dict:
    """Source and selection of the bundled sample, as configuration fields."""
    return {
        "source": {"images_dir": str(SAMPLE_DIR / "images"), "captions_json": str(SAMPLE_DIR / "captions.json"),
                   "instances_json": str(SAMPLE_DIR / "instances.json"),
                   "lvis_json": [str(SAMPLE_DIR / "lvis.json")], "stuff_json": [str(SAMPLE_DIR / "stuff.json")]},
        "selection": {"policy": "vsr", "vsr_files": [str(SAMPLE_DIR / "vsr_train.jsonl")]},
    }
