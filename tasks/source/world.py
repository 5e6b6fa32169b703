"""A synthetic compositional world: a COCO-format source of flat shapes, deterministic from a seed.

Eight categories, each one shape in one saturated colour, are named after COCO categories (a red
octagon is a ``stop sign``, a blue diamond a ``kite``...), so the normal offline build grounds the
caption nouns through the bundled COCO table with nothing special-cased. Each image holds 2 to 4
non-overlapping objects over a plain or textured low-saturation background; masks are the drawn
pixels exactly (no anti-aliasing, PNG). Some category pairs never co-occur in a training world
(:data:`HELD_OUT_PAIRS`): MultiGen prompts that ask for them measure composition beyond the data.

:func:`write_world` writes ``images/``, ``captions.json``, ``instances.json`` (compressed RLE) and
``world.json`` (the categories, held-out pairs, seed and size).
"""
from __future__ import annotations

import colorsys
import io
import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from tokencompose.tasks.grounding.coco import load_coco_categories
from tokencompose.tasks.grounding.masks import encode

WORLD_FILE = "world.json"


@dataclass(frozen=True)
class WorldCategory:
    name: str          # a COCO category name: the noun in captions and prompts
    shape: str
    hue: float         # degrees; the colour is fully saturated at value 0.9

    @property
    def rgb(self) -> tuple[int, int, int]:
        r, g, b = colorsys.hsv_to_rgb(self.hue / 360.0, 0.9, 0.9)
        return round(r * 255), round(g * 255), round(b * 255)


CATEGORIES: tuple[WorldCategory, ...] = (
    WorldCategory("stop sign", "octagon", 0),
    WorldCategory("pizza", "triangle", 30),
    WorldCategory("banana", "crescent", 60),
    WorldCategory("broccoli", "cloud", 120),
    WorldCategory("frisbee", "disc", 180),
    WorldCategory("kite", "diamond", 225),
    WorldCategory("umbrella", "dome", 270),
    WorldCategory("donut", "ring", 315),
)
BY_NAME = {c.name: c for c in CATEGORIES}
# Never drawn together in a training world (the paper's "rarely co-occurring" case).
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (("stop sign", "kite"), ("banana", "umbrella"))
MIN_OBJECTS, MAX_OBJECTS = 2, 4


def shape_mask(shape: str, size: int) -> np.ndarray:
    """A boolean ``size`` x ``size`` mask of one shape filling its box."""
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = (x - c) / (size / 2.0), (y - c) / (size / 2.0)     # -1..1 across the box
    r = np.hypot(dx, dy)
    if shape == "disc":
        return r <= 1.0
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.45)
    if shape == "octagon":
        return (np.abs(dx) <= 1) & (np.abs(dy) <= 1) & (np.abs(dx) + np.abs(dy) <= 1.42)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.0
    if shape == "triangle":    # apex up
        return (dy <= 1.0) & (np.abs(dx) <= (dy + 1.0) / 2.0)
    if shape == "dome":        # the upper part of a disc centred low in the box
        return (np.hypot(dx, dy - 0.4) <= 1.0) & (dy <= 0.4)
    if shape == "crescent":
        return (r <= 1.0) & (np.hypot(dx - 0.55, dy + 0.1) > 0.8)
    if shape == "cloud":
        return ((np.hypot(dx + 0.45, dy - 0.25) <= 0.55) | (np.hypot(dx - 0.45, dy - 0.25) <= 0.55)
                | (np.hypot(dx, dy + 0.3) <= 0.62))
    raise ValueError(f"unknown shape {shape!r}")


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Plain grey, or a textured one (noise or stripes), always of low saturation so no category's colour."""
    base = rng.integers(150, 235)
    image = np.full((size, size, 3), base, dtype=np.int16)
    kind = rng.integers(0, 3)
    if kind == 1:
        image += rng.integers(-18, 19, size=(size, size, 1), dtype=np.int16)
    elif kind == 2:
        period = int(rng.integers(4, 10))
        stripes = ((np.arange(size) // period) % 2 * 24 - 12).astype(np.int16)
        image += stripes[None, :, None] if rng.integers(0, 2) else stripes[:, None, None]
    tint = rng.integers(-6, 7, size=3, dtype=np.int16)
    return np.clip(image + tint, 0, 255).astype(np.uint8)


@dataclass
class Placed:
    category: WorldCategory
    x: int
    y: int
    size: int

    def mask(self, image_size: int) -> np.ndarray:
        full = np.zeros((image_size, image_size), dtype=bool)
        full[self.y:self.y + self.size, self.x:self.x + self.size] = shape_mask(self.category.shape, self.size)
        return full


def allowed(names: Sequence[str], held_out: Sequence[tuple[str, str]]) -> bool:
    chosen = set(names)
    return not any(a in chosen and b in chosen for a, b in held_out)


def choose_categories(rng: np.random.Generator, held_out: Sequence[tuple[str, str]]) -> list[WorldCategory]:
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    while True:
        picked = [CATEGORIES[i] for i in rng.choice(len(CATEGORIES), size=count, replace=False)]
        if allowed([c.name for c in picked], held_out):
            return picked


def place(rng: np.random.Generator, categories: Sequence[WorldCategory], image_size: int) -> list[Placed]:
    """Random positions and sizes with a pixel of gap between boxes (retried until they fit)."""
    low, high = max(6, image_size * 7 // 32), max(8, image_size * 12 // 32)
    while True:
        placed: list[Placed] = []
        for category in categories:
            for _ in range(50):
                size = int(rng.integers(low, high + 1))
                x, y = (int(v) for v in rng.integers(0, image_size - size + 1, size=2))
                if all(x + size + 1 <= p.x or p.x + p.size + 1 <= x or y + size + 1 <= p.y or p.y + p.size + 1 <= y
                       for p in placed):
                    placed.append(Placed(category, x, y, size))
                    break
            else:
                break
        if len(placed) == len(categories):
            return placed


def caption(rng: np.random.Generator, placed: Sequence[Placed]) -> str:
    names = [f"a {p.category.name}" for p in placed]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    templates = ("{}", "a picture of {}", "{} on a plain background")
    return templates[int(rng.integers(0, len(templates)))].format(listed)


def draw(rng: np.random.Generator, placed: Sequence[Placed], image_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    image = background(rng, image_size)
    masks = []
    for p in placed:
        mask = p.mask(image_size)
        image[mask] = p.category.rgb
        masks.append(mask)
    return image, masks


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def write_world(out_dir: Path, count: int, seed: int = 0, image_size: int = 64,
                held_out: Sequence[tuple[str, str]] = HELD_OUT_PAIRS, first_id: int = 1) -> Path:
    """Write a world of ``count`` images into ``out_dir`` (same arguments, same bytes); returns it.
    ``held_out=()`` draws every pair (a test world for the attention IoU)."""
    if count < 1 or image_size < 16:
        raise ValueError(f"a world needs at least 1 image of at least 16 px, got count={count} size={image_size}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    coco_ids = load_coco_categories()
    rng = np.random.default_rng(seed)
    images: list[dict] = []
    captions: list[dict] = []
    instances: list[dict] = []
    for image_id in range(first_id, first_id + count):
        placed = place(rng, choose_categories(rng, held_out), image_size)
        image, masks = draw(rng, placed, image_size)
        file_name = f"{image_id:012d}.png"
        (out_dir / "images" / file_name).write_bytes(png_bytes(image))
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        captions.append({"id": image_id, "image_id": image_id, "caption": caption(rng, placed)})
        for p, mask in zip(placed, masks):
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            instances.append({"id": len(instances) + 1, "image_id": image_id,
                              "category_id": coco_ids[p.category.name], "segmentation": encode(mask),
                              "area": float(mask.sum()), "iscrowd": 0,
                              "bbox": [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]})
    categories = [{"id": coco_ids[c.name], "name": c.name, "supercategory": c.shape} for c in CATEGORIES]
    info = {"description": f"tokencompose synthetic world, seed {seed}, {image_size} px"}
    (out_dir / "captions.json").write_text(compact_json({"info": info, "images": images, "annotations": captions}))
    (out_dir / "instances.json").write_text(compact_json(
        {"info": info, "images": images, "annotations": instances, "categories": categories}))
    (out_dir / WORLD_FILE).write_text(json.dumps(world_metadata(seed, image_size, count, held_out), indent=1))
    return out_dir


def compact_json(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def world_metadata(seed: int, image_size: int, count: int, held_out: Sequence[tuple[str, str]]) -> dict:
    return {"seed": seed, "image_size": image_size, "images": count,
            "categories": [{"name": c.name, "shape": c.shape, "hue": c.hue, "rgb": list(c.rgb)} for c in CATEGORIES],
            "held_out_pairs": [list(pair) for pair in held_out],
            "objects_per_image": [MIN_OBJECTS, MAX_OBJECTS]}


def category_names() -> list[str]:
    return [c.name for c in CATEGORIES]


def prompt_rows(held_out: Sequence[tuple[str, str]] = HELD_OUT_PAIRS) -> list[dict]:
    """Every 5-category MultiGen prompt over the world, in the authors' row format; ``held_out`` marks
    the rows that ask for a held-out pair (an extra key the prompt reader ignores)."""
    from tokencompose.tasks.multigen.prompts import OBJECTS, prompt_text

    rows = []
    for number, names in enumerate(combinations(category_names(), OBJECTS)):
        row: dict = {"unique_id": number, "num_objects": OBJECTS}
        for k, name in enumerate(names, 1):
            row[f"obj_{k}_attributes"] = [name]
        row["text"] = prompt_text(names)
        row["held_out_pair"] = not allowed(names, held_out)
        rows.append(row)
    return rows
