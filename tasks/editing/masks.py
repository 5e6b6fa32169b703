"""Edit masks: from a user's file, from a noun of a grounded shard sample, or from a word's cross-attention.

A mask is an H x W boolean array (True = edit) at the image's size. A file of another size is resized
(nearest) with a warning; any mode is read as grey levels (alpha for a mask with transparency) and
thresholded at half. An empty mask is refused (nothing to edit); a full mask is allowed with a warning
(the edit is then a plain image-to-image pass: no background to keep).
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def check_mask(mask: np.ndarray, where: str) -> np.ndarray:
    if not mask.any():
        raise ValueError(f"the mask {where} is empty: nothing to edit")
    if mask.all():
        log.warning("the mask %s covers the whole image: the edit keeps no background", where)
    return mask


def mask_from_image(mask_image, size: tuple[int, int], where: str) -> np.ndarray:
    """A PIL image as a boolean (height, width) mask; ``size`` is (width, height) of the image edited."""
    from PIL import Image

    if mask_image.mode in ("RGBA", "LA", "PA") or "transparency" in mask_image.info:
        grey = mask_image.convert("RGBA").getchannel("A")
    else:
        if mask_image.mode not in ("1", "L"):
            log.warning("the mask %s is %s: read as grey levels", where, mask_image.mode)
        grey = mask_image.convert("L")
    if grey.size != tuple(size):
        log.warning("the mask %s is %dx%d, the image %dx%d: resized (nearest)", where, *grey.size, *size)
        grey = grey.resize(tuple(size), Image.Resampling.NEAREST)
    return check_mask(np.asarray(grey) >= 128, where)


def mask_from_file(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            return mask_from_image(opened, size, str(path))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read the mask file {path}: {error}") from None


def shard_sample(shard: Path, key: str) -> tuple[np.ndarray, object]:
    """The (image, SampleRecord) of sample ``key`` of a grounded shard."""
    from PIL import Image

    from tokencompose.schemas.sample import SampleRecord
    from tokencompose.tasks.training.samples import ShardUnreadable, read_shard

    try:
        for raw in read_shard(str(shard)):
            if raw["__key__"] != key:
                continue
            image_bytes = next((raw[ext] for ext in ("jpg", "jpeg", "png", "webp") if ext in raw), None)
            if image_bytes is None or "json" not in raw:
                raise ValueError(f"{shard}: sample {key!r} has no image or no json member")
            record = SampleRecord.model_validate_json(raw["json"])
            return np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB")), record
    except ShardUnreadable as error:
        raise ValueError(f"cannot read the shard {shard}: {error}") from None
    raise ValueError(f"{shard}: no sample {key!r}")


def shard_noun_mask(record, noun: str, where: str) -> np.ndarray:
    """The grounded mask of ``noun`` (case-insensitive) in a sample record."""
    from tokencompose.tasks.grounding.masks import decode

    nouns = {n.text.lower(): n for n in record.nouns}
    found = nouns.get(noun.strip().lower())
    if found is None:
        raise ValueError(f"{where}: no noun {noun!r}; its nouns: {sorted(n.text for n in record.nouns)}")
    if found.mask is None:
        raise ValueError(f"{where}: the noun {noun!r} has no mask ({found.reason})")
    return check_mask(decode(found.mask.model_dump(), (record.height, record.width)), f"of {noun!r} in {where}")


def word_mask(pipe, image: np.ndarray, prompt: str, word: str, sampler, threshold: float
              ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(mask, heat map at the image's size in [0, 1], the word's token positions): the word's
    cross-attention over an image-to-image pass of the source with its own prompt (the sampler's strength,
    steps and seed; a mask over the whole image), averaged over steps and resolutions, scaled to [0, 1]
    and kept at ``threshold`` and above."""
    import torch
    import torch.nn.functional as F

    from tokencompose.tasks.editing.attention_over_time import AttentionRecorder, aggregate, word_tokens
    from tokencompose.tasks.editing.blend import EditItem, edit_batch

    tokens = word_tokens(pipe.tokenizer, prompt, [word])
    if sampler.strength == 0:
        raise ValueError("a word mask needs denoising steps: strength 0 runs none")
    probe = sampler.model_copy(update={"background": "none"})
    full = np.ones(image.shape[:2], bool)
    with AttentionRecorder(pipe.unet, tokens) as recorder:
        edit_batch(pipe, [EditItem(image, full, prompt)], probe, on_unet=recorder)
    heat = aggregate(recorder.steps)[0]
    span = float(heat.max() - heat.min())
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    big = F.interpolate(torch.from_numpy(heat)[None, None], size=image.shape[:2], mode="bilinear",
                        align_corners=False)[0, 0].numpy()
    return check_mask(big >= threshold, f"of the word {word!r}"), big, tokens[0]
