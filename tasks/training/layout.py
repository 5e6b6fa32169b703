"""A model's or a run's training geometry without loading any weights: the image resolution, the trained
cross-attention layers and each one's map side, the prediction type.

The UNet is built from its config on the meta device (no memory, no weights), so the layer names and
their scales come from diffusers' own UNet code, as in training (:func:`~.attention.paper_layers`,
:func:`~.attention.layer_resolutions`): SD1.x at 512 px has maps 8/16/32/64, SD2/2.1 at 768 px 12/24/48/96.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokencompose.schemas.training import TRAIN_CONFIG_FILE, TrainConfig


@dataclass(frozen=True)
class TrainingLayout:
    model: Path                    # the diffusers folder the layout was read from
    resolution: int                # image side the training crops to
    layers: dict[str, int]         # trained layer -> side of its cross-attention map
    prediction_type: str           # the scheduler's: epsilon (SD1.x, SD2-base) or v_prediction (SD2/2.1)

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.layers.values())))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot be read as a model config ({error})") from error


def native_resolution(model: Path) -> int:
    """UNet ``sample_size`` x the VAE's downsampling: 512 for SD1.x and SD2-base, 768 for SD2/2.1."""
    model = Path(model)
    sample = _read_json(model / "unet" / "config.json")["sample_size"]
    factor = 2 ** (len(_read_json(model / "vae" / "config.json")["block_out_channels"]) - 1)
    return int(sample) * factor


def model_layout(model: Path, resolution: int | None = None, layers: list[str] | None = None) -> TrainingLayout:
    """The layout training would use on ``model`` (a diffusers Stable Diffusion folder) at ``resolution``
    (None: the model's own) with ``layers`` (None: the paper's choice for this UNet)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from tokencompose.tasks.training.attention import layer_resolutions, paper_layers

    model = Path(model)
    unet_config = _read_json(model / "unet" / "config.json")
    side = resolution or native_resolution(model)
    factor = 2 ** (len(_read_json(model / "vae" / "config.json")["block_out_channels"]) - 1)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
    chosen = list(layers) if layers else paper_layers(unet)
    scheduler = _read_json(model / "scheduler" / "scheduler_config.json")
    return TrainingLayout(model, side, layer_resolutions(unet, chosen, side // factor),
                          scheduler.get("prediction_type", "epsilon"))


def run_model_folder(folder: Path, config: TrainConfig) -> Path:
    """The diffusers folder whose layout a run trains: the folder itself (an exported pipeline), the
    run's export, or the model it started from."""
    for candidate in (folder, folder / "pipeline", Path(config.pretrained_model)):
        if (candidate / "unet" / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{folder}: neither it, its pipeline/ nor its pretrained_model {config.pretrained_model} "
                            "is a diffusers folder with unet/config.json")


def folder_layout(folder: Path) -> TrainingLayout:
    """The layout of a training run folder or an exported pipeline (both hold train_config.json: its
    resolution and train_layers), or of a plain diffusers folder (the model's own resolution, the
    paper's layers)."""
    folder = Path(folder)
    if (folder / TRAIN_CONFIG_FILE).is_file():
        config = TrainConfig.from_file(folder / TRAIN_CONFIG_FILE)
        return model_layout(run_model_folder(folder, config), config.resolution, config.train_layers)
    if (folder / "unet" / "config.json").is_file():
        return model_layout(folder)
    raise FileNotFoundError(f"{folder}: not a training run (no {TRAIN_CONFIG_FILE}) nor a diffusers folder "
                            "(no unet/config.json)")
