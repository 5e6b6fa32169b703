"""Tiny image-caption datasets of each dataset-source kind, written with the formats' own writers:
datasets' ``save_to_disk`` (hf), webdataset's ``TarWriter`` in img2dataset's layout (wds) and a folder
with captions.jsonl (folder). The images are small JPEGs of the bundled sample's photos."""
from __future__ import annotations

import io
import json
from pathlib import Path

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


def write_wds(folder: Path, items: list[dict], per_tar: int = 4, first_tar: int = 0) -> Path:
    """img2dataset's layout: ``{key}.jpg``, ``{key}.txt``, ``{key}.json`` per sample, ``NNNNN.tar`` and a
    ``NNNNN.parquet`` of the rows beside each."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from webdataset import TarWriter

    folder.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(items), per_tar), start=first_tar):
        chunk = items[start:start + per_tar]
        with TarWriter(str(folder / f"{number:05d}.tar")) as sink:
            for row in chunk:
                sample = {"__key__": row["key"], "json": json.dumps(
                    {"key": row["key"], "url": row["url"], "caption": row["caption"][0] if row["caption"] else None,
                     "status": "success"}).encode()}
                if row["image"] is not None:
                    sample["jpg"] = row["image"]
                if row["caption"]:
                    sample["txt"] = row["caption"][0].encode()
                sink.write(sample)
        pq.write_table(pa.table({"key": [r["key"] for r in chunk], "url": [r["url"] for r in chunk],
                                 "status": ["success"] * len(chunk)}), folder / f"{number:05d}.parquet")
    return folder


def write_folder(folder: Path, items: list[dict], lines: list[str] = ()) -> Path:
    """Images under ``images/`` and a captions.jsonl naming them (extra raw ``lines`` appended)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for row in items:
        name = f"images/{row['key']}.jpg"
        if row["image"] is not None:
            (folder / name).write_bytes(row["image"])
        out.append(json.dumps({"image": name, "caption": row["caption"], "url": row["url"]}))
    (folder / "captions.jsonl").write_text("\n".join(out + list(lines)) + "\n", encoding="utf-8")
    return folder
