"""CLIP score of generated images against their prompts, with open_clip.

CLIP score = 100 x max(cos(image embedding, text embedding), 0), both embeddings L2-normalised: the
definition torchmetrics' ``CLIPScore`` uses (Hessel et al.'s CLIPScore with the weight 100 instead of 2.5).
The default model is ViT-L/14 with OpenAI's weights (torchmetrics' default, openai/clip-vit-large-patch14);
any open_clip model and a checkpoint file from the models folder can be given; without a checkpoint
the weights are random (tests). Embeddings are computed in fp32 in batches; a model's figure is the
mean over images, and per prompt the mean over its images (what the promotion gate pairs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"
SCALE = 100.0


class ClipScorer:
    """An open_clip model loaded once; :meth:`score` gives one CLIP score per (image, text) pair."""

    def __init__(self, model_name: str = DEFAULT_MODEL, checkpoint: Path | None = None,
                 pretrained: str = DEFAULT_PRETRAINED, device: str = "cpu", batch_size: int = 32,
                 quick_gelu: bool | None = None):
        import open_clip
        import torch

        from tokencompose.tasks.captions.clip_ranker import build_clip

        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: no CLIP checkpoint file")
        tag_cfg = ({} if checkpoint is None or Path(pretrained).expanduser().is_file()
                   else open_clip.get_pretrained_cfg(model_name, pretrained))
        model, self.transform = build_clip(model_name, Path(checkpoint) if checkpoint else None, tag_cfg, quick_gelu)
        self.model = model.to(device)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.batch_size, self.model_name = device, batch_size, model_name
        self._torch = torch

    def _embed(self, encode, batch):
        torch = self._torch
        with torch.inference_mode():
            return torch.nn.functional.normalize(encode(batch.to(self.device)).float(), dim=-1)

    def score(self, images: Sequence, texts: Sequence[str]) -> np.ndarray:
        """100 x max(cosine, 0) of each image with its text, in order."""
        torch = self._torch
        if len(images) != len(texts):
            raise ValueError(f"CLIP score needs one text per image: {len(images)} images, {len(texts)} texts")
        out = np.empty(len(images), dtype=np.float64)
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            pixels = torch.stack([self.transform(im.convert("RGB")) for im in images[start:stop]])
            image_features = self._embed(self.model.encode_image, pixels)
            text_features = self._embed(self.model.encode_text, self.tokenizer(list(texts[start:stop])))
            cosine = (image_features * text_features).sum(dim=-1)
            out[start:start + len(cosine)] = (SCALE * cosine.clamp(min=0)).double().cpu().numpy()
        return out


def per_prompt_means(prompt_ids: Sequence[int], scores: Sequence[float] | np.ndarray) -> dict[int, float]:
    """Mean CLIP score of each prompt's images, keyed by prompt id (ascending)."""
    sums: dict[int, list[float]] = {}
    for prompt_id, value in zip(prompt_ids, scores, strict=True):
        sums.setdefault(int(prompt_id), []).append(float(value))
    return {pid: float(np.mean(values)) for pid, values in sorted(sums.items())}


def summary(scores: Sequence[float] | np.ndarray) -> dict:
    values = np.asarray(scores, dtype=np.float64)
    return {"clip_score": float(values.mean()) if len(values) else float("nan"),
            "std": float(values.std(ddof=0)) if len(values) else float("nan"), "images": len(values)}
