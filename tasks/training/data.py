"""Shards -> training batches.

Each shard sample is ``<key>.<image_field>`` (original image bytes) plus ``<key>.json`` (a
:class:`~tokencompose.schemas.sample.SampleRecord`). Both are decoded here, never through a pickle
decoder. The stream is infinite and deterministic: epoch ``e`` shuffles the shard list with
``(seed, e)``, splits it over ranks and DataLoader workers, and shuffles samples in a buffer seeded
per worker; so a resumed run can skip exactly the samples it already consumed without decoding them.

Bad data never stops the stream: every sample is checked against the data contract
(:mod:`tokencompose.tasks.training.samples`); one that breaks it is skipped, and the skip (shard,
key, reason) rides along with the next example to the trainer, which counts it and decides whether
the data is past the configured ceiling. A shard whose tar breaks is skipped from that point.

Geometry (the authors' torchvision pipeline, reproduced exactly; both loss aggregations share it):

- size: ``transforms.Resize(R)`` brings the short side to R and the long side to
  ``int(R * long / short)`` (truncated: 640x480 -> 682x512), then ``CenterCrop(R)`` cuts the square at
  ``round((side - R) / 2)`` (Python's round, half to even: 767 wide -> left 128);
- image: PIL bilinear resize (PIL antialiases when it shrinks) to that size, the crop, then
  ``ToTensor`` and ``Normalize(0.5, 0.5)`` computed in their order (``/255``, ``-0.5``, ``/0.5``), so
  the tensor equals torchvision's bit for bit;
- masks: the full-resolution 0/1 mask as a float tensor, resized as a tensor (bilinear, antialias
  only with ``mask_antialias``: torchvision 0.14, which the authors ran, did not antialias tensors),
  cropped, and kept fractional -- no threshold at R; then per attention resolution a bilinear resize
  (same antialias setting) and ``> 0``. Thresholding the R mask first (at 0.5) and rounding the long
  side would change about 1% of the 64x64 mask pixels, almost all towards smaller masks.
"""
from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tokencompose.schemas.config import ImageLimits
from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.grounding.masks import SegmentationProblem, decode as decode_rle
from tokencompose.schemas.curation import Exclusions
from tokencompose.tasks.training.samples import (FLAGGED, UNEXPECTED_ERROR, UNREADABLE_SHARD, DataError, SampleProblem, Skip,
                                                 ShardUnreadable, check_sample, read_shard)
from tokencompose.tasks.training.spatial import parse_relations

MAX_TOKENS = 77

# Per-sample counters, summed over a batch and over the run.
# ``samples_skipped`` counts every time the stream skips an unusable sample (again in each epoch).
STAT_KEYS = ("samples", "nouns", "nouns_used", "nouns_no_mask", "nouns_no_token", "nouns_bad_mask", "relations",
             "samples_skipped", "samples_flagged", "nouns_flagged")


def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) after ``transforms.Resize(resolution)``: short side to ``resolution``, long side
    ``int(resolution * long / short)`` (truncated, as torchvision computes it)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resolution, int(resolution * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, resolution: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The resize size (``transforms.Resize``) and the ``CenterCrop`` box (left, top, right, bottom) in it."""
    new_w, new_h = resized_size(width, height, resolution)
    left, top = int(round((new_w - resolution) / 2.0)), int(round((new_h - resolution) / 2.0))
    return (new_w, new_h), (left, top, left + resolution, top + resolution)


def transform_image(image: Image.Image, resolution: int) -> torch.Tensor:
    """PIL image -> 3 x R x R in [-1, 1]: Resize(R) (PIL bilinear), CenterCrop(R), ToTensor, Normalize(0.5, 0.5)."""
    size, box = center_crop_box(image.width, image.height, resolution)
    image = image.convert("RGB").resize(size, Image.Resampling.BILINEAR).crop(box)
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    return tensor.sub(0.5).div(0.5).contiguous()


def transform_mask(mask: np.ndarray | torch.Tensor, resolution: int, antialias: bool = False) -> torch.Tensor:
    """The image's geometry applied to H x W masks (..., H, W), boolean or 0/1: float R x R masks
    with the bilinear resize's fractional values at the edges (no threshold)."""
    mask = torch.as_tensor(mask)
    height, width = mask.shape[-2:]
    (new_w, new_h), (left, top, right, bottom) = center_crop_box(width, height, resolution)
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, height, width).float()
    if flat.shape[0] == 0:
        return flat.new_zeros(*lead, resolution, resolution)
    resized = F.interpolate(flat, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=antialias)
    return resized[:, 0, top:bottom, left:right].reshape(*lead, resolution, resolution).contiguous()


def resize_mask(mask: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """The authors' per-resolution mask: bilinear resize (no antialias by default), then ``> 0``.

    ``mask`` is (..., R, R), boolean or fractional (:func:`transform_mask`); the result is
    (..., size, size) float of 0/1.
    """
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    if flat.shape[0] == 0:
        return flat.new_zeros(*lead, size, size)
    resized = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return (resized > 0).float().reshape(*lead, size, size)


def noun_token_positions(offsets: Sequence[tuple[int, int]], special: Sequence[int],
                         span: tuple[int, int]) -> list[int]:
    """Every token whose character range overlaps the noun's ``[start, end)`` span (sub-words included)."""
    start, end = span
    return [i for i, ((a, b), is_special) in enumerate(zip(offsets, special))
            if not is_special and b > a and a < end and b > start]


@dataclass
class Example:
    key: str
    pixel_values: torch.Tensor                 # 3 x R x R in [-1, 1]
    input_ids: torch.Tensor                    # 77
    noun_tokens: list[list[int]]               # token positions of each kept noun
    masks: dict[int, torch.Tensor]             # attention resolution -> N x r x r float 0/1
    relations: list[tuple[int, int, int]]      # (noun a, noun b, direction) between kept nouns
    noun_texts: list[str] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    skipped: list[Skip] = field(default_factory=list)   # unusable samples the stream passed over before this one
    role: int = 0                                        # the reader role (ShardStream) that produced it
    position: int = 0                                    # raw samples that role consumed up to and including it
    bad_masks: list[str] = field(default_factory=list)   # "shard:key" of each noun skipped for a bad mask


class Preprocessor:
    """One raw WebDataset sample (bytes) -> :class:`Example`; picklable, runs in DataLoader workers."""

    def __init__(self, tokenizer, resolution: int, mask_resolutions: Sequence[int], mask_antialias: bool = False,
                 image_field: str | None = None, image_limits: ImageLimits = ImageLimits(),
                 exclusions: Exclusions = Exclusions()):
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("the training data needs a fast tokenizer (character offsets); load CLIPTokenizerFast")
        self.tokenizer = tokenizer
        self.resolution = resolution
        self.mask_resolutions = tuple(sorted(set(mask_resolutions)))
        self.mask_antialias = mask_antialias
        self.image_field = image_field
        self.image_limits = image_limits
        self.exclusions = exclusions  # flagged samples are skipped, flagged nouns lose their token loss

    def tokenize(self, caption: str) -> tuple[torch.Tensor, list[tuple[int, int]], list[int]]:
        encoded = self.tokenizer(caption, max_length=min(self.tokenizer.model_max_length, MAX_TOKENS),
                                 padding="max_length", truncation=True, return_offsets_mapping=True,
                                 return_special_tokens_mask=True)
        return (torch.tensor(encoded["input_ids"], dtype=torch.long), [tuple(o) for o in encoded["offset_mapping"]],
                encoded["special_tokens_mask"])

    def __call__(self, raw: dict) -> Example:
        """Raises :class:`SampleProblem` for a sample the training must skip (its reason says why)."""
        if raw.get("__key__") in self.exclusions.samples:  # before decoding anything
            raise SampleProblem(FLAGGED, f"flagged in {self.exclusions.source}")
        record, image = check_sample(raw, self.image_field, self.image_limits)
        try:
            example = self.from_record(record, image)
        except Exception as error:  # noqa: BLE001 - a valid record that still fails here must not end the run
            raise SampleProblem(UNEXPECTED_ERROR, f"{type(error).__name__}: {str(error)[:160]}") from error
        if example.stats["nouns_bad_mask"]:
            example.bad_masks = [f"{Path(str(raw.get('__url__', '?'))).name}:{record.key}"]
        return example

    def from_record(self, record: SampleRecord, image: Image.Image) -> Example:
        input_ids, offsets, special = self.tokenize(record.caption)
        stats: Counter = Counter(samples=1)
        kept_tokens, kept_masks, kept_texts, kept_spans = [], [], [], []
        for index, noun in enumerate(record.nouns):
            stats["nouns"] += 1
            if noun.mask is None:
                stats["nouns_no_mask"] += 1
                continue
            if self.exclusions.noun_flagged(record.key, index):
                stats["nouns_flagged"] += 1
                continue
            positions = noun_token_positions(offsets, special, noun.span)
            if not positions:  # beyond the 77-token window, or a span no token covers
                stats["nouns_no_token"] += 1
                continue
            try:  # checked before pycocotools sees it: a damaged or hostile RLE must not reach its buffers
                mask = decode_rle(noun.mask.model_dump())
            except SegmentationProblem:
                stats["nouns_bad_mask"] += 1
                continue
            if mask.shape != (image.height, image.width):
                mask = np.asarray(Image.fromarray(mask).resize((image.width, image.height), Image.Resampling.NEAREST))
            kept_tokens.append(positions)
            kept_masks.append(mask)
            kept_texts.append(noun.text)
            kept_spans.append(noun.span)
        stats["nouns_used"] += len(kept_tokens)
        stacked = (transform_mask(np.stack(kept_masks), self.resolution, self.mask_antialias) if kept_masks
                   else torch.zeros(0, self.resolution, self.resolution))
        masks = {r: resize_mask(stacked, r, self.mask_antialias) for r in self.mask_resolutions}
        relations = parse_relations(record.caption, kept_spans)
        stats["relations"] += len(relations)
        return Example(key=record.key, pixel_values=transform_image(image, self.resolution), input_ids=input_ids,
                       noun_tokens=kept_tokens, masks=masks, relations=relations, noun_texts=kept_texts, stats=stats)


@dataclass
class Batch:
    """Padded tensors: N nouns, K (noun, token) slots and R relations per sample, with validity masks."""

    keys: list[str]
    pixel_values: torch.Tensor     # B x 3 x R x R
    input_ids: torch.Tensor        # B x 77
    token_index: torch.Tensor      # B x K token position of each slot (0 where padded)
    slot_noun: torch.Tensor        # B x N x K float: 1 where slot k is a token of noun n
    noun_valid: torch.Tensor       # B x N bool
    masks: dict[int, torch.Tensor]  # r -> B x N x r x r float
    relations: torch.Tensor        # B x R x 3 long (noun a, noun b, direction)
    relation_valid: torch.Tensor   # B x R bool
    stats: dict[str, int]
    skipped: list[Skip] = field(default_factory=list)   # unusable samples passed over since the previous batch
    role: int = 0                  # the reader role that produced it (all its examples come from one)
    position: int = 0              # raw samples that role consumed up to its last example
    bad_masks: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(self.keys, move(self.pixel_values), move(self.input_ids), move(self.token_index),
                     move(self.slot_noun), move(self.noun_valid), {r: move(m) for r, m in self.masks.items()},
                     move(self.relations), move(self.relation_valid), dict(self.stats), list(self.skipped),
                     self.role, self.position, list(self.bad_masks))


def collate(examples: Sequence[Example]) -> Batch:
    size = len(examples)
    n_max = max((len(e.noun_tokens) for e in examples), default=0)
    k_max = max((sum(len(t) for t in e.noun_tokens) for e in examples), default=0)
    r_max = max((len(e.relations) for e in examples), default=0)
    token_index = torch.zeros(size, k_max, dtype=torch.long)
    slot_noun = torch.zeros(size, n_max, k_max)
    noun_valid = torch.zeros(size, n_max, dtype=torch.bool)
    relations = torch.zeros(size, r_max, 3, dtype=torch.long)
    relation_valid = torch.zeros(size, r_max, dtype=torch.bool)
    masks = {r: torch.zeros(size, n_max, r, r) for r in examples[0].masks}
    stats: Counter = Counter({k: 0 for k in STAT_KEYS})
    for b, example in enumerate(examples):
        slot = 0
        for n, positions in enumerate(example.noun_tokens):
            noun_valid[b, n] = True
            for position in positions:
                token_index[b, slot] = position
                slot_noun[b, n, slot] = 1.0
                slot += 1
        for r, mask in example.masks.items():
            masks[r][b, :mask.shape[0]] = mask
        for i, relation in enumerate(example.relations):
            relations[b, i] = torch.tensor(relation)
            relation_valid[b, i] = True
        stats.update(example.stats)
    skipped = [skip for e in examples for skip in e.skipped]
    stats["samples_skipped"] += len(skipped)
    stats["samples_flagged"] += sum(1 for skip in skipped if skip.reason == FLAGGED)
    return Batch([e.key for e in examples], torch.stack([e.pixel_values for e in examples]),
                 torch.stack([e.input_ids for e in examples]), token_index, slot_noun, noun_valid, masks,
                 relations, relation_valid, dict(stats), skipped, examples[-1].role,
                 max(e.position for e in examples), [where for e in examples for where in e.bad_masks])


class ShardStream(IterableDataset):
    """An endless, deterministic stream of :class:`Example` for one rank.

    ``skip_batches`` is how many batches this rank already consumed: a DataLoader takes batch ``i``
    from worker ``i % workers``, so each worker takes over the role (shards, shuffle seed) of the
    worker that would have produced its next batch and skips that role's share of raw samples
    before decoding any: ``positions[role]`` raw samples when given (the trainer records them, so
    skipped unusable samples are accounted for), else ``batch_size`` per batch the role produced.
    ``duplicates`` are the (shard, index) samples :func:`~.samples.scan_shards` found repeating an
    earlier key; they are skipped as ``duplicate_key``.
    """

    def __init__(self, urls: Sequence[str], preprocess: Preprocessor, *, seed: int = 0, shuffle_buffer: int = 256,
                 batch_size: int = 1, rank: int = 0, world_size: int = 1, skip_batches: int = 0,
                 positions: Sequence[int] | None = None, duplicates: frozenset[tuple[str, int]] = frozenset()):
        if not urls:
            raise ValueError("no shards to read")
        self.urls = list(urls)
        self.preprocess = preprocess
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.skip_batches = skip_batches
        self.positions = list(positions) if positions is not None else None
        self.duplicates = duplicates

    def _raw(self, urls: list[str], take: tuple[int, int] | None) -> Iterator[dict]:
        """Raw samples of ``urls`` in order; a shard whose tar breaks yields one ``__unreadable__``
        item there (it goes through the shuffle like a sample, so a resumed stream meets it again)."""
        index = 0
        for url in urls:
            try:
                for sample in read_shard(url):
                    if take is None or index % take[1] == take[0]:
                        yield sample
                    index += 1
            except ShardUnreadable as error:
                yield {"__url__": url, "__unreadable__": str(error)}

    def _checked(self, raw: dict) -> Example | Skip:
        url, key, index = raw["__url__"], raw.get("__key__"), raw.get("__index__", -1)
        if "__unreadable__" in raw:
            return Skip(url, -1, None, UNREADABLE_SHARD, raw["__unreadable__"])
        if (url, index) in self.duplicates:
            return Skip(url, index, key, "duplicate_key", "an earlier sample has this key")
        try:
            return self.preprocess(raw)
        except SampleProblem as problem:
            return Skip(url, index, key, problem.reason, problem.detail)

    def _shuffled(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        buffer: list[dict] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[Example]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # a new DataLoader starts at worker 0, the stopped one would have gone on with worker skip % workers
        role = (worker + self.skip_batches) % workers
        slot, slots = self.rank * workers + role, self.world_size * workers
        if self.positions is not None and len(self.positions) == workers:
            to_skip = self.positions[role]
        else:
            to_skip = len(range(role, self.skip_batches, workers)) * self.batch_size
        position, epoch, skipped = 0, 0, []
        while True:
            urls = list(self.urls)
            random.Random(f"{self.seed}/{epoch}").shuffle(urls)
            # enough shards: each reader gets whole shards; otherwise every reader takes every n-th sample
            mine, take = (urls[slot::slots], None) if len(urls) >= slots else (urls, (slot, slots))
            produced = usable = 0
            for raw in self._shuffled(self._raw(mine, take), random.Random(f"{self.seed}/{epoch}/{slot}")):
                produced += 1
                if to_skip:
                    to_skip -= 1
                    usable += 1  # consumed before the checkpoint: not ours to judge again
                    continue
                checked = self._checked(raw)
                if isinstance(checked, Skip):
                    skipped.append(checked)
                    continue
                usable += 1
                checked.skipped, skipped = skipped, []
                checked.role, checked.position = role, position + produced
                yield checked
            position += produced
            if not produced:
                raise DataError(f"reader {slot} of {slots} got no samples from {len(urls)} shard(s)")
            if not usable:
                reasons = Counter(skip.reason for skip in skipped)
                raise DataError(f"reader {slot} of {slots}: none of its {produced} samples in {len(mine)} shard(s) "
                                f"is usable ({', '.join(f'{r} {n}' for r, n in reasons.most_common())}); first: "
                                f"{skipped[0].where}: {skipped[0].detail}")
            epoch += 1


def make_loader(urls: Sequence[str], preprocess: Preprocessor, *, batch_size: int, num_workers: int, seed: int,
                shuffle_buffer: int, rank: int = 0, world_size: int = 1, skip_batches: int = 0,
                positions: Sequence[int] | None = None,
                duplicates: frozenset[tuple[str, int]] = frozenset()) -> DataLoader:
    stream = ShardStream(urls, preprocess, seed=seed, shuffle_buffer=shuffle_buffer, batch_size=batch_size,
                         rank=rank, world_size=world_size, skip_batches=skip_batches, positions=positions,
                         duplicates=duplicates)
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False,
                      prefetch_factor=4 if num_workers else None,
                      worker_init_fn=_forget_parent_thread_hooks)


def _forget_parent_thread_hooks(_worker_id: int) -> None:
    """Drop exit hooks that a forked worker inherits from the trainer's threads.

    Those threads (Prefect's API services, for one) do not exist in the child; their hooks fail at
    the worker's exit, which then dies with exit code 1 and makes the DataLoader's shutdown raise.
    """
    hooks = getattr(threading, "_threading_atexits", None)
    if isinstance(hooks, list):
        hooks.clear()
