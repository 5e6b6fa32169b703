"""Helpers shared by the tests: the demo configuration and a builder of small COCO sources."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tokencompose.data import demo_settings
from tokencompose.schemas.config import BuildConfig


def demo_config(out_dir: Path, **overrides) -> BuildConfig:
    settings = {**demo_settings(), "output": {"out_dir": str(out_dir)}}
    for key, value in overrides.items():
        settings[key] = {**settings.get(key, {}), **value} if isinstance(value, dict) else value
    return BuildConfig.model_validate(settings)


def jpeg_bytes(width: int = 64, height: int = 48, mode: str = "RGB", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class SourceBuilder:
    """A COCO-style source in a temporary folder, image by image; every image gets one 'cat'
    instance covering its left half unless told otherwise."""

    def __init__(self, root: Path):
        self.root = root
        self.images_dir = root / "images"
        self.images_dir.mkdir(parents=True)
        self.images: list[dict] = []
        self.captions: list[dict] = []
        self.instances: list[dict] = []

    def add(self, image_id: int, data: bytes | None, width: int = 64, height: int = 48,
            captions: tuple = ("A cat sitting on a bed.",), category_id: int = 17, file_name: str | None = None) -> str:
        """An image (``data`` written under ``file_name`` unless None), its captions (any JSON values)
        and one instance of ``category_id`` covering its left half."""
        file_name = f"{image_id:012d}.jpg" if file_name is None else file_name
        if data is not None:
            (self.images_dir / file_name).write_bytes(data)
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        self.captions += [{"id": image_id * 10 + i, "image_id": image_id, "caption": c} for i, c in enumerate(captions)]
        half = [0.0, 0.0, width / 2, 0.0, width / 2, float(height), 0.0, float(height)]
        self.instances.append({"id": len(self.instances) + 1, "image_id": image_id, "category_id": category_id,
                               "segmentation": [half], "bbox": [0, 0, width / 2, height], "iscrowd": 0})
        return file_name

    def annotate(self, image_id: object, segmentation: object, category_id: object = 17, **fields) -> int:
        """One more instance annotation, any JSON (hostile values included); returns its id."""
        annotation_id = len(self.instances) + 1
        self.instances.append({"id": annotation_id, "image_id": image_id, "category_id": category_id,
                               "segmentation": segmentation, "bbox": [0, 0, 1, 1], "iscrowd": 0, **fields})
        return annotation_id

    def write(self) -> dict[str, str]:
        (self.root / "captions.json").write_text(json.dumps({"images": self.images, "annotations": self.captions}))
        (self.root / "instances.json").write_text(json.dumps({"images": self.images, "annotations": self.instances,
                                                              "categories": []}))
        return {"images_dir": str(self.images_dir), "captions_json": str(self.root / "captions.json"),
                "instances_json": str(self.root / "instances.json")}
