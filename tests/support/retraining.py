"""Shared by the retrain tests: a whole tiny RetrainConfig, VSR selections of the sample, a free port."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

from tokencompose.data import SAMPLE_DIR

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
VSR_LINES = (SAMPLE_DIR / "vsr_train.jsonl").read_text().splitlines()


def settings(tmp_path: Path, tiny_sd: Path, tiny_owl: Path, vsr: Path) -> dict:
    """A whole RetrainConfig as JSON data: tiny training and a tiny quick MultiGen."""
    return {
        "build": {"source": {"images_dir": str(SAMPLE_DIR / "images"), "captions_json": str(SAMPLE_DIR / "captions.json"),
                             "instances_json": str(SAMPLE_DIR / "instances.json")},
                  "selection": {"policy": "vsr", "vsr_files": [str(vsr)]},
                  "output": {"out_dir": str(tmp_path / "data"), "shard_size": 2}},
        "base_model": str(tiny_sd), "registry_dir": str(tmp_path / "registry"), "runs_dir": str(tmp_path / "runs"),
        "steps": 2,
        "train": {"resolution": 64, "num_workers": 0, "gradient_checkpointing": False, "gradient_accumulation_steps": 1,
                  "shuffle_buffer": 4, "checkpoint_every": 1000, "log_every": 1},
        "evaluation": {"benchmark": {"name": "coco", "limit": 2},
                       "generation": {"images_per_prompt": 1, "steps": 1, "resolution": 32, "batch_size": 2},
                       "detection": {"detector": str(tiny_owl)}, "models": {"device": "cpu"},
                       "report": {"bootstrap_samples": 10, "grid_prompts": 1, "grid_images": 1,
                                  "attention_prompts": 0}},
        # a random candidate never clears this margin: it is recorded as rejected. No real images here: FID and
        # CLIP score are not judged (tests/flows/test_retrain.py judges them in a run of its own)
        "gate": {"level": 1, "margin": 1000.0, "bootstrap_samples": 100, "fid_tolerance": None,
                 "clip_tolerance": None},
    }


def write_vsr(path: Path, lines: int) -> Path:
    path.write_text("\n".join(VSR_LINES[:lines]) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
