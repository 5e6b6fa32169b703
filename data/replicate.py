"""Make a larger COCO source by replicating the bundled sample (for benchmarks and resume tests)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tokencompose.data import SAMPLE_DIR


def replicate_sample(target: Path, copies: int) -> dict[str, str]:
    """Write ``copies`` x the sample's images under new ids into ``target``; returns source settings."""
    captions = json.loads((SAMPLE_DIR / "captions.json").read_text())
    instances = json.loads((SAMPLE_DIR / "instances.json").read_text())
    images_dir = target / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    new_images, new_captions, new_instances = [], [], []
    for copy in range(copies):
        offset = (copy + 1) * 1_000_000
        for image in captions["images"]:
            file_name = f"{image['id'] + offset:012d}.jpg"
            _link_or_copy(SAMPLE_DIR / "images" / image["file_name"], images_dir / file_name)
            new_images.append({**image, "id": image["id"] + offset, "file_name": file_name})
        new_captions += [{**a, "id": a["id"] + offset * 10, "image_id": a["image_id"] + offset}
                         for a in captions["annotations"]]
        new_instances += [{**a, "id": a["id"] + offset, "image_id": a["image_id"] + offset}
                          for a in instances["annotations"]]
    (target / "captions.json").write_text(json.dumps({**captions, "images": new_images, "annotations": new_captions}))
    (target / "instances.json").write_text(json.dumps({**instances, "images": new_images,
                                                       "annotations": new_instances}))
    return {"images_dir": str(images_dir), "captions_json": str(target / "captions.json"),
            "instances_json": str(target / "instances.json")}


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
