"""Per-word cross-attention maps at every denoising step of an edit (the seed report's Figures 3-4), and
their aggregation into a word mask.

:class:`AttentionRecorder` wraps each UNet call of :func:`~tokencompose.tasks.editing.blend.edit_batch`
(one image at a time) with the project's capture processors on the middle block's and decoder's
cross-attentions; it keeps, per step and layer, the conditional half's probabilities averaged over heads
and over the word's tokens (a word the tokenizer splits into several tokens is the mean of its tokens, as
in training). :func:`aggregate` averages chosen steps and map sides, each map resized to the largest side.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def word_span(prompt: str, word: str) -> tuple[int, int]:
    """The first whole-word occurrence of ``word`` in ``prompt`` (case-insensitive)."""
    found = re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", prompt, flags=re.IGNORECASE)
    if not word.strip() or found is None:
        raise ValueError(f"word {word!r} is not in the prompt {prompt!r}")
    return found.span()


def word_tokens(tokenizer, prompt: str, words: Sequence[str]) -> list[list[int]]:
    """The token positions of each word (several for a word split into sub-words)."""
    from transformers import CLIPTokenizerFast

    from tokencompose.tasks.training.data import noun_token_positions

    if not getattr(tokenizer, "is_fast", False):
        tokenizer = CLIPTokenizerFast.from_pretrained(tokenizer.name_or_path, local_files_only=True)
    encoded = tokenizer(prompt, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_offsets_mapping=True, return_special_tokens_mask=True)
    groups = []
    for word in words:
        positions = noun_token_positions(encoded["offset_mapping"], encoded["special_tokens_mask"],
                                         word_span(prompt, word))
        if not positions:
            raise ValueError(f"word {word!r} falls past the text encoder's {tokenizer.model_max_length}-token window")
        groups.append(positions)
    return groups


@dataclass
class AttentionRecorder:
    """Records each UNet call's per-word maps: ``steps[k][layer]`` is a (words, side, side) array."""

    unet: Any
    tokens: list[list[int]]
    steps: list[dict[str, np.ndarray]] = field(default_factory=list)

    def __enter__(self) -> "AttentionRecorder":
        from tokencompose.tasks.multigen.attention_maps import cross_attention_layers
        from tokencompose.tasks.training.attention import install_processors

        self.columns = sorted({p for group in self.tokens for p in group})
        self.store = install_processors(self.unet, cross_attention_layers(self.unet))
        return self

    def __exit__(self, *_exc) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.store.end()
        self.unet.set_attn_processor(AttnProcessor2_0())

    def __call__(self, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        device = self.unet.device
        self.store.begin(torch.tensor([self.columns], dtype=torch.long, device=device))
        out = call()
        column_of = {p: i for i, p in enumerate(self.columns)}
        step = {}
        for layer, picked in self.store.end().items():
            conditional = picked[-1].float().mean(0)                       # HW x K, heads averaged
            side = int(round(conditional.shape[0] ** 0.5))
            per_word = torch.stack([conditional[:, [column_of[p] for p in group]].mean(-1) for group in self.tokens])
            step[layer] = per_word.reshape(len(self.tokens), side, side).cpu().numpy()
        self.steps.append(step)
        return out


def aggregate(steps: Sequence[dict[str, np.ndarray]], step_indices: Sequence[int] | None = None,
              sides: Sequence[int] | None = None) -> np.ndarray:
    """(words, S, S): the mean over the chosen steps (default all) and layers whose map side is in
    ``sides`` (default all), each resized bilinearly to the largest side S."""
    chosen = [steps[i] for i in (range(len(steps)) if not step_indices else step_indices)]
    maps = [m for step in chosen for m in step.values() if not sides or m.shape[-1] in sides]
    if not maps:
        raise ValueError(f"no attention maps of side {list(sides or [])} were recorded")
    size = max(m.shape[-1] for m in maps)
    resized = [F.interpolate(torch.from_numpy(m)[None], size=(size, size), mode="bilinear", align_corners=False)[0]
               for m in maps]
    return torch.stack(resized).mean(0).numpy()


def check_steps(step_indices: Sequence[int], recorded: int) -> None:
    bad = [i for i in step_indices if not 0 <= i < recorded]
    if bad:
        raise ValueError(f"attention steps {bad} are outside the edit's {recorded} denoising steps (0..{recorded - 1})")


def grid_image(image: np.ndarray, words: Sequence[str], steps: Sequence[dict[str, np.ndarray]], path: Path,
               step_indices: Sequence[int] = (), sides: Sequence[int] = ()) -> Path:
    """A PNG grid: one row per word, one column per chosen step, each map over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    chosen = list(step_indices) or sorted(set(np.linspace(0, len(steps) - 1, min(5, len(steps))).round().astype(int)))
    check_steps(chosen, len(steps))
    fig, axes = plt.subplots(len(words), len(chosen), figsize=(2.0 * len(chosen), 2.1 * len(words)), squeeze=False)
    height, width = image.shape[:2]
    for column, index in enumerate(chosen):
        maps = aggregate(steps, [index], sides)
        for row, word in enumerate(words):
            heat = maps[row]
            span = float(heat.max() - heat.min())
            norm = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
            big = Image.fromarray((norm * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)
            ax = axes[row, column]
            ax.imshow(image)
            ax.imshow(np.array(big), cmap="jet", alpha=0.55, vmin=0, vmax=255)
            ax.set_title(f"{word} · step {index}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
