"""What training sees of one sample: the caption's CLIP tokens, each noun's token positions, and each
noun's mask at the attention resolutions, all computed by the training data code itself
(:class:`tokencompose.tasks.training.data.Preprocessor`), not re-implemented here.

The tokenizer and the geometry are a training folder's when one is given: a training run or an
exported pipeline (the model's tokenizer; the run's resolution, trained layers and mask resize from its
train_config.json), a diffusers Stable Diffusion folder (its tokenizer; the model's own resolution and
the paper's layers, :func:`tokencompose.tasks.training.layout.folder_layout`), or a folder holding only a
CLIPTokenizerFast. Without a model the geometry is SD1.4's (512 px, maps 8-64) and the tokenizer CLIP's
real BPE vocabulary as open_clip bundles it, built the way :func:`tokencompose.tasks.training.toy.clip_tokenizer`
builds it (identical tokens and character offsets to SD1.x's tokenizer), cached under
``$XDG_CACHE_HOME/tokencompose``.

torch and transformers are imported on first use, so the viewer starts without them.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tokencompose.schemas.sample import SampleRecord
from tokencompose.viewer import render

# the geometry shown when no model or run says otherwise: SD1.4's 512 px and its maps (latent 64)
TRAIN_RESOLUTION = 512
ATTENTION_RESOLUTIONS = (8, 16, 32, 64)
CACHE_SAMPLES = 16


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tokencompose" / "viewer-clip-tokenizer"


_default_lock = threading.Lock()
_default_tokenizer = None


def default_tokenizer():
    """CLIP's tokenizer from open_clip's bundled BPE file (built once per process, cached on disk)."""
    global _default_tokenizer
    with _default_lock:
        if _default_tokenizer is not None:
            return _default_tokenizer
        from transformers import CLIPTokenizerFast

        cached = _cache_dir()
        if (cached / "tokenizer.json").is_file():
            try:
                _default_tokenizer = CLIPTokenizerFast.from_pretrained(str(cached))
                return _default_tokenizer
            except (OSError, ValueError):
                pass  # a damaged cache: build it again
        from tokencompose.tasks.training.toy import clip_tokenizer

        with tempfile.TemporaryDirectory() as work:
            tokenizer = clip_tokenizer(Path(work) / "bpe")
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".staging-"))
                tokenizer.save_pretrained(str(staging))
                shutil.rmtree(cached, ignore_errors=True)
                staging.rename(cached)
            except OSError:
                pass  # no writable cache: build it again next time
        _default_tokenizer = tokenizer
        return tokenizer


def folder_tokenizer(folder: Path):
    """The tokenizer of a training folder: ``folder/tokenizer`` (a diffusers pipeline) or ``folder``."""
    from transformers import CLIPTokenizerFast

    folder = Path(folder)
    return CLIPTokenizerFast.from_pretrained(str(folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder))


def holds_layout(folder: Path) -> bool:
    """A training run, an exported pipeline or a diffusers folder (not a bare tokenizer folder)."""
    from tokencompose.schemas.training import TRAIN_CONFIG_FILE

    return (Path(folder) / TRAIN_CONFIG_FILE).is_file() or (Path(folder) / "unet" / "config.json").is_file()


def run_antialias(folder: Path) -> bool | None:
    """A run's (or an exported pipeline's) mask_antialias; None for a plain model folder."""
    from tokencompose.schemas.training import TRAIN_CONFIG_FILE, TrainConfig

    path = Path(folder) / TRAIN_CONFIG_FILE
    return TrainConfig.from_file(path).mask_antialias if path.is_file() else None


@dataclass
class Token:
    position: int
    token: str  # the BPE token as the vocabulary spells it
    text: str  # the caption characters it covers
    start: int
    end: int
    special: bool
    noun: int | None = None  # index of the noun whose span it overlaps (first one)


@dataclass
class NounTraining:
    index: int
    text: str
    positions: list[int]
    used: bool
    why: str | None  # why training skips the noun
    cells: dict[int, int] = field(default_factory=dict)  # resolution -> mask cells that are on


@dataclass
class SampleTraining:
    tokens: list[Token]
    padding: int  # positions after the end token (padding up to 77)
    truncated: bool
    nouns: list[NounTraining]
    resolution: int
    resolutions: tuple[int, ...]
    tokenizer: str
    problem: str | None = None  # why masks cannot be shown (training would refuse the sample)
    crop: bytes | None = None  # the training crop as JPEG
    masks: dict[tuple[int, int], bytes] = field(default_factory=dict)  # (noun index, resolution) -> PNG

    def noun(self, index: int) -> NounTraining | None:
        return next((n for n in self.nouns if n.index == index), None)


class TrainingView:
    """Computes and caches :class:`SampleTraining` for the last few samples looked at."""

    def __init__(self, tokenizer_dir: Path | None = None, resolution: int = TRAIN_RESOLUTION,
                 resolutions: tuple[int, ...] = ATTENTION_RESOLUTIONS, antialias: bool = False):
        """``tokenizer_dir``: a run, pipeline or model folder (its geometry replaces the arguments once
        the tokenizer loads) or a tokenizer folder (the arguments' geometry)."""
        self.tokenizer_dir = tokenizer_dir
        self.resolution = resolution
        self.resolutions = tuple(sorted(set(resolutions)))
        self.antialias = antialias
        self._tokenizer = None
        self._problem: str | None = None
        self._lock = threading.Lock()  # tokenizer calls are not safe from several threads at once
        self._cache: OrderedDict[str, SampleTraining] = OrderedDict()
        self._warming = threading.Event()  # set while warm() loads the tokenizer

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer_dir) if self.tokenizer_dir else "CLIP BPE (open_clip's bundled vocabulary)"

    def tokenizer(self):
        if self._tokenizer is None and self._problem is None:
            try:
                self._tokenizer = self._load() if self.tokenizer_dir else default_tokenizer()
            except Exception as error:  # noqa: BLE001 - shown on the page instead of failing it
                self._problem = f"the tokenizer cannot be loaded: {type(error).__name__}: {error}"[:500]
        if self._problem:
            raise RuntimeError(self._problem)
        return self._tokenizer

    def _load(self):
        """The folder's tokenizer, and its geometry when it is a run, a pipeline or a model."""
        assert self.tokenizer_dir is not None
        if not holds_layout(self.tokenizer_dir):
            return folder_tokenizer(self.tokenizer_dir)
        from tokencompose.tasks.training.layout import folder_layout

        layout = folder_layout(self.tokenizer_dir)
        tokenizer = folder_tokenizer(layout.model)
        self.resolution, self.resolutions = layout.resolution, layout.resolutions
        antialias = run_antialias(self.tokenizer_dir)
        if antialias is not None:
            self.antialias = antialias
        return tokenizer

    def warm(self) -> threading.Thread:
        """Load the tokenizer in a thread; until it is loaded, :attr:`loading` is true and sample
        pages say so instead of waiting for it (importing torch and transformers takes seconds)."""
        self._warming.set()

        def load() -> None:
            try:
                self.tokenizer()
            except RuntimeError:
                pass
            finally:
                self._warming.clear()

        thread = threading.Thread(target=load, name="viewer-tokenizer", daemon=True)
        thread.start()
        return thread

    @property
    def loading(self) -> bool:
        return self._warming.is_set()

    def for_sample(self, key: str, record: SampleRecord, image_bytes: bytes | None) -> SampleTraining:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            result = self._compute(record, image_bytes)
            self._cache[key] = result
            while len(self._cache) > CACHE_SAMPLES:
                self._cache.popitem(last=False)
            return result

    def _compute(self, record: SampleRecord, image_bytes: bytes | None) -> SampleTraining:
        import torch

        from tokencompose.tasks.training.data import Preprocessor, noun_token_positions

        tokenizer = self.tokenizer()  # first: loading it sets a run's or model's geometry
        preprocess = Preprocessor(tokenizer, self.resolution, self.resolutions, self.antialias)
        input_ids, offsets, special = preprocess.tokenize(record.caption)
        names = preprocess.tokenizer.convert_ids_to_tokens(input_ids.tolist())
        end_token = preprocess.tokenizer.eos_token_id
        ids = input_ids.tolist()
        last = ids.index(end_token, 1) if end_token in ids[1:] else len(ids) - 1
        tokens = [Token(position=i, token=names[i], text=record.caption[a:b] if not special[i] else "",
                        start=a, end=b, special=bool(special[i])) for i, (a, b) in enumerate(offsets[:last + 1])]
        covered = max((t.end for t in tokens if not t.special), default=0)
        nouns: list[NounTraining] = []
        damaged = []
        for index, noun in enumerate(record.nouns):
            positions = noun_token_positions(offsets, special, noun.span)
            for position in positions:
                if tokens[position].noun is None:
                    tokens[position].noun = index
            if noun.mask is None:
                why = f"no mask ({noun.reason})"
            elif not positions:
                why = ("beyond the 77-token window: the caption is cut after its first 75 tokens"
                       if noun.span[0] >= covered else "no token covers its characters")
            else:
                try:
                    render.rle_counts(noun.mask.model_dump())
                    why = None
                except render.RenderError as problem:
                    damaged.append(noun.text)
                    why = f"damaged mask ({problem})"
            nouns.append(NounTraining(index=index, text=noun.text, positions=positions, used=why is None, why=why))
        result = SampleTraining(tokens=tokens, padding=len(ids) - last - 1, truncated=covered < len(record.caption.rstrip()),
                                nouns=nouns, resolution=self.resolution, resolutions=self.resolutions,
                                tokenizer=self.tokenizer_name)
        if damaged:
            result.problem = (f"training cannot decode this sample: the mask of {', '.join(damaged)} is damaged")
            return result
        if image_bytes is None:
            result.problem = "the image cannot be read, so training cannot use this sample"
            return result
        try:
            with Image.open(io.BytesIO(image_bytes)) as image, render.bounded_decode(image):
                image.load()
                example = preprocess.from_record(record, image)
        except (OSError, ValueError, Image.DecompressionBombError, render.RenderError) as error:
            result.problem = f"the image cannot be decoded, so training cannot use this sample: {error}"[:500]
            return result
        used = [n for n in nouns if n.used]
        if [n.positions for n in used] != example.noun_tokens:  # the same nouns, in the same order
            result.problem = "the viewer's reading of the nouns differs from the training code's (a viewer bug)"
            return result
        pixels = ((example.pixel_values.permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).round()
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=88)
        result.crop = buffer.getvalue()
        for kept, trained in enumerate(used):
            for resolution in self.resolutions:
                grid = example.masks[resolution][kept].to(torch.bool).numpy()
                trained.cells[resolution] = int(grid.sum())
                result.masks[(trained.index, resolution)] = grid_png(grid, render.colour(trained.index))
        return result


def grid_png(grid: np.ndarray, hex_colour: str) -> bytes:
    """An r x r boolean grid as a 1-bit palette PNG: the colour where on, transparent elsewhere."""
    height, width = grid.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(grid, dtype=np.uint8).tobytes())
    image.putpalette([0, 0, 0, *render.rgb(hex_colour)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0, bits=1)
    return buffer.getvalue()
