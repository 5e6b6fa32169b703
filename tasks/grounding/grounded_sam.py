"""Grounded-SAM, as the paper used it: GroundingDINO boxes per noun, then SAM-HQ masks per box.

Per batch of images:

1. Detection. Each image's nouns become one prompt, "noun1 . noun2 . noun3 ." in lower case
   (:mod:`tokencompose.tasks.grounding.token_assignment`). The image is resized to short side 800 (long side
   at most 1333) with ImageNet normalisation, through groundingdino's own transforms.
   GroundingDINO SwinT-OGC scores 900 query boxes against the prompt's tokens; a box is kept
   when its best token score exceeds ``box_threshold`` (no NMS, as the authors), and it belongs
   to the noun owning the prompt tokens on which it exceeds ``text_threshold`` -- by token
   position, never by substring. Images of any sizes share a batch (:meth:`GroundedSam.dino_forward`):
   the Swin backbone and the input projections (whose GroupNorm would see padding) run per group of
   equal size; their feature maps are then zero-padded to the batch's largest, with the padding
   masks GroundingDINO's NestedTensor carries, for the text encoder, the deformable encoder and
   decoder (which honour them) -- and padded positions are kept out of the two-stage query
   selection. Prompts of any length share a batch too; with :func:`fix_text_mask_order` a batch
   gives the boxes one-by-one inference gives (up to float rounding), so a dataset does not depend
   on the batch size.
2. Segmentation. All assigned boxes of an image go to SAM-HQ in one call
   (``multimask_output=False``); image embeddings are computed for a batch of images at once.
3. A noun's mask is the union of its boxes' masks; its ``box`` the bounding box of that union,
   its ``score`` its best box score; ``boxes``/``box_scores`` keep every box (x, y, w, h pixels).
   A noun without a box gets :data:`NounReason.NO_DETECTION`.

Image decoding and resizing (both models' inputs) run on a thread pool of CPU workers, ahead of
the batch the device is busy with; on a GPU the tensors are pinned and copied asynchronously.

Models are loaded once per process and device (a module-level cache) and used under a lock, so
shard tasks running as threads share one copy. ``precision`` picks the autocast dtype (weights stay
fp32): bf16 by default on a GPU (with ``half_precision``), fp32 on the CPU (fp16 is refused there:
CPU fp16 kernels are slow or missing; bf16 may be asked for).
"""
from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from tokencompose.tasks.models import devices

from tokencompose.tasks.models import weights
from tokencompose.schemas.config import BuildConfig
from tokencompose.tasks.grounding import masks
from tokencompose.schemas.sample import BackendInfo, CocoRLE, Grounding
from tokencompose.schemas.reasons import NounReason
from tokencompose.schemas.records import ImageRecord
from tokencompose.tasks.grounding.token_assignment import Prompt, assign_boxes, build_prompt, select_boxes, token_owners

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_CONFIG = "GroundingDINO_SwinT_OGC.py"

_cache: dict[tuple, object] = {}
_cache_lock = threading.Lock()


def _cached(key: tuple, build):
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def clear_model_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _torch_load(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a checkpoint that pickles more than tensors (e.g. training args)
        if "weights_only" not in str(error) and "Unpickl" not in type(error).__name__:
            raise
        log.warning("%s holds more than tensors; loading it with weights_only=False", path.name)
        return torch.load(path, map_location="cpu", weights_only=False)


def _check_loaded(model, result, name: str) -> None:
    parameters = {n for n, _ in model.named_parameters()}
    missing = [k for k in result.missing_keys if k in parameters]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise RuntimeError(f"{name} does not fit the model: {len(missing)} parameters missing ({shown})")
    if result.unexpected_keys:
        log.info("%s: %d unexpected keys ignored", name, len(result.unexpected_keys))


def dino_config_path() -> Path:
    import groundingdino.config

    return Path(groundingdino.config.__file__).resolve().parent / DINO_CONFIG


def build_dino(text_encoder: Path, config_path: Path | None = None, overrides: dict | None = None):
    """GroundingDINO from its SwinT-OGC config, random weights, text encoder from a local folder."""
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    args = SLConfig.fromfile(str(config_path or dino_config_path()))
    args.text_encoder_type = str(text_encoder)
    args.device = "cpu"
    # gradient checkpointing only matters for training; in inference it costs time and warnings
    args.use_checkpoint = False
    args.use_transformer_ckpt = False
    for key, value in (overrides or {}).items():
        setattr(args, key, value)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the text encoder path
        model = build_model(args)
    fix_text_mask_order(model)
    return model.eval()


def fix_text_mask_order(model) -> None:
    """Make GroundingDINO's text self-attention use each sample's own mask in a batch.

    Its text encoder layers expand the (batch, tokens, tokens) mask to one per head with
    ``mask.repeat(nhead, 1, 1)`` -- order [b0, b1, .., b0, b1, ..] -- while torch's
    MultiheadAttention reads a 3-D mask as [b0h0, b0h1, .., b1h0, ..]. With a batch of one the two
    orders agree (the authors' case); with more, heads of one image get another prompt's mask.
    Expanding the mask in the right order before the layer sees it (the layer then leaves it as
    is) gives every image exactly its one-by-one result. The weights and the single-image
    computation are untouched.
    """
    layers = getattr(getattr(getattr(model, "transformer", None), "encoder", None), "text_layers", None) or []
    for layer in layers:
        if getattr(layer, "_tokencompose_mask_fix", False):
            continue
        original = layer.forward

        def forward(src, src_mask=None, src_key_padding_mask=None, pos=None, _original=original, _heads=layer.nhead):
            if src_mask is not None and src_mask.dim() == 3 and src_mask.shape[0] == src.shape[1] > 1:
                src_mask = src_mask.repeat_interleave(_heads, dim=0)
            return _original(src, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask, pos=pos)

        layer.forward = forward
        layer._tokencompose_mask_fix = True


_query_position = threading.local()


def fix_query_positions() -> None:
    """Let a padded batch's decoder see the query positions one-by-one inference sees.

    GroundingDINO's decoder embeds each query's position (``gen_sineembed_for_position``) from its
    reference box scaled to the padded feature map (times the image's valid ratio); alone, an image
    has no padding and the ratio is 1. While :meth:`GroundedSam.dino_forward` runs a padded batch it
    sets the ratios here (this thread only), and the embedding is taken of the box relative to the
    image again -- as at batch size one. The deformable sampling keeps the padded coordinates, which
    address the same feature-map pixels. Anything else calling GroundingDINO is unaffected.
    """
    from groundingdino.models.GroundingDINO import transformer

    original = transformer.gen_sineembed_for_position
    if getattr(original, "_tokencompose_fix", False):
        return

    def gen_sineembed_for_position(pos_tensor):
        ratios = getattr(_query_position, "ratios", None)  # (batch, 4): level-0 valid ratios (w, h, w, h)
        if ratios is not None and pos_tensor.dim() == 3 and pos_tensor.shape[1] == ratios.shape[0]:
            pos_tensor = pos_tensor / ratios[None, :, :pos_tensor.shape[-1]]
        return original(pos_tensor)

    setattr(gen_sineembed_for_position, "_tokencompose_fix", True)  # marks the patch as applied once
    transformer.gen_sineembed_for_position = gen_sineembed_for_position


def load_dino(checkpoint: Path, text_encoder: Path, device: str):
    def build():
        from groundingdino.util.misc import clean_state_dict

        model = build_dino(text_encoder)
        state = _torch_load(checkpoint)
        state = state.get("model", state) if isinstance(state, dict) else state
        _check_loaded(model, model.load_state_dict(clean_state_dict(state), strict=False), checkpoint.name)
        return model.to(device).eval()
    return _cached(("dino", str(checkpoint), str(text_encoder), device), build)


def load_sam(checkpoint: Path, variant: str, device: str):
    def build():
        from segment_anything_hq import sam_model_registry

        with contextlib.redirect_stdout(io.StringIO()):
            model = sam_model_registry[variant](checkpoint=None)
        result = model.load_state_dict(_torch_load(checkpoint), strict=False)
        _check_loaded(model, result, checkpoint.name)
        return model.to(device).eval()
    return _cached(("sam", str(checkpoint), variant, device), build)


@dataclass
class Detections:
    """Boxes kept for one image: xyxy pixels, best token score, and prompt noun index (-1: none)."""

    boxes: np.ndarray  # (n, 4) float, xyxy in pixels of the original image
    scores: np.ndarray  # (n,)
    nouns: np.ndarray  # (n,) int


def dino_transform(short_side: int = 800, max_side: int = 1333):
    import groundingdino.datasets.transforms as T

    return T.Compose([T.RandomResize([short_side], max_size=max_side), T.ToTensor(),
                      T.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])


def boxes_to_pixels(cxcywh: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised (cx, cy, w, h) to pixel (x0, y0, x1, y1), clipped to the image."""
    cx, cy, w, h = (cxcywh[:, i] for i in range(4))
    xyxy = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
    return xyxy


def _shape_groups(shapes: Sequence[tuple], batch_size: int | None = None) -> list[list[int]]:
    """Indices grouped by equal shape, in first-appearance order (each group cut into batches)."""
    groups: dict[tuple, list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    size = batch_size or max(1, len(shapes))
    return [idx[s:s + size] for idx in groups.values() for s in range(0, len(idx), size)]


def _size_batches(shapes: Sequence[tuple], batch_size: int) -> list[list[int]]:
    """Indices in batches of ``batch_size`` regardless of size, similar shapes together (sorted by
    orientation, then height and width) so that padding to a batch's largest stays small."""
    order = sorted(range(len(shapes)), key=lambda i: (shapes[i][-2] > shapes[i][-1], shapes[i][-2], shapes[i][-1], i))
    return [sorted(order[s:s + batch_size]) for s in range(0, len(order), batch_size)]


PRECISIONS: dict[str, str | None] = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


def resolve_precision(device: str, precision: str | None, half_precision: bool = True) -> str:
    """The autocast precision: ``precision`` when given (fp16 only on a GPU), else bf16 on a GPU with
    ``half_precision`` and fp32 otherwise."""
    if precision is None:
        return "bf16" if half_precision and device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and not device.startswith("cuda"):
        log.warning("fp16 is not run on %s (slow or missing kernels): fp32 instead", device)
        return "fp32"
    return precision


def autocast(device: str, precision: str):
    """Autocast to ``precision`` on the device's type; a no-op context for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, str(PRECISIONS[precision])))


@dataclass
class Prepared:
    """One image's CPU-side inputs: the detector tensor (normalised, resized) and SAM's resized array."""

    dino: object  # torch.Tensor 3 x h x w
    sam: np.ndarray  # h' x w' x 3 uint8, long side = SAM's input size
    size: tuple[int, int]  # original (height, width)
    seconds: float = 0.0


class GroundedSam:
    """The paper's grounder (GroundingDINO + SAM-HQ) with mixed-size batching, overlapped CPU
    preparation, reduced-precision autocast on GPU and token-position assignment of boxes to nouns."""

    source = "grounded_sam"

    def __init__(self, dino_checkpoint: Path, text_encoder: Path, sam_checkpoint: Path, sam_variant: str = "vit_h",
                 box_threshold: float = 0.25, text_threshold: float = 0.25, device: str = "auto",
                 half_precision: bool = True, batch_size: int = 4, short_side: int = 800, max_side: int = 1333,
                 precision: str | None = None, prep_workers: int = 2):
        import torch

        self.device = devices.resolve_device(device)
        self.precision = resolve_precision(self.device, precision, half_precision)
        self.half = self.precision != "fp32"
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.batch_size = batch_size
        self.short_side, self.max_side = short_side, max_side
        self.paths = {"detector": Path(dino_checkpoint), "text_encoder": Path(text_encoder),
                      "segmenter": Path(sam_checkpoint)}
        self.sam_variant = sam_variant
        self.dino = load_dino(self.paths["detector"], self.paths["text_encoder"], self.device)
        self.sam = load_sam(self.paths["segmenter"], sam_variant, self.device)
        self.lock = _cached(("lock", self.device), threading.Lock)
        self.transform = dino_transform(short_side, max_side)
        from segment_anything_hq.utils.transforms import ResizeLongestSide

        self.sam_resize = ResizeLongestSide(self.sam.image_encoder.img_size)
        self.prep_workers = max(0, prep_workers)
        self.pin = self.device.startswith("cuda")
        self.timings: defaultdict[str, float] = defaultdict(float)  # seconds per stage, summed over calls: prep, detector, segmenter
        self._torch = torch

    @classmethod
    def from_config(cls, config: BuildConfig) -> "GroundedSam":
        g = config.grounding
        return cls(dino_checkpoint=weights.locate(config, weights.GROUNDINGDINO_SWINT_OGC),
                   text_encoder=weights.locate(config, weights.text_encoder_spec(g.text_encoder)),
                   sam_checkpoint=weights.locate(config, weights.sam_hq_spec(g.sam_variant)),
                   sam_variant=g.sam_variant, box_threshold=g.box_threshold, text_threshold=g.text_threshold,
                   device=config.models.device, half_precision=g.half_precision, batch_size=g.batch_size,
                   short_side=g.short_side, max_side=g.max_side, precision=getattr(g, "precision", None))

    def info(self) -> BackendInfo:
        return BackendInfo(
            name="grounded_sam",
            version=f"groundingdino-py {metadata.version('groundingdino-py')}, "
                    f"segment-anything-hq {metadata.version('segment-anything-hq')}",
            details={"detector": "GroundingDINO SwinT-OGC", "detector_weights": self.paths["detector"].name,
                     "text_encoder": self.paths["text_encoder"].name, "segmenter": f"SAM-HQ {self.sam_variant}",
                     "segmenter_weights": self.paths["segmenter"].name, "box_threshold": self.box_threshold,
                     "text_threshold": self.text_threshold, "resize": [self.short_side, self.max_side],
                     "precision": "fp32" if self.precision == "fp32" else f"{self.precision}-autocast",
                     "prompt": "noun1 . noun2 . noun3 .", "assignment": "token positions",
                     "multimask_output": False})

    # -- CPU preparation -----------------------------------------------------------------------

    def prepare(self, image: Image.Image) -> Prepared:
        """Both models' CPU inputs for one image (decode, resize, normalise): runs in the worker pool."""
        start = time.perf_counter()
        image = image.convert("RGB")
        tensor = self.transform(image, None)[0]
        array = np.asarray(image)
        resized = self.sam_resize.apply_image(array)
        if self.pin:
            tensor = tensor.pin_memory()
        return Prepared(tensor, resized, array.shape[:2], time.perf_counter() - start)

    @contextlib.contextmanager
    def _prepared(self, images: Sequence[Image.Image]):
        """A function index -> :class:`Prepared`, each image prepared once, on the pool ahead of use."""
        if self.prep_workers == 0 or len(images) <= 1:
            cache: dict[int, Prepared] = {}

            def get(i: int) -> Prepared:
                if i not in cache:
                    cache[i] = self.prepare(images[i])
                    self.timings["prep"] += cache[i].seconds
                return cache[i]
            yield get
            return
        with ThreadPoolExecutor(self.prep_workers, thread_name_prefix="grounding-prep") as pool:
            futures = [pool.submit(self.prepare, image) for image in images]
            counted: set[int] = set()

            def get(i: int) -> Prepared:
                result = futures[i].result()
                if i not in counted:
                    counted.add(i)
                    self.timings["prep"] += result.seconds
                return result
            try:
                yield get
            finally:
                for future in futures:
                    future.cancel()

    def _to_device(self, tensor):
        return tensor.to(self.device, non_blocking=self.pin)

    # -- detection -----------------------------------------------------------------------------

    def prompt_owners(self, prompt: Prompt) -> np.ndarray:
        tokenizer = self.dino.tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise RuntimeError("token-position assignment needs a fast tokenizer (tokenizer.json or the "
                               "'tokenizers' package)")
        offsets = tokenizer(prompt.text, return_offsets_mapping=True)["offset_mapping"]
        return token_owners(offsets, prompt.spans)

    def encode_text(self, captions: Sequence[str]) -> dict:
        """GroundingDINO's text features for a batch of prompts (padded to the longest), as its forward
        computes them: sub-sentence masks and position ids, BERT, projection, cut to max_text_len."""
        from groundingdino.models.GroundingDINO.bertwarper import generate_masks_with_special_tokens_and_transfer_map

        dino = self.dino
        tokenized = dino.tokenizer(list(captions), padding="longest", return_tensors="pt").to(self.device)
        self_masks, position_ids, _ = generate_masks_with_special_tokens_and_transfer_map(
            tokenized, dino.specical_tokens, dino.tokenizer)
        limit = dino.max_text_len
        self_masks, position_ids = self_masks[:, :limit, :limit], position_ids[:, :limit]
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in tokenized:
                tokenized[key] = tokenized[key][:, :limit]
        if dino.sub_sentence_present:
            for_encoder = {k: v for k, v in tokenized.items() if k != "attention_mask"}
            for_encoder.update(attention_mask=self_masks, position_ids=position_ids)
        else:
            for_encoder = tokenized
        encoded = dino.feat_map(dino.bert(**for_encoder)["last_hidden_state"])
        return {"encoded_text": encoded[:, :limit], "text_token_mask": tokenized["attention_mask"].bool()[:, :limit],
                "position_ids": position_ids, "text_self_attention_masks": self_masks}

    def _image_levels(self, images: Sequence) -> tuple[list[list], list[list]]:
        """Per image, the projected feature map and position encoding of every level, computed per
        group of equal size without padding (Swin's windows and input_proj's GroupNorm would see it)."""
        from groundingdino.util.misc import NestedTensor

        torch, dino = self._torch, self.dino
        srcs: list[list] = [[] for _ in images]
        poss: list[list] = [[] for _ in images]
        for group in _shape_groups([tuple(x.shape) for x in images]):
            x = torch.stack([images[i] for i in group])
            no_padding = torch.zeros((x.shape[0], *x.shape[-2:]), dtype=torch.bool, device=x.device)
            features, pos = dino.backbone(NestedTensor(x, no_padding))
            level_srcs = [dino.input_proj[level](feature.tensors) for level, feature in enumerate(features)]
            pos = list(pos)
            for level in range(len(level_srcs), dino.num_feature_levels):
                src = dino.input_proj[level](features[-1].tensors if level == len(features) else level_srcs[-1])
                mask = torch.zeros((src.shape[0], *src.shape[-2:]), dtype=torch.bool, device=src.device)
                pos.append(dino.backbone[1](NestedTensor(src, mask)).to(src.dtype))
                level_srcs.append(src)
            for k, i in enumerate(group):
                srcs[i] = [s[k] for s in level_srcs]
                poss[i] = [p[k] for p in pos]
        return srcs, poss

    def dino_forward(self, images: Sequence, captions: Sequence[str]) -> dict:
        """GroundingDINO on images of any sizes (3 x h x w tensors on the device): ``pred_logits`` and
        ``pred_boxes`` as its forward gives, each image's boxes relative to its own size."""
        from groundingdino.util.misc import inverse_sigmoid

        torch, dino = self._torch, self.dino
        text_dict = self.encode_text(captions)
        per_image_srcs, per_image_poss = self._image_levels(images)
        srcs, masks, poss = [], [], []
        for level in range(dino.num_feature_levels):
            maps = [s[level] for s in per_image_srcs]
            height, width = max(m.shape[-2] for m in maps), max(m.shape[-1] for m in maps)
            src = maps[0].new_zeros((len(maps), maps[0].shape[0], height, width))
            pos = per_image_poss[0][level].new_zeros((len(maps), per_image_poss[0][level].shape[0], height, width))
            mask = torch.ones((len(maps), height, width), dtype=torch.bool, device=src.device)
            for i, m in enumerate(maps):
                h, w = m.shape[-2:]
                src[i, :, :h, :w] = m
                pos[i, :, :h, :w] = per_image_poss[i][level]
                mask[i, :h, :w] = False
            srcs.append(src)
            poss.append(pos)
            masks.append(mask)
        padded = torch.cat([m.flatten(1) for m in masks], 1)
        hook = None
        if padded.any():
            fix_query_positions()
            # padded positions hold a constant feature: keep them out of the top-k query selection
            hook = dino.transformer.enc_out_class_embed.register_forward_hook(
                lambda module, args, out: out.masked_fill(padded[:, :, None], float("-inf")))
            ratios = dino.transformer.get_valid_ratio(masks[0])  # (batch, 2) as the transformer computes it
            _query_position.ratios = torch.cat([ratios, ratios], -1)
        try:
            hs, reference, _, _, _ = dino.transformer(srcs, masks, None, poss, None, None, text_dict)
        finally:
            _query_position.ratios = None
            if hook is not None:
                hook.remove()
        boxes = (dino.bbox_embed[-1](hs[-1]) + inverse_sigmoid(reference[-2])).sigmoid()
        return {"pred_logits": dino.class_embed[-1](hs[-1], text_dict), "pred_boxes": boxes}

    def detect(self, images: Sequence[Image.Image], prompts: Sequence[Prompt], prepared=None) -> list[Detections]:
        if prepared is None:
            with self._prepared(images) as get:
                return self.detect(images, prompts, get)
        torch = self._torch
        empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
        results: list[Detections] = [empty] * len(images)
        todo = [i for i, p in enumerate(prompts) if p.nouns]
        # the resized sizes follow the original ones: batching by those keeps similar sizes together
        for batch in _size_batches([(images[i].height, images[i].width) for i in todo], self.batch_size):
            indices = [todo[j] for j in batch]
            tensors = [self._to_device(prepared(i).dino) for i in indices]
            start = time.perf_counter()
            with torch.inference_mode(), autocast(self.device, self.precision):
                out = self.dino_forward(tensors, [prompts[i].text for i in indices])
            probs = out["pred_logits"].float().sigmoid().cpu().numpy()
            cxcywh = out["pred_boxes"].float().cpu().numpy()
            self.timings["detector"] += time.perf_counter() - start
            for k, i in enumerate(indices):
                keep = select_boxes(probs[k], self.box_threshold)
                owners = self.prompt_owners(prompts[i])
                nouns = assign_boxes(probs[k][keep], owners, self.text_threshold)
                width, height = images[i].size
                results[i] = Detections(boxes_to_pixels(cxcywh[k][keep].astype(np.float64), width, height),
                                        probs[k][keep].max(axis=1) if len(keep) else np.zeros(0), nouns)
        return results

    # -- segmentation --------------------------------------------------------------------------

    def segment(self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray],
                prepared=None) -> list[np.ndarray | None]:
        """Boolean masks (n, H, W) for each image's xyxy boxes (None where an image has none).
        Images of any sizes share a batch: SAM pads each to its square input."""
        if prepared is None:
            with self._prepared(images) as get:
                return self.segment(images, boxes, get)
        torch = self._torch
        results: list[np.ndarray | None] = [None] * len(images)
        todo = [i for i, b in enumerate(boxes) if len(b)]
        for start in range(0, len(todo), self.batch_size):
            indices = todo[start:start + self.batch_size]
            inputs, sizes = [], []
            for i in indices:
                item = prepared(i)
                tensor = torch.from_numpy(np.ascontiguousarray(item.sam)).permute(2, 0, 1)
                tensor = self._to_device(tensor.pin_memory() if self.pin else tensor).float()
                sizes.append((item.size, tuple(tensor.shape[-2:])))
                inputs.append(self.sam.preprocess(tensor))
            began = time.perf_counter()
            with torch.inference_mode(), autocast(self.device, self.precision):
                embeddings, interm = self.sam.image_encoder(torch.stack(inputs))
                for k, i in enumerate(indices):
                    original, input_size = sizes[k]
                    box_t = self.sam_resize.apply_boxes_torch(
                        torch.as_tensor(boxes[i], dtype=torch.float32, device=self.device), original)
                    sparse, dense = self.sam.prompt_encoder(points=None, boxes=box_t, masks=None)
                    low_res, _ = self.sam.mask_decoder(
                        image_embeddings=embeddings[k:k + 1], image_pe=self.sam.prompt_encoder.get_dense_pe(),
                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
                        hq_token_only=False, interm_embeddings=[x[k:k + 1] for x in interm])
                    full = self.sam.postprocess_masks(low_res.float(), input_size, original)
                    results[i] = (full[:, 0] > self.sam.mask_threshold).cpu().numpy()
            self.timings["segmenter"] += time.perf_counter() - began
        return results

    # -- the Grounder protocol -----------------------------------------------------------------

    def ground(self, images: Sequence[Image.Image], records: Sequence[ImageRecord],
               nouns: Sequence[Sequence[str]]) -> list[list[Grounding]]:
        prompts = [build_prompt(image_nouns) for image_nouns in nouns]
        with self.lock, self._prepared(images) as prepared:
            detections = self.detect(images, prompts, prepared)
            assigned = [d.nouns >= 0 for d in detections]
            box_masks = self.segment(images, [d.boxes[a] for d, a in zip(detections, assigned)], prepared)
        out = []
        for prompt, found, keep, image_masks in zip(prompts, detections, assigned, box_masks):
            per_prompt_noun = [self._noun_grounding(found.boxes[keep], found.scores[keep], found.nouns[keep],
                                                    image_masks, n) for n in range(len(prompt.nouns))]
            out.append([per_prompt_noun[n] if n >= 0 else Grounding(reason=NounReason.NO_DETECTION)
                        for n in prompt.noun_index])
        return out

    def _noun_grounding(self, boxes: np.ndarray, scores: np.ndarray, owners: np.ndarray,
                        box_masks: np.ndarray | None, noun: int) -> Grounding:
        mine = np.nonzero(owners == noun)[0]
        if len(mine) == 0 or box_masks is None:
            return Grounding(reason=NounReason.NO_DETECTION)
        mine = mine[np.argsort(-scores[mine], kind="stable")]  # best box first
        xywh = [(round(float(b[0]), 2), round(float(b[1]), 2), round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2))
                for b in boxes[mine]]
        box_scores = [round(float(s), 6) for s in scores[mine]]
        union = np.logical_or.reduce(box_masks[mine], axis=0)
        if not union.any():
            return Grounding(boxes=xywh, box_scores=box_scores, score=max(box_scores), reason=NounReason.EMPTY_MASK)
        rle = masks.encode(union)
        return Grounding(mask=CocoRLE.model_validate(rle), box=masks.box(rle), score=max(box_scores), boxes=xywh, box_scores=box_scores,
                         source=self.source)
