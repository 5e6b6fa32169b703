"""Tiny image-caption datasets of each dataset-source kind, written with the formats' own writers:
datasets' ``save_to_disk`` (hf), webdataset's ``TarWriter`` in img2dataset's layout (wds) and a folder
with captions.jsonl (folder). The images are small JPEGs of the bundled sample's photos."""
from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Sequence

CAPTIONS = [
    ["A man riding a horse on a beach.", "A person on a brown horse."],
    ["A cat sitting on a table next to a cup."],
    ["Two dogs playing with a frisbee in the park.", "Dogs on the grass."],
    ["A teddy bear on the bed."],
    ["A pizza on a plate with a fork."],
    ["A woman holding a cup of coffee."],
]


def tiny_jpegs(count: int, size: tuple[int, int] = (56, 40)) -> list[bytes]:
    """``count`` small JPEGs cut from the bundled sample's photos (sizes vary: mixed-size batches)."""
    from PIL import Image

    from tokencompose.data import demo_settings

    photos = sorted(Path(demo_settings()["source"]["images_dir"]).glob("*.jpg"))
    images = []
    for index in range(count):
        with Image.open(photos[index % len(photos)]) as photo:
            small = photo.convert("RGB").resize((size[0] + 8 * (index % 3), size[1] + 4 * (index % 2)))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def rows(count: int, start: int = 0) -> list[dict]:
    """``count`` rows: key, url, image bytes, caption list."""
    images = tiny_jpegs(start + count)
    return [{"key": f"{i:09d}", "url": f"https://example.org/{i}.jpg", "image": images[i],
             "caption": CAPTIONS[i % len(CAPTIONS)]} for i in range(start, start + count)]


def write_hf(folder: Path, items: list[dict], single_caption: bool = False) -> Path:
    import datasets

    features = datasets.Features({"key": datasets.Value("string"), "url": datasets.Value("string"),
                                  "image": datasets.Image(),
                                  "caption": datasets.Value("string") if single_caption
                                  else datasets.Sequence(datasets.Value("string"))})
    data = {"key": [r["key"] for r in items], "url": [r["url"] for r in items],
            "image": [None if r["image"] is None else {"bytes": r["image"], "path": None} for r in items],
            "caption": [(r["caption"][0] if r["caption"] else None) if single_caption else r["caption"]
                        for r in items]}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(folder))
    return folder


def write_wds(folder: Path, items: list[dict], per_tar: int = 4, first_tar: int = 0,
              failed: Sequence[dict] = ()) -> Path:
    """img2dataset's layout: ``{key}.jpg``, ``{key}.txt``, ``{key}.json`` per sample, ``NNNNN.tar`` and a
    ``NNNNN.parquet`` of the rows beside each (its columns: key, url, caption, status, error_message).
    ``failed`` rows (key, url, status, error_message) are listed, in key order among the others, in the
    last tar's parquet only, as img2dataset lists the URLs it could not download or resize."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from webdataset import TarWriter

    folder.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(items), per_tar), start=first_tar):
        chunk = items[start:start + per_tar]
        with TarWriter(str(folder / f"{number:05d}.tar")) as sink:
            for row in chunk:
                captions = row["caption"]
                sample = {"__key__": row["key"], "json": json.dumps(
                    {"key": row["key"], "url": row["url"], "status": "success",
                     "caption": None if not captions else captions[0] if len(captions) == 1 else captions}).encode()}
                if row["image"] is not None:
                    sample["jpg"] = row["image"]
                if row["caption"]:
                    sample["txt"] = row["caption"][0].encode()
                sink.write(sample)
        listed = [{"key": r["key"], "url": r["url"], "caption": r["caption"][0] if r["caption"] else None,
                   "status": "success", "error_message": None} for r in chunk]
        if start + per_tar >= len(items):
            listed = sorted(listed + [{"caption": None, **row} for row in failed], key=lambda row: row["key"])
        pq.write_table(pa.Table.from_pylist(listed, schema=parquet_schema()), folder / f"{number:05d}.parquet")
    return folder


def parquet_schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("status", pa.string()),
                      ("error_message", pa.string())])


def write_folder(folder: Path, items: list[dict], lines: list[str] = ()) -> Path:
    """Images under ``images/`` and a captions.jsonl naming them (extra raw ``lines`` appended)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for row in items:
        entry = {"caption": row["caption"], "url": row["url"]}
        if row["image"] is not None:
            entry["image"] = f"images/{row['key']}.jpg"
            (folder / entry["image"]).write_bytes(row["image"])
        out.append(json.dumps(entry, ensure_ascii=False))
    (folder / "captions.jsonl").write_text("\n".join(out + list(lines)) + "\n", encoding="utf-8")
    return folder


def grounding_models_dir() -> Path:
    """A models folder with only what Grounded-SAM needs (tiny BERT, GroundingDINO, SAM-HQ vit_tiny;
    random weights), built once per process: the dataset sources have no human masks."""
    return _grounding_models_dir()


@functools.lru_cache(maxsize=None)
def _grounding_models_dir() -> Path:
    import tempfile

    from tests.support.paper_models import write_dino, write_sam, write_tiny_bert

    root = Path(tempfile.mkdtemp(prefix="tokencompose-grounding-models-"))
    write_dino(root / "groundingdino_swint_ogc.pth", write_tiny_bert(root / "bert-base-uncased"))
    write_sam(root / "sam_hq_vit_tiny.pth")
    return root


GROUNDING = {"backend": "grounded_sam", "sam_variant": "vit_tiny", "short_side": 224, "max_side": 320, "batch_size": 4}


@functools.lru_cache(maxsize=None)
def grounding_threshold() -> float:
    """A box threshold keeping about two boxes per image of the random models (tests/support/paper_models)."""
    from PIL import Image

    from tests.support.paper_models import calibrated_threshold
    from tokencompose.schemas.config import BuildConfig
    from tokencompose.tasks.grounding.grounded_sam import GroundedSam
    from tokencompose.tasks.grounding.token_assignment import build_prompt

    models = grounding_models_dir()
    probe = GroundedSam.from_config(BuildConfig.model_validate(
        {"source": {"dataset": "folder:."}, "output": {"out_dir": str(models / "probe")}, "grounding": GROUNDING,
         "models": {"models_dir": str(models), "device": "cpu", "use_hf_cache": False}}))
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in tiny_jpegs(4)]
    return calibrated_threshold(probe, images, [build_prompt(["man", "cat", "cup", "dog"])] * len(images), 2.0)


def write_source(kind: str, folder: Path, items: list[dict], per_tar: int, failed: Sequence[dict] = ()) -> str:
    """``items`` as a dataset source of ``kind`` (hf, wds or folder) under ``folder``: its ``source.dataset``
    (``failed``: img2dataset's failed rows in the wds parquet, see :func:`write_wds`)."""
    if kind == "hf":
        return f"hf:{write_hf(folder / 'hf', items)}"
    if kind == "wds":
        write_wds(folder / "wds", items, per_tar=per_tar, failed=failed)
        return "wds:" + str(folder / "wds" / "*.tar")
    return f"folder:{write_folder(folder / 'folder', items)}"


def dataset_settings(dataset: str, out_dir: Path, **sections) -> dict:
    """Build settings for a dataset source: consensus captions, spaCy nouns, Grounded-SAM masks from the
    random models at a calibrated threshold, small enough for the CPU."""
    models = grounding_models_dir()
    threshold = grounding_threshold()
    settings = {"source": {"dataset": dataset}, "output": {"out_dir": str(out_dir), "shard_size": 3,
                                                            "require_mask": False},
                "grounding": {**GROUNDING, "box_threshold": threshold, "text_threshold": threshold / 2},
                "models": {"models_dir": str(models), "device": "cpu", "use_hf_cache": False}}
    for name, values in sections.items():
        settings[name] = {**settings.get(name, {}), **values}
    return settings
