"""The training view, the gallery's noun filters, sorting and key export, and the rejects pages, over HTTP
on the real demo shards (and hostile inputs against each new route)."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.grounding.masks import decode
from tokencompose.tasks.training.data import Preprocessor, noun_token_positions
from tokencompose.viewer import render
from tokencompose.viewer.app import create_app
from tokencompose.viewer.training_view import ATTENTION_RESOLUTIONS, TRAIN_RESOLUTION, default_tokenizer

from tests.viewer.test_viewer_security import asgi_get
from tests.support.viewer_support import DEMO_KEYS

CUP_KEY = "000000000632"  # "A cup of coffee on a red saucer with a spoon.": cup 0, coffee 1, saucer 2, spoon 3
ROCKET_KEY = "000000000724"  # "A rocket standing on a launch pad under a blue sky.": only the sky masked (COCO-Stuff)


def cards(html: str) -> list[str]:
    return re.findall(r'<li class="card[^"]*" data-key="([^"]+)"', html)


def record_of(client, key: str) -> SampleRecord:
    return SampleRecord.model_validate_json(client.get(f"/sample/{key}/record.json").content)


# ---- what training sees ------------------------------------------------------------------------------

def test_token_positions_are_the_training_codes(client):
    html = client.get(f"/sample/{CUP_KEY}").text
    tokens = re.findall(r'<li class="token[^"]*" data-position="(\d+)"(?: data-noun="(\d+)")?[^>]*>'
                        r'<span class="pos">\d+</span><span class="tok">([^<]+)</span>', html)
    assert [t[2] for t in tokens] == ["&lt;|startoftext|&gt;", "a&lt;/w&gt;", "cup&lt;/w&gt;", "of&lt;/w&gt;",
                                      "coffee&lt;/w&gt;", "on&lt;/w&gt;", "a&lt;/w&gt;", "red&lt;/w&gt;",
                                      "saucer&lt;/w&gt;", "with&lt;/w&gt;", "a&lt;/w&gt;", "spoon&lt;/w&gt;",
                                      ".&lt;/w&gt;", "&lt;|endoftext|&gt;"]
    assert {int(t[0]): int(t[1]) for t in tokens if t[1]} == {2: 0, 4: 1, 8: 2, 11: 3}
    # the table against the training code's own mapping, computed here independently
    record = record_of(client, CUP_KEY)
    tokenizer = default_tokenizer()
    encoded = tokenizer(record.caption, max_length=77, padding="max_length", truncation=True,
                        return_offsets_mapping=True, return_special_tokens_mask=True)
    table = html[html.index('id="noun-tokens"'):]
    rows = re.findall(r'<tr data-noun="(\d)" class="(used|skipped)">.*?<td class="positions">([^<]*)</td>\s*<td>(.*?)</td>',
                      table, re.S)
    assert len(rows) == 4
    for (index, status, positions, why), noun in zip(rows, record.nouns):
        expected = noun_token_positions([tuple(o) for o in encoded["offset_mapping"]],
                                        encoded["special_tokens_mask"], noun.span)
        assert positions == ", ".join(map(str, expected))
        assert status == ("used" if noun.mask is not None else "skipped")
    assert "skipped: no mask (category_not_annotated_in_image)" in rows[1][3] and rows[0][3] == "used by the loss"
    assert rows[2][3] == "used by the loss"  # the saucer, masked from LVIS
    assert "Positions 14–76: padding (63 tokens)" in html


def test_per_resolution_masks_are_the_training_masks(client, demo_app):
    record = record_of(client, CUP_KEY)
    image_bytes = client.get(f"/sample/{CUP_KEY}/image").content
    with Image.open(io.BytesIO(image_bytes)) as image:
        image.load()
        example = Preprocessor(default_tokenizer(), TRAIN_RESOLUTION, ATTENTION_RESOLUTIONS).from_record(record, image)
    html = client.get(f"/sample/{CUP_KEY}").text
    shown = re.findall(r'<img class="res-mask" data-noun="(\d)" data-resolution="(\d+)" src="([^"]+)"', html)
    assert [(n, int(r)) for n, r, _ in shown] == [(n, r) for n in "023" for r in ATTENTION_RESOLUTIONS]
    for kept, noun in enumerate((0, 2, 3)):
        for resolution in ATTENTION_RESOLUTIONS:
            response = client.get(f"/sample/{CUP_KEY}/training/mask/{noun}/{resolution}.png")
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            rgba = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))
            expected = example.masks[resolution][kept].to(torch.bool).numpy()
            assert rgba.shape == (resolution, resolution, 4)
            assert np.array_equal(rgba[..., 3] == 255, expected)
            assert np.all(rgba[expected][:, :3] == render.rgb(render.colour(noun)))
            assert f"{resolution}×{resolution} · {int(expected.sum())} cell" in html
    crop = client.get(f"/sample/{CUP_KEY}/training/crop.jpg")
    assert crop.status_code == 200
    with Image.open(io.BytesIO(crop.content)) as picture:
        assert picture.size == (TRAIN_RESOLUTION, TRAIN_RESOLUTION)
    # nouns without a mask have no training mask; resolutions the loss does not use neither
    assert client.get(f"/sample/{CUP_KEY}/training/mask/1/8.png").status_code == 404
    assert client.get(f"/sample/{CUP_KEY}/training/mask/0/12.png").status_code == 404


@pytest.mark.parametrize("path", [
    "/sample/000000000632/training/mask/-1/8.png", "/sample/000000000632/training/mask/0/-8.png",
    "/sample/000000000632/training/mask/%2e%2e/8.png", "/sample/000000000632/training/mask/0x1/8.png",
    "/sample/000000000632/training/mask/99999999999/8.png", "/sample/000000000632/training/mask/0/8.png%00",
    "/sample/000000000632/training/mask/%200/8.png", "/sample/000000000632/training/mask/४/8.png",
    "/sample/000000000632/training/..%2f..%2fconfig.json", "/sample/nokey/training/crop.jpg",
    "/sample/..%2f..%2fconfig.json/training/crop.jpg", "/sample/000000000632/thumb-masks.png/..%2f..",
    "/sample/unknown/thumb-masks.png"])
def test_training_routes_refuse_hostile_paths(demo_app, path):
    assert asgi_get(demo_app, path)[0] == 404


def test_long_caption_nouns_beyond_the_token_window(demo_dir, tmp_path):
    from tokencompose.tasks.shards.build import write_shard
    from tokencompose.viewer.catalog import Catalog

    catalog = Catalog(demo_dir).scan()
    entry = catalog.get(CUP_KEY)
    record, image = catalog.record(entry), catalog.image_bytes(entry)[0]
    caption = record.caption + " and" * 80 + " a spoon"
    late = len(caption) - len("spoon")
    nouns = [record.nouns[0], record.nouns[3].model_copy(update={"span": (late, late + 5)})]
    long = SampleRecord.model_validate(record.model_copy(update={"caption": caption, "nouns": nouns}).model_dump())
    write_shard(tmp_path, 0, [(long, image)], "jpg")
    html = TestClient(create_app(tmp_path)).get(f"/sample/{CUP_KEY}").text
    assert "longer than the 77-token window" in html
    assert "skipped: beyond the 77-token window" in html
    assert re.findall(r'<img class="res-mask" data-noun="(\d)"', html) == ["0"] * len(ATTENTION_RESOLUTIONS)


def test_damaged_mask_is_reported_in_the_training_view(demo_dir, tmp_path):
    from tokencompose.tasks.shards.build import write_shard
    from tokencompose.viewer.catalog import Catalog

    catalog = Catalog(demo_dir).scan()
    entry = catalog.get(CUP_KEY)
    record, image = catalog.record(entry), catalog.image_bytes(entry)[0]
    nouns = list(record.nouns)
    nouns[0] = nouns[0].model_copy(update={"mask": nouns[0].mask.model_copy(update={"counts": "0" * 40})})
    write_shard(tmp_path, 0, [(record.model_copy(update={"nouns": nouns}), image)], "jpg")
    client = TestClient(create_app(tmp_path))
    html = client.get(f"/sample/{CUP_KEY}").text
    assert "training cannot decode this sample: the mask of cup is damaged" in html
    assert 'class="res-mask"' not in html
    assert client.get(f"/sample/{CUP_KEY}/training/mask/3/8.png").status_code == 404


# ---- boxes are labelled by the mask's source -----------------------------------------------------------

def test_boxes_are_labelled_by_mask_source(client):
    html = client.get(f"/sample/{CUP_KEY}").text
    assert "detector box" not in html
    assert '<summary class="box-kind">1 COCO annotation box</summary>' in html
    # the demo's saucer is masked from LVIS, the rocket photo's sky and launch pad from COCO-Stuff
    assert re.findall(r'<summary class="box-kind">([^<]+)</summary>', html) == [
        "1 COCO annotation box", "1 LVIS annotation box", "1 COCO annotation box"]
    assert 'title="LVIS annotation box"' in html and 'title="COCO annotation box"' in html
    sky = client.get(f"/sample/{ROCKET_KEY}").text
    assert re.findall(r'<summary class="box-kind">([^<]+)</summary>', sky) == ["1 COCO-Stuff annotation box"] * 2


@pytest.mark.parametrize("source, count, label", [
    ("coco_annotations", 1, "COCO annotation box"), ("coco_annotations", 2, "COCO annotation boxes"),
    ("lvis_annotations", 1, "LVIS annotation box"), ("lvis_annotations", 3, "LVIS annotation boxes"),
    ("lvis_annotations_not_exhaustive", 1, "LVIS annotation box (not exhaustive)"),
    ("lvis_annotations_not_exhaustive", 2, "LVIS annotation boxes (not exhaustive)"),
    ("stuff_annotations", 1, "COCO-Stuff annotation box"), ("stuff_annotations", 2, "COCO-Stuff annotation boxes"),
    ("coco_annotations+lvis_annotations", 2, "COCO + LVIS annotation boxes"),
    ("coco_annotations+lvis_annotations_not_exhaustive+stuff_annotations", 1,
     "COCO + LVIS (not exhaustive) + COCO-Stuff annotation box"),
    ("grounded_sam", 2, "Grounding DINO boxes"), ("hybrid", 1, "Grounding DINO box"),
    ("something_new", 2, "something_new boxes"), ("coco_annotations+something_new", 1,
                                                   "coco_annotations+something_new box"),
    (None, 1, "box"), (None, 2, "boxes")])
def test_box_kind_labels_every_mask_source(source, count, label):
    from tokencompose.viewer.templating import box_kind

    assert box_kind(source, count) == label


def test_every_source_the_human_grounding_writes_has_a_box_label():
    from tokencompose.tasks.grounding import human as human_grounding
    from tokencompose.viewer.templating import BOX_KINDS

    written = {human_grounding.SOURCE_COCO, human_grounding.SOURCE_LVIS, human_grounding.SOURCE_LVIS_NOT_EXHAUSTIVE,
               human_grounding.SOURCE_STUFF, *human_grounding.SOURCE_LABELS.values()}
    assert written <= set(BOX_KINDS)


# ---- gallery: overlays, filters, sorting, export ----------------------------------------------------------

def test_gallery_thumbnail_overlays(client):
    html = client.get("/").text
    assert html.count('class="thumb-masks"') == 8 and 'id="show-overlays"' in html
    response = client.get(f"/sample/{CUP_KEY}/thumb-masks.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    record = record_of(client, CUP_KEY)
    overlay = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))
    assert max(overlay.shape[:2]) == render.THUMB_SIZE
    scale = overlay.shape[1] / record.width
    masks = {noun: decode(record.nouns[noun].mask.model_dump()).astype(bool) for noun in (0, 2, 3)}
    for noun in (0, 2, 3):  # each mask, where no later noun is drawn over it, scaled, carries that noun's colour
        visible = masks[noun] & ~np.logical_or.reduce([masks[later] for later in masks if later > noun] or [False])
        ys, xs = np.nonzero(visible)
        inside = [(y, x) for y, x in zip(ys[::97], xs[::97])]
        colours = [tuple(overlay[int(y * scale), int(x * scale)]) for y, x in inside]
        hits = sum(c == (*render.rgb(render.colour(noun)), 255) for c in colours)
        assert hits / len(colours) > 0.8
    assert not any(m[0, 0] for m in masks.values()) and overlay[0, 0, 3] == 0  # a corner outside every mask is clear


def test_filter_by_category_source_reason_and_area(client, demo_app):
    catalog = demo_app.state.catalog
    assert cards(client.get("/", params={"category": "person"}).text) == ["000000000139", "000000000785"]
    coco = cards(client.get("/", params={"source": "coco_annotations"}).text)
    assert coco == [k for k in DEMO_KEYS if k != ROCKET_KEY]  # the rocket photo: its sky and pad, from COCO-Stuff
    assert cards(client.get("/", params={"source": "lvis_annotations"}).text) == [CUP_KEY, "000000000139",
                                                                                   "000000000785"]
    assert cards(client.get("/", params={"source": "stuff_annotations"}).text) == [ROCKET_KEY]  # sky, launch pad
    # "portrait", "silhouette" and "background", "motion blur"
    assert cards(client.get("/", params={"reason": "stop_list"}).text) == ["000000000139", "000000000776",
                                                                          "000000000872"]
    # area: some noun's mask covers at least 50% of the image
    big = cards(client.get("/", params={"min_area": "50"}).text)
    expected = []
    for entry in catalog.entries:
        record = catalog.record(entry)
        if any(n.mask is not None and render.rle_area(n.mask.model_dump()) >= 0.5 * record.width * record.height
               for n in record.nouns):
            expected.append(entry.key)
    assert big == expected == ["000000000285", ROCKET_KEY]  # the cat (66.7%), the sky (70.5%)
    small = cards(client.get("/", params={"max_area": "5"}).text)
    assert small == [CUP_KEY, ROCKET_KEY, "000000000785"]  # the spoon: 3.5%; the launch pad: 1.1%; the camera: 2.5%
    # noun-level: the conditions hold for one noun together (the spoon is small, the cup is not)
    assert cards(client.get("/", params={"category": "cup", "max_area": "5"}).text) == []
    assert cards(client.get("/", params={"category": "spoon", "max_area": "5"}).text) == [CUP_KEY]
    # filters stay in the pager and export links
    html = client.get("/", params={"category": "person", "per_page": 1}).text
    assert 'href="/?category=person&amp;per_page=1&amp;page=2"' in html
    assert 'href="/export/keys.txt?category=person&amp;per_page=1"' in html


def test_sorting(client, demo_app):
    catalog = demo_app.state.catalog
    by_area = cards(client.get("/", params={"sort": "area"}).text)
    largest = {e.key: max(e.areas()) for e in catalog.entries}
    assert by_area == sorted(largest, key=lambda k: -largest[k]) and by_area[0] == ROCKET_KEY  # the sky
    assert cards(client.get("/", params={"sort": "-area"}).text)[0] == ROCKET_KEY  # the launch pad: 1.1%
    assert cards(client.get("/", params={"sort": "nouns"}).text)[0] == CUP_KEY  # 4 nouns
    assert cards(client.get("/", params={"sort": "key"}).text) == sorted(DEMO_KEYS)


@pytest.mark.parametrize("params", [{"category": "giraffe"}, {"source": "../../etc/passwd"}, {"reason": "x" * 5000},
                                    {"category": "<script>alert(1)</script>"}, {"sort": "__class__"},
                                    {"sort": "area; drop"}, {"category": ""}])
def test_bad_filter_names_are_refused_without_echo(client, params):
    response = client.get("/", params=params)
    if params == {"category": ""}:
        assert response.status_code == 200  # empty means "any"
        return
    assert response.status_code == 400
    assert "<script>alert" not in response.text and "passwd" not in response.text
    assert client.get("/export/keys.txt", params=params).status_code == 400


def test_bad_filter_numbers_are_ignored(client):
    for params in ({"min_area": "lots"}, {"min_area": "nan"}, {"max_area": "inf"}, {"min_area": "-5"},
                   {"max_area": "1e400"}, {"min_area": "101"}):
        response = client.get("/", params=params)
        assert response.status_code == 200
    assert len(cards(client.get("/", params={"min_area": "nan", "max_area": "inf"}).text)) == 8
    assert cards(client.get("/", params={"min_area": "101"}).text) == []  # clamped to 100%: nothing that large


def test_export_keys_of_the_filtered_subset(client):
    text = client.get("/export/keys.txt", params={"category": "person", "per_page": 1})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert 'attachment; filename="keys.txt"' == text.headers["content-disposition"]
    assert text.text == "000000000139\n000000000785\n"  # every page, not only the first
    body = client.get("/export/keys.json", params={"q": "spoon"})
    data = json.loads(body.content)
    assert data["keys"] == [CUP_KEY] and data["count"] == 1 and data["filters"] == {"q": "spoon"}
    assert data["complete"] is True and data["config_hash"]
    everything = client.get("/export/keys.txt").text.split()
    assert sorted(everything) == sorted(DEMO_KEYS)
    assert client.get("/export/keys.txt", params={"shard": "../shards/shard-000000.tar"}).status_code == 404


# ---- rejected images ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coco_only_dir(tmp_path_factory):
    """The bundled sample built from COCO's instances alone (no LVIS / COCO-Stuff files): the rocket photo,
    with nothing COCO can mask, is then rejected, so a reject has a source image to show."""
    from tokencompose.data import demo_settings
    from tokencompose.schemas.config import BuildConfig
    from tokencompose.tasks.shards.dataset import build_directly

    settings = demo_settings()
    settings["source"] = {**settings["source"], "lvis_json": [], "stuff_json": []}
    settings["output"] = {"out_dir": str(tmp_path_factory.mktemp("coco-only") / "shards")}
    build_directly(BuildConfig.model_validate(settings))
    return Path(settings["output"]["out_dir"])


def test_the_demo_rejects_only_the_image_not_in_captions(client, demo_dir):
    rows = [json.loads(line) for line in (demo_dir / "rejects.jsonl").read_text().splitlines() if line.strip()]
    assert [(r["file_name"], r["reason"]) for r in rows] == [("000000999999.jpg", "not_in_source")]
    html = client.get("/rejects").text
    assert "1 of 1 rejected" in html and '<tr data-row="0">' in html and 'src="/rejects/0/thumb.jpg"' not in html
    assert client.get("/rejects/0/image").status_code == 404


def test_rejects_page_lists_rows_with_source_images(coco_only_dir):
    demo_dir = coco_only_dir
    client = TestClient(create_app(demo_dir))
    rows = [json.loads(line) for line in (demo_dir / "rejects.jsonl").read_text().splitlines() if line.strip()]
    assert {r["file_name"] for r in rows} == {"000000999999.jpg", "000000000724.jpg"}
    html = client.get("/rejects").text
    assert f"{len(rows)} of {len(rows)} rejected" in html
    for number, row in enumerate(rows):
        assert f'<tr data-row="{number}">' in html and row["reason"] in html
    rocket = next(i for i, r in enumerate(rows) if r["file_name"] == "000000000724.jpg")
    missing = next(i for i, r in enumerate(rows) if r["file_name"] == "000000999999.jpg")
    assert f'src="/rejects/{rocket}/thumb.jpg"' in html and f'src="/rejects/{missing}/thumb.jpg"' not in html
    source = json.loads((demo_dir / "config.json").read_text())["config"]["source"]["images_dir"]
    image = client.get(f"/rejects/{rocket}/image")
    assert image.status_code == 200 and image.content == (Path(source) / "000000000724.jpg").read_bytes()
    assert client.get(f"/rejects/{rocket}/thumb.jpg").headers["content-type"] == "image/jpeg"
    detail = client.get(f"/rejects/{rocket}").text
    assert 'id="reject-image"' in detail and "rocket: no_coco_category" in detail
    assert 'id="no-image"' in client.get(f"/rejects/{missing}").text
    assert client.get(f"/rejects/{missing}/image").status_code == 404
    only = client.get("/rejects", params={"reason": "no_masks"}).text
    assert "1 of 2 rejected" in only and f'<tr data-row="{rocket}">' in only


@pytest.mark.parametrize("path", [
    "/rejects/2", "/rejects/-1", "/rejects/1.0", "/rejects/%2e%2e", "/rejects/..%2f..%2fconfig.json",
    "/rejects/../config.json", "/rejects/0/image/..%2f..%2f..%2fetc%2fpasswd", "/rejects/99999999999/image",
    "/rejects/%2fetc%2fpasswd/image", "/rejects/0%00/image", "/rejects/+1/image", "/rejects/ 1/image",
    "/rejects/000000000724.jpg/image", "/rejects/0/thumb.jpg%2f..", "/rejects/1e0/thumb.jpg"])
def test_rejects_routes_refuse_hostile_paths(demo_app, path):
    status, _, body = asgi_get(demo_app, path)
    assert status == 404, path
    assert b"root:" not in body


@pytest.mark.parametrize("params", [{"reason": "../../etc/passwd"}, {"stage": "<b>x</b>"}, {"reason": "nope"}])
def test_rejects_filters_refuse_unknown_names(client, params):
    response = client.get("/rejects", params=params)
    assert response.status_code == 400 and "<b>x</b>" not in response.text and "passwd" not in response.text


def test_rejects_cannot_name_files_outside_the_source_folder(demo_copy, tmp_path):
    """Hostile rejects.jsonl rows: traversal, absolute paths, a link out of the folder, a non-image."""
    source = tmp_path / "source"
    source.mkdir()
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"TOP-SECRET-jpeg")
    (source / "ok.jpg").write_bytes(tiny_jpeg())
    (source / "link.jpg").symlink_to(secret)
    (source / "notes.txt").write_bytes(b"TOP-SECRET-text")
    (tmp_path / "outside.jpg").write_bytes(b"TOP-SECRET-outside")
    config = json.loads((demo_copy / "config.json").read_text())
    config["config"]["source"]["images_dir"] = str(source)
    (demo_copy / "config.json").write_text(json.dumps(config))
    names = ["ok.jpg", "../outside.jpg", "../secret.jpg", str(secret), "link.jpg", "notes.txt", "..",
             "%2e%2e%2fsecret.jpg", "sub/../ok.jpg", "..\\secret.jpg", ".hidden.jpg"]
    rows = [{"image_id": i, "file_name": name, "stage": "grounding", "reason": "no_masks", "detail": ""}
            for i, name in enumerate(names)]
    (demo_copy / "rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    client = TestClient(create_app(demo_copy))
    assert client.get("/rejects/0/image").status_code == 200  # the one plain file in the folder
    for row in range(1, len(names)):
        for suffix in ("/image", "/thumb.jpg"):
            response = client.get(f"/rejects/{row}{suffix}")
            assert response.status_code == 404, names[row]
            assert b"TOP-SECRET" not in response.content
        assert client.get(f"/rejects/{row}").status_code == 200  # the row itself is shown, without image
    html = client.get("/rejects").text
    assert html.count('class="reject-thumb"') == 1


def test_rejects_without_config_or_with_a_relative_folder(demo_copy):
    (demo_copy / "config.json").unlink()
    client = TestClient(create_app(demo_copy))
    assert "no config.json" in client.get("/rejects").text
    assert client.get("/rejects/1/image").status_code == 404
    (demo_copy / "config.json").write_text(json.dumps({"config": {"source": {"images_dir": "../../etc"}}}))
    client = TestClient(create_app(demo_copy))
    assert "not an absolute path" in client.get("/rejects").text
    assert client.get("/rejects/1/image").status_code == 404


def tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()
