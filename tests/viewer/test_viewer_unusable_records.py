"""Records the schema lets through but nothing can draw, images that would cost the viewer their decoded
size, and keys that appear twice: each shows as a problem on its page, never a 500 or a silent choice."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as coco_mask

from tokencompose.tasks.shards.build import write_shard
from tokencompose.viewer.app import create_app
from tokencompose.viewer.catalog import Catalog

KEY = "000000000632"
ROUTES = ("", "/thumb.jpg", "/thumb-masks.png", "/mask/0.png", "/training/crop.jpg", "/training/mask/0/16.png",
          "/record.json", "/image")


@pytest.fixture(scope="module")
def first_sample(demo_dir):
    catalog = Catalog(demo_dir).scan()
    entry = catalog.get(KEY)
    return catalog.record(entry), catalog.image_bytes(entry)[0]


def with_masks_of_size(record, height: int, width: int):
    """The record's nouns with masks re-encoded at height x width (a quarter of the image set)."""
    nouns = []
    for noun in record.nouns:
        if noun.mask is not None:
            if height * width:
                pixels = np.zeros((height, width), np.uint8, order="F")
                pixels[:height // 2, :width // 2] = 1
                counts = coco_mask.encode(pixels)["counts"].decode()
            else:
                counts = ""
            noun = noun.model_copy(update={"mask": noun.mask.model_copy(update={"size": (height, width),
                                                                                 "counts": counts})})
        nouns.append(noun)
    return record.model_copy(update={"width": width, "height": height, "nouns": nouns})


def without_masks(record):
    nouns = [n.model_copy(update={"mask": None, "source": None, "reason": n.reason or "no_detection"})
             for n in record.nouns]
    return record.model_copy(update={"nouns": nouns})


def serve(folder, samples) -> TestClient:
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(folder, 0, samples, "jpg" if samples[0][1][:2] == b"\xff\xd8" else "png")
    return TestClient(create_app(folder), raise_server_exceptions=False)


def statuses(client: TestClient) -> dict[str, int]:
    return {route or "page": client.get(f"/sample/{KEY}{route}").status_code for route in ROUTES}


@pytest.mark.parametrize("height, width", [(0, 640), (480, 0)])
def test_a_record_of_no_pixels_is_a_problem_on_its_page(first_sample, tmp_path, height, width):
    record, image = first_sample
    client = serve(tmp_path, [(with_masks_of_size(record, height, width), image)])
    codes = statuses(client)
    assert 500 not in codes.values() and codes["page"] == 200 and codes["/image"] == 200, codes
    page = client.get(f"/sample/{KEY}").text
    assert 'id="sample-error"' in page and f"the record&#39;s size is {width}x{height} pixels" in page
    assert f'data-key="{KEY}"' in client.get("/", params={"errors": 1}).text


def test_sizes_disagreeing_with_the_image_are_named(first_sample, tmp_path):
    record, image = first_sample
    bigger = with_masks_of_size(record, record.height * 2, record.width * 2)
    client = serve(tmp_path, [(bigger, image)])
    codes = statuses(client)
    assert 500 not in codes.values() and codes["page"] == 200, codes
    page = client.get(f"/sample/{KEY}").text
    assert 'id="record-problems"' in page
    assert (f"the record says the image is {bigger.width}x{bigger.height} pixels, the image is "
            f"{record.width}x{record.height}") in page


def test_a_noun_span_outside_the_caption_is_a_problem(first_sample, tmp_path):
    record, image = first_sample
    # the schema refuses such a span; written around it, as a hostile or older writer could
    data = json.loads(record.to_json_bytes())
    data["nouns"][0]["span"] = [5, len(record.caption) + 40]
    broken = record.model_construct(**{**record.__dict__, "nouns": [record.nouns[0].model_copy(
        update={"span": (5, len(record.caption) + 40)}), *record.nouns[1:]]})
    client = serve(tmp_path, [(broken, image)])
    codes = statuses(client)
    assert 500 not in codes.values() and codes["page"] == 200, codes
    assert 'id="sample-error"' in client.get(f"/sample/{KEY}").text


def bomb_png(side: int = 12000) -> bytes:
    """A PNG of a few KB that decodes to side x side pixels."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_a_small_png_of_huge_size_is_never_decoded(first_sample, tmp_path):
    record, _ = first_sample
    png = bomb_png()
    assert len(png) < 200_000
    client = serve(tmp_path / "image", [(without_masks(record), png)])
    codes = statuses(client)
    assert 500 not in codes.values() and codes["page"] == 200 and codes["/training/crop.jpg"] == 404, codes
    page = client.get(f"/sample/{KEY}").text
    assert 'id="record-problems"' in page and "the image is 12000x12000 pixels, more than the viewer decodes" in page
    assert client.get(f"/sample/{KEY}/thumb.jpg").headers.get("x-viewer-error") == "1"
    # a record that claims the size itself is refused when the catalogue is read
    huge = without_masks(record).model_copy(update={"width": 12000, "height": 12000})
    client = serve(tmp_path / "record", [(huge, png)])
    assert 500 not in statuses(client).values()
    assert "the record&#39;s size is 12000x12000 pixels, more than the viewer decodes" in client.get(
        f"/sample/{KEY}").text


def test_the_thumbnail_of_a_huge_png_costs_no_decoded_image(tmp_path):
    """Peak memory of a fresh process around one thumbnail: decoding the 12000 x 12000 image would raise
    it by 144 MB (1 byte a pixel) to 432 MB (RGB); the header check keeps it to almost nothing."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    code = (
        "import resource, sys; from tokencompose.viewer import render\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "render.thumbnail(render.broken_thumbnail())\n"           # warm up PIL's plugins
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    render.thumbnail(data)\n    outcome = 'decoded'\n"
        "except render.RenderError as error:\n    outcome = str(error)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, outcome)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown_kb, outcome = done.stdout.strip().split(" ", 1)
    assert "more than the viewer decodes" in outcome and int(grown_kb) < 32 * 1024, done.stdout


def test_duplicate_keys_across_shards_are_named_on_the_page(first_sample, tmp_path):
    record, image = first_sample
    write_shard(tmp_path, 0, [(record, image)], "jpg")
    write_shard(tmp_path, 1, [(record.model_copy(update={"caption": record.caption}), image)], "jpg")
    client = TestClient(create_app(tmp_path), raise_server_exceptions=False)
    page = client.get(f"/sample/{KEY}")
    assert page.status_code == 200 and 'id="record-problems"' in page.text
    assert f"key {KEY} appears again in shard-000001.tar; that sample is not shown" in page.text
    assert client.get("/").text.count(f'data-key="{KEY}"') == 1
    assert f"key {KEY} appears again in shard-000001.tar" in client.get("/dataset").text
