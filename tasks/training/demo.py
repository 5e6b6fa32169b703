"""The training demo: a tiny random-weight Stable Diffusion folder and the bundled sample built as
shards, so the whole loop (data, grounding losses, checkpoints, loss curve, exported pipeline)
runs on a CPU in well under a minute with nothing downloaded. The model learns nothing useful."""
from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_DEMO_DIR = Path("runs/demo")


def prepare_demo(output_dir: Path) -> dict[str, Any]:
    """Build what the demo trains on (once) inside ``output_dir``; return its TrainConfig fields."""
    from tokencompose.data import demo_settings
    from tokencompose.schemas.config import BuildConfig
    from tokencompose.schemas.reports import MANIFEST_FILE
    from tokencompose.tasks.shards.dataset import build_directly
    from tokencompose.tasks.training.toy import save_random_pipeline

    output_dir = Path(output_dir)
    data_dir = output_dir / "demo-data"
    if not (data_dir / MANIFEST_FILE).is_file():
        build_directly(BuildConfig.model_validate({**demo_settings(), "output": {"out_dir": str(data_dir)}}))
    model_dir = output_dir / "tiny-sd"
    if not (model_dir / "model_index.json").is_file():
        save_random_pipeline(model_dir, "tiny")
    return {"pretrained_model": str(model_dir), "shards": [str(data_dir / "shards" / "*.tar")],
            "output_dir": str(output_dir), "resolution": 64, "max_steps": 30, "train_batch_size": 1,
            "gradient_accumulation_steps": 1, "learning_rate": 1e-4, "num_workers": 0, "shuffle_buffer": 8,
            "gradient_checkpointing": False, "checkpoint_every": 15, "log_every": 2, "export": True}
