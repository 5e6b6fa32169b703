"""What a run leaves behind: a complete StableDiffusionPipeline folder and a loss-curve PNG."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

from tokencompose.schemas.training import TRAIN_CONFIG_FILE, TrainConfig

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
    (tmp / TRAIN_CONFIG_FILE).write_text(config.to_json())
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return out_dir


CURVE_TERMS = ("loss", "ldm", "token", "pixel", "spatial")


def smoothed(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average that skips missing (NaN) points, debiased at the start."""
    out, average, total = [], 0.0, 0.0
    for value in values:
        if value == value:  # not NaN
            average = weight * average + (1 - weight) * value
            total = weight * total + (1 - weight)
        out.append(average / total if total else float("nan"))
    return out


def _resolution(key: str) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in key.split("/", 1)[1]).split()
    return int(digits[0]) if digits else 0


def plot_loss_curves(records: Iterable[dict], path: Path) -> Path | None:
    """One panel per loss term (scales differ by orders of magnitude): the raw term, its smoothed
    line, and one line per attention resolution in increasing order; legends beside the axes."""
    records = list(records)
    if not records:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    terms = [t for t in CURVE_TERMS if any(t in r for r in records)]
    fig, axes = plt.subplots(len(terms), 1, figsize=(9, 2.4 * len(terms)), sharex=True, squeeze=False)
    steps = [r["step"] for r in records]
    for ax, term in zip(axes[:, 0], terms):
        raw = [r.get(term, float("nan")) for r in records]
        ax.plot(steps, raw, label=f"{term} (raw)", color="black", linewidth=0.8, alpha=0.35)
        ax.plot(steps, smoothed(raw), label=f"{term} (smoothed)", color="black", linewidth=1.6)
        groups = sorted({k for r in records for k in r if k.startswith(f"{term}/")}, key=_resolution)
        for key in groups:
            ax.plot(steps, smoothed([r.get(key, float("nan")) for r in records]), label=key, linewidth=0.9)
        ax.set_ylabel(term)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
