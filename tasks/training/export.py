"""What a run leaves behind: a complete StableDiffusionPipeline folder and a loss-curve PNG."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

from tokencompose.schemas.training import CONFIG_FILE, TrainConfig

PIPELINE_DIR = "pipeline"
CURVE_FILE = "loss_curve.png"


def export_pipeline(config: TrainConfig, unet, out_dir: Path) -> Path:
    """The source model's folder with the trained UNet in place of its own (safetensors, fp32).

    Every other component is copied byte for byte, so the folder loads exactly like the original.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(config.pretrained_model, tmp, ignore=shutil.ignore_patterns("unet", ".cache", ".git*"))
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    (tmp / CONFIG_FILE).write_text(config.to_json())
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return out_dir


CURVE_TERMS = ("loss", "ldm", "token", "pixel", "spatial")


def plot_loss_curves(records: Iterable[dict], path: Path) -> Path | None:
    """One panel per loss term (scales differ by orders of magnitude), one line per resolution group."""
    records = list(records)
    if not records:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = [t for t in CURVE_TERMS if any(t in r for r in records)]
    fig, axes = plt.subplots(len(terms), 1, figsize=(8, 2.4 * len(terms)), sharex=True, squeeze=False)
    steps = [r["step"] for r in records]
    for ax, term in zip(axes[:, 0], terms):
        ax.plot(steps, [r.get(term, float("nan")) for r in records], label=term, color="black", linewidth=1.2)
        groups = sorted({k for r in records for k in r if k.startswith(f"{term}/")})
        for key in groups:
            ax.plot(steps, [r.get(key, float("nan")) for r in records], label=key, linewidth=0.8, alpha=0.8)
        ax.set_ylabel(term)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
