"""CLIP caption ranking, as the paper: open_clip ViT-L/14@336px with OpenAI weights by default.

Score: the cosine similarity between the image embedding and each caption embedding (both
L2-normalised, no logit scale), rounded to 6 decimals so that batch composition and kernel
choice cannot flip a choice through the last bits. The ranker keeps the argmax (ties: earliest).

Any open_clip model and pretrained tag can be configured (``captions.clip_model`` /
``captions.clip_pretrained``); the tag's weights are read from the models folder or the Hugging
Face cache (never downloaded), and ``clip_pretrained`` may also be a checkpoint file. Images and
captions are embedded in batches of ``captions.batch_size``; on a GPU with ``half_precision``
under fp16 autocast, on the CPU in fp32.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

from PIL import Image

from tokencompose.tasks.models import devices

from tokencompose.tasks.models import weights
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.sample import BackendInfo

_cache: dict[tuple, tuple] = {}
_cache_lock = threading.Lock()


def build_clip(model_name: str, checkpoint: Path | None, tag_cfg: dict | None = None,
               quick_gelu: bool | None = None):
    """An open_clip model and its evaluation transform; weights from ``checkpoint`` (None: random)."""
    import open_clip

    tag_cfg = tag_cfg or {}
    quick = tag_cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu
    preprocess = {key: tag_cfg[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag_cfg}
    model, _, transform = open_clip.create_model_and_transforms(
        model_name, pretrained=None, force_quick_gelu=quick, pretrained_text=False,
        image_mean=preprocess.get("mean"), image_std=preprocess.get("std"),
        image_interpolation=preprocess.get("interpolation"), image_resize_mode=preprocess.get("resize_mode"))
    if checkpoint is not None:
        open_clip.load_checkpoint(model, str(checkpoint))
    return model.eval(), transform


class ClipRanker:
    """Scores captions by CLIP image-text cosine similarity."""

    def __init__(self, model_name: str = "ViT-L-14-336", checkpoint: Path | None = None, pretrained: str = "openai",
                 device: str = "auto", half_precision: bool = True, batch_size: int = 32,
                 quick_gelu: bool | None = None):
        import open_clip
        import torch

        self.model_name = model_name
        self.pretrained = pretrained
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.device = devices.resolve_device(device)
        self.half = devices.uses_half(self.device, half_precision)
        self.batch_size = batch_size
        tag_cfg = {} if Path(pretrained).expanduser().is_file() else open_clip.get_pretrained_cfg(model_name, pretrained)
        key = (model_name, str(self.checkpoint), quick_gelu, self.device)
        with _cache_lock:  # one copy per process and device
            if key not in _cache:
                model, transform = build_clip(model_name, self.checkpoint, tag_cfg, quick_gelu)
                _cache[key] = (model.to(self.device), transform, threading.Lock())
        self.model, self.transform, self.lock = _cache[key]
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self._torch = torch

    @classmethod
    def from_config(cls, config: BuildConfig) -> "ClipRanker":
        c = config.captions
        checkpoint = weights.locate(config, weights.clip_spec(c.clip_model, c.clip_pretrained))
        return cls(c.clip_model, checkpoint, c.clip_pretrained, config.models.device, c.half_precision,
                   c.batch_size, c.clip_quick_gelu)

    def info(self) -> BackendInfo:
        import open_clip

        pretrained = Path(self.pretrained).name if Path(self.pretrained).expanduser().is_file() else self.pretrained
        return BackendInfo(name="clip", version=f"open_clip {open_clip.__version__}",
                           details={"model": self.model_name, "pretrained": pretrained,
                                    "weights": self.checkpoint.name if self.checkpoint else None,
                                    "score": "cosine similarity of L2-normalised image and caption embeddings",
                                    "precision": "fp16-autocast" if self.half else "fp32"})

    def embed_images(self, images: Sequence[Image.Image]):
        torch = self._torch
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.transform(im.convert("RGB")) for im in images[start:start + self.batch_size]])
            with torch.inference_mode(), devices.autocast(self.device, self.half):
                features = self.model.encode_image(batch.to(self.device))
            chunks.append(torch.nn.functional.normalize(features.float(), dim=-1))
        return torch.cat(chunks) if chunks else torch.zeros(0)

    def embed_texts(self, texts: Sequence[str]):
        torch = self._torch
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size])).to(self.device)
            with torch.inference_mode(), devices.autocast(self.device, self.half):
                features = self.model.encode_text(tokens)
            chunks.append(torch.nn.functional.normalize(features.float(), dim=-1))
        return torch.cat(chunks) if chunks else torch.zeros(0)

    def score(self, images: Sequence[Image.Image], captions: Sequence[Sequence[str]]) -> list[list[float]]:
        if not images:
            return []
        flat = [text for texts in captions for text in texts]
        with self.lock:
            image_features = self.embed_images(images)
            text_features = self.embed_texts(flat) if flat else None
        scores: list[list[float]] = []
        cursor = 0
        for i, texts in enumerate(captions):
            if not texts:
                scores.append([])
                continue
            assert text_features is not None  # some caption is non-empty, so flat was
            block = text_features[cursor:cursor + len(texts)]
            cursor += len(texts)
            scores.append([round(float(v), 6) for v in (block @ image_features[i]).cpu().tolist()])
        return scores
