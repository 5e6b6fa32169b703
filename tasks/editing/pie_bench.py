"""PIE-Bench (Ju et al., "Direct Inversion", 2023): its folder, its masks, and its seven scores.

The published layout: ``mapping_file.json`` maps an item key to ``image_path`` (under
``annotation_images/``), ``original_prompt``, ``editing_prompt`` (edited words in brackets),
``editing_instruction``, ``editing_type_id``, ``blended_word`` and ``mask``: a run-length list of
(start, length) pairs over the row-major flattened 512 x 512 image, 1 = the region to edit.

Scores as PIE-Bench computes them (images as floats in [0, 1], 512 x 512):

- structure distance: the mean squared difference of the self-similarity (cosine) matrices of the last
  DINO ViT block's keys (Tumanyan et al.), both images resized to 224 and ImageNet-normalised;
- background PSNR, LPIPS, MSE and SSIM: both images multiplied by (1 - mask) first, the mask with its
  one-pixel border forced to 1 as PIE-Bench decodes it (so the border never counts as background);
  torchmetrics' PSNR / MSE / SSIM (data range 1), ``lpips`` with inputs in [-1, 1];
- CLIP similarity: 100 x max(cos, 0) of the edited image and the editing prompt (brackets removed), whole,
  and with the image multiplied by the mask (the edited region).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

MAPPING_FILE = "mapping_file.json"
IMAGES_DIR = "annotation_images"
SIDE = 512
METRICS = ("structure_distance", "psnr", "lpips", "mse", "ssim", "clip_whole", "clip_edited")
# how the seed report's Table 2 prints each score (data/pie_bench_seed_table2.csv uses the same units)
DISPLAY_SCALE = {"structure_distance": 1e3, "psnr": 1.0, "lpips": 1e3, "mse": 1e4, "ssim": 1e2,
                 "clip_whole": 1.0, "clip_edited": 1.0}
SEED_TABLE = Path(__file__).resolve().parents[2] / "data" / "pie_bench_seed_table2.csv"


@dataclass(frozen=True)
class PieItem:
    key: str
    image: Path
    source_prompt: str
    edit_prompt: str
    edit_type: str
    runs: tuple[int, ...]


def decode_runs(runs: Sequence[int], shape: tuple[int, int] = (SIDE, SIDE), border: bool = True) -> np.ndarray:
    """PIE-Bench's mask: (start, length) runs over the flattened image set to 1 (a run cut at the end
    of the image); with ``border`` the outermost rows and columns are set to 1, as PIE-Bench does to
    keep annotation errors at the edge out of the background."""
    if len(runs) % 2:
        raise ValueError(f"a PIE-Bench mask is (start, length) pairs; got an odd count ({len(runs)})")
    flat = np.zeros(shape[0] * shape[1], np.float32)
    for start, length in zip(runs[0::2], runs[1::2]):
        if start < 0 or length < 0:
            raise ValueError(f"a PIE-Bench mask run cannot be negative: ({start}, {length})")
        flat[start:start + length] = 1
    mask = flat.reshape(shape)
    if border:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1
    return mask


def read_items(root: Path, limit: int | None = None) -> list[PieItem]:
    """The items of a PIE-Bench folder in key order; a broken entry stops with its key and field."""
    root = Path(root)
    mapping = root / MAPPING_FILE
    if not mapping.is_file():
        raise ValueError(f"{root}: not a PIE-Bench folder (no {MAPPING_FILE}); see docs/editing.md")
    try:
        entries = json.loads(mapping.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{mapping}: not JSON ({error})") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{mapping}: expected an object of items keyed by id")
    items = []
    for key in sorted(entries)[:limit]:
        entry = entries[key]
        missing = [f for f in ("image_path", "original_prompt", "editing_prompt", "mask") if f not in entry]
        if missing:
            raise ValueError(f"{mapping}: item {key} has no {', '.join(missing)}")
        image = root / IMAGES_DIR / entry["image_path"]
        if not image.is_file():
            raise ValueError(f"{mapping}: item {key}'s image {image} is missing")
        items.append(PieItem(key, image, clean_prompt(entry["original_prompt"]), clean_prompt(entry["editing_prompt"]),
                             str(entry.get("editing_type_id", "")), tuple(int(v) for v in entry["mask"])))
    return items


def clean_prompt(prompt: str) -> str:
    return prompt.replace("[", "").replace("]", "")


def as_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W float in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255


def masked(image: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    return image * torch.from_numpy(mask.astype(np.float32))[None, None]


def background_scores(source: np.ndarray, edited: np.ndarray, mask: np.ndarray, lpips_model) -> dict[str, float]:
    """PSNR, LPIPS, MSE and SSIM of the two images with the edit region (``mask`` = 1) blacked out."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    from torchmetrics.functional.regression import mean_squared_error

    keep = 1 - mask
    a, b = masked(as_tensor(source), keep), masked(as_tensor(edited), keep)
    with torch.no_grad():
        perceptual = lpips_model(b * 2 - 1, a * 2 - 1)
    ssim = structural_similarity_index_measure(b, a, data_range=1.0)
    assert isinstance(ssim, torch.Tensor)            # a tuple only with return_full_image
    return {"psnr": float(peak_signal_noise_ratio(b, a, data_range=1.0)),
            "lpips": float(perceptual.mean()),
            "mse": float(mean_squared_error(b.flatten(), a.flatten())),
            "ssim": float(ssim)}


def last_block_keys(vit, pixels: torch.Tensor) -> torch.Tensor:
    """(tokens, hidden): the keys of the last transformer block of a transformers ViTModel, heads side by
    side (the CLS token included)."""
    with torch.no_grad():
        hidden = vit(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        block = vit.encoder.layer[-1]
        return block.attention.attention.key(block.layernorm_before(hidden))[0]


def keys_self_similarity(vit, image: np.ndarray) -> torch.Tensor:
    import torchvision.transforms.functional as TF

    pixels = TF.resize(as_tensor(image), [224], antialias=True)
    pixels = TF.normalize(pixels, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    keys = torch.nn.functional.normalize(last_block_keys(vit, pixels), dim=-1)
    return keys @ keys.T


def structure_distance(vit, source: np.ndarray, edited: np.ndarray) -> float:
    return float(torch.nn.functional.mse_loss(keys_self_similarity(vit, edited), keys_self_similarity(vit, source)))


def clip_scores(scorer, edited: np.ndarray, mask: np.ndarray, prompt: str) -> dict[str, float]:
    from PIL import Image

    region = (edited.astype(np.float32) * mask[..., None]).round().astype(np.uint8)
    whole, part = scorer.score([Image.fromarray(edited), Image.fromarray(region)], [prompt, prompt])
    return {"clip_whole": float(whole), "clip_edited": float(part)}


@dataclass
class Scorers:
    lpips: object
    vit: object
    clip: object


def check_scorer_files(config) -> None:
    """The scorers' local files are there (DINO folder, LPIPS backbone); a missing one stops with what to fetch."""
    dino = Path(config.dino)
    if not (dino / "config.json").is_file():
        raise ValueError(f"dino: {dino} is not a transformers ViT folder (no config.json); see docs/editing.md")
    backbone = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}[config.lpips_net]
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(checkpoints.glob(f"{backbone}-*.pth")):
        raise ValueError(f"lpips: torchvision's {backbone} weights are not in {checkpoints} (TORCH_HOME); "
                         "see docs/editing.md")


def load_scorers(config, device: str = "cpu") -> Scorers:
    """The three networks from local files; a missing one stops with what to fetch (docs/editing.md)."""
    import lpips  # type: ignore[import-untyped]
    from transformers import ViTModel

    from tokencompose.tasks.evaluation.clip_score import ClipScorer

    check_scorer_files(config)
    dino = Path(config.dino)
    return Scorers(lpips=lpips.LPIPS(net=config.lpips_net, verbose=False).to(device).eval(),
                   vit=ViTModel.from_pretrained(dino, add_pooling_layer=False, local_files_only=True).to(device).eval(),
                   clip=ClipScorer(config.clip_model, Path(config.clip_checkpoint), device=device))


def score_item(scorers: Scorers, source: np.ndarray, edited: np.ndarray, runs: Sequence[int], prompt: str
               ) -> dict[str, float]:
    """The seven PIE-Bench scores of one edit (images 512 x 512 x 3 uint8)."""
    if source.shape != edited.shape:
        raise ValueError(f"the source is {source.shape[:2]} and the edit {edited.shape[:2]}: PIE-Bench scores "
                         "images of one size")
    mask = decode_runs(runs, source.shape[:2])
    scores = {"structure_distance": structure_distance(scorers.vit, source, edited)}
    scores |= background_scores(source, edited, mask, scorers.lpips)
    return scores | clip_scores(scorers.clip, edited, mask, prompt)


def seed_rows(path: Path = SEED_TABLE) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(line for line in handle if not line.startswith("#"))]


def report_markdown(means: dict[str, dict[str, float]], counts: dict[str, int]) -> str:
    """Models side by side in the seed report's units, its Table 2 rows beside for reference."""
    header = ["model", "items"] + [f"{m} x{DISPLAY_SCALE[m]:g}" if DISPLAY_SCALE[m] != 1 else m for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values in means.items():
        cells = [f"{values[m] * DISPLAY_SCALE[m]:.2f}" for m in METRICS]
        lines.append("| " + " | ".join([label, str(counts[label])] + cells) + " |")
    for row in seed_rows():
        lines.append("| " + " | ".join([f"{row['model']} (seed report)", "700"] + [row[m] for m in METRICS]) + " |")
    return "\n".join(lines) + "\n"
