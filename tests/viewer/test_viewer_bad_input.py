"""Damaged shard sets: the broken sample shows an error, the server keeps serving the rest."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.shards.build import write_shard
from tokencompose.viewer import catalog as catalog_module
from tokencompose.viewer.app import create_app
from tokencompose.viewer.catalog import Catalog

from tests.support.viewer_support import DEMO_KEYS

SHARD = Path("shards") / "shard-000000.tar"
INDEX = Path("index") / "shard-000000.json"


def locations(root: Path) -> dict:
    return json.loads((root / INDEX).read_text())["samples"]


def overwrite_member(root: Path, key: str, ext: str, data: bytes) -> None:
    """Replace a member's bytes in place (padded with spaces, or cut, to the member's size)."""
    where = locations(root)[key][ext]
    data = data[:where["size"]].ljust(where["size"], b" ")
    with open(root / SHARD, "r+b") as handle:
        handle.seek(where["offset"])
        handle.write(data)


def client_for(root: Path) -> TestClient:
    return TestClient(create_app(root))


def assert_rest_is_served(client: TestClient, broken: set[str]) -> None:
    for key in DEMO_KEYS:
        if key in broken:
            continue
        assert client.get(f"/sample/{key}").status_code == 200
        assert "cannot be shown" not in client.get(f"/sample/{key}").text
        assert client.get(f"/sample/{key}/thumb.jpg").headers["content-type"] == "image/jpeg"
    assert client.get("/").status_code == 200
    assert client.get("/dataset").status_code == 200


def broken_cards(html: str) -> list[str]:
    import re

    return re.findall(r'<li class="card broken" data-key="([^"]+)"', html)


def test_garbage_json_member(demo_copy):
    overwrite_member(demo_copy, "000000000632", "json", os.urandom(4000))
    client = client_for(demo_copy)
    entry = client.app.state.catalog.get("000000000632")
    assert entry.error and "unreadable" in entry.error
    page = client.get("/sample/000000000632")
    assert page.status_code == 200 and 'id="sample-error"' in page.text and "cannot be shown" in page.text
    assert 'src="/sample/000000000632/image"' in page.text  # the image member is intact: shown as stored
    assert broken_cards(client.get("/").text) == ["000000000632"]
    assert broken_cards(client.get("/", params={"errors": 1}).text) == ["000000000632"]
    assert "1 unreadable" in client.get("/").text
    assert client.get("/sample/000000000632/record.json").status_code == 422
    assert client.get("/sample/000000000632/mask/0.png").status_code == 404
    assert_rest_is_served(client, {"000000000632"})


def test_json_that_does_not_match_the_schema(demo_copy):
    overwrite_member(demo_copy, "000000000285", "json", b'{"key": "000000000285", "caption": 5}')
    good = SampleRecord.model_validate_json(Catalog(demo_copy).scan().record(Catalog(demo_copy).scan().get(
        "000000000139")).to_json_bytes()).model_dump(mode="json")
    good["nouns"][0]["span"] = [0, 1]  # the span no longer matches the caption: the model validator refuses it
    compact = json.dumps(good, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    overwrite_member(demo_copy, "000000000139", "json", compact)
    client = client_for(demo_copy)
    catalog = client.app.state.catalog
    assert "does not match the sample schema" in catalog.get("000000000285").error
    assert "does not match" in catalog.get("000000000139").error
    assert sorted(broken_cards(client.get("/").text)) == ["000000000139", "000000000285"]
    assert "does not match the sample schema" in client.get("/sample/000000000285").text
    assert_rest_is_served(client, {"000000000285", "000000000139"})


def test_json_of_another_key(demo_copy):
    data = (demo_copy / SHARD).read_bytes()
    where = locations(demo_copy)["000000000872"]["json"]  # smallest JSON: fits in the other members
    other = data[where["offset"]:where["offset"] + where["size"]]
    overwrite_member(demo_copy, "000000000776", "json", other)
    catalog = Catalog(demo_copy).scan()
    assert "the index says '000000000776'" in catalog.get("000000000776").error


def test_truncated_shard(demo_copy):
    members = sorted(locations(demo_copy).items(), key=lambda kv: kv[1]["json"]["offset"])
    cut = members[3][1]["json"]["offset"] + 10  # in the middle of the fourth sample's JSON
    with open(demo_copy / SHARD, "r+b") as handle:
        handle.truncate(cut)
    client = client_for(demo_copy)
    catalog = client.app.state.catalog
    intact = [key for key, m in members[:3]]
    lost = [key for key, m in members[3:]]
    assert all(catalog.get(key).error is None for key in intact)
    assert all("truncated" in catalog.get(key).error for key in lost)
    assert sorted(broken_cards(client.get("/").text)) == sorted(lost)
    for key, members in members[3:]:
        assert "cannot be shown" in client.get(f"/sample/{key}").text
        image_lost = members["jpg"]["offset"] + members["jpg"]["size"] > cut
        assert (f'src="/sample/{key}/image"' in client.get(f"/sample/{key}").text) == (not image_lost)
        assert client.get(f"/sample/{key}/image").status_code == (404 if image_lost else 200)
        assert (client.get(f"/sample/{key}/thumb.jpg").headers.get("x-viewer-error") == "1") == image_lost
    assert_rest_is_served(client, set(lost))


def test_truncated_image_of_an_intact_sample(demo_copy):
    overwrite_member(demo_copy, "000000000885", "jpg", os.urandom(200))  # the JSON is fine, the image is not
    client = client_for(demo_copy)
    thumb = client.get("/sample/000000000885/thumb.jpg")
    assert thumb.status_code == 200 and thumb.headers["x-viewer-error"] == "1"
    assert client.get("/sample/000000000885").status_code == 200
    assert_rest_is_served(client, {"000000000885"})


def test_missing_index_falls_back_to_tar_headers(demo_copy):
    (demo_copy / INDEX).unlink()
    client = client_for(demo_copy)
    catalog = client.app.state.catalog
    assert not catalog.shards[0].from_index and "no index file" in catalog.shards[0].errors[0]
    assert sorted(e.key for e in catalog.entries) == sorted(DEMO_KEYS)
    assert all(e.error is None for e in catalog.entries)
    assert client.get("/sample/000000000632/mask/0.png").status_code == 200
    assert "tar headers" in client.get("/dataset").text
    assert_rest_is_served(client, set())


def test_garbage_index_falls_back_to_tar_headers(demo_copy):
    (demo_copy / INDEX).write_bytes(b"\x00garbage{")
    catalog = Catalog(demo_copy).scan()
    assert "index is unreadable" in catalog.shards[0].errors[0]
    assert len(catalog.entries) == len(DEMO_KEYS)


def test_garbage_shard(demo_copy):
    size = (demo_copy / SHARD).stat().st_size
    (demo_copy / SHARD).write_bytes(os.urandom(size))
    client = client_for(demo_copy)
    catalog = client.app.state.catalog
    assert len(catalog.entries) == len(DEMO_KEYS) and all(e.error for e in catalog.entries)
    assert len(broken_cards(client.get("/").text)) == len(DEMO_KEYS)
    for key in DEMO_KEYS:
        assert client.get(f"/sample/{key}").status_code == 200
    assert client.get("/dataset").status_code == 200


def test_garbage_shard_without_index(demo_copy):
    (demo_copy / SHARD).write_bytes(os.urandom(50_000))
    (demo_copy / INDEX).unlink()
    client = client_for(demo_copy)
    catalog = client.app.state.catalog
    assert catalog.entries == [] and any("tar is damaged" in e for e in catalog.shards[0].errors)
    assert "0 of 0 samples" in client.get("/").text
    assert "tar is damaged" in client.get("/dataset").text


def test_missing_shard_file(demo_copy):
    (demo_copy / SHARD).unlink()
    client = client_for(demo_copy)
    assert client.app.state.catalog.shards[0].errors == ["shard file is missing"]
    assert client.get("/").status_code == 200 and "shard file is missing" in client.get("/dataset").text


def test_index_with_bad_offsets_and_unsafe_keys(demo_copy):
    index = json.loads((demo_copy / INDEX).read_text())
    samples = index["samples"]
    samples["000000000632"]["json"] = {"offset": -5, "size": 10}
    samples["000000000285"]["json"]["size"] = 10**12
    samples["000000000776"]["json"]["offset"] = 10**9
    samples["../../etc/passwd"] = samples["000000000139"]
    samples["a/b"] = samples["000000000139"]
    (demo_copy / INDEX).write_text(json.dumps(index))
    client = client_for(demo_copy)
    catalog = client.app.state.catalog
    assert "negative" in catalog.get("000000000632").error
    assert "more than the viewer reads" in catalog.get("000000000285").error
    assert "outside the shard file" in catalog.get("000000000776").error
    assert catalog.get("../../etc/passwd") is None and catalog.get("a/b") is None
    assert sum("unsafe characters" in e for e in catalog.shards[0].errors) == 2
    assert_rest_is_served(client, {"000000000632", "000000000285", "000000000776"})


def test_bad_manifest_lists_the_shard_folder(demo_copy):
    (demo_copy / "manifest.json").write_text("{not json")
    catalog = Catalog(demo_copy).scan()
    assert any("manifest.json is unreadable" in p for p in catalog.problems)
    assert len(catalog.entries) == len(DEMO_KEYS)


def test_manifest_cannot_point_outside(demo_copy):
    manifest = json.loads((demo_copy / "manifest.json").read_text())
    extra = dict(manifest["shards"][0])
    for name in ("../../outside.tar", "/etc/passwd.tar", "..", "sub/shard.tar", ".hidden.tar"):
        manifest["shards"].append(dict(extra, name=name))
    (demo_copy / "manifest.json").write_text(json.dumps(manifest))
    catalog = Catalog(demo_copy).scan()
    assert [s.name for s in catalog.shards] == ["shard-000000.tar"]
    assert sum("skipped shard name" in p for p in catalog.problems) == 5


def test_missing_stats_and_rejects(demo_copy):
    (demo_copy / "stats.json").unlink()
    (demo_copy / "rejects.jsonl").unlink()
    html = client_for(demo_copy).get("/dataset").text
    assert "stats.json is missing" in html and "counted from the catalogue" in html
    assert "rejects.jsonl is missing" in html
    assert "<th>nouns</th><td>22</td>" in html  # counted from the catalogue


def test_bad_reject_lines_are_counted(demo_copy):
    with open(demo_copy / "rejects.jsonl", "ab") as handle:
        handle.write(b"{broken\n[]\n")
    html = client_for(demo_copy).get("/dataset").text
    assert "1 rejected; 2 unreadable line(s)" in html


# ---- datasets written with tokencompose's own shard writer, from edited demo records ------------------

def demo_samples(demo_dir: Path) -> list[tuple[SampleRecord, bytes]]:
    catalog = Catalog(demo_dir).scan()
    return [(catalog.record(e), catalog.image_bytes(e)[0]) for e in catalog.entries]


def test_damaged_mask_is_reported_not_decoded(demo_dir, tmp_path):
    samples = demo_samples(demo_dir)
    record, image = samples[0]
    assert record.key == "000000000632"
    nouns = [n.model_copy() for n in record.nouns]
    nouns[0] = nouns[0].model_copy(update={"mask": nouns[0].mask.model_copy(update={"counts": "0" * 40})})
    nouns[3] = nouns[3].model_copy(update={"mask": nouns[3].mask.model_copy(update={"counts": "~~~~"})})
    write_shard(tmp_path, 0, [(record.model_copy(update={"nouns": nouns}), image)], "jpg")
    client = client_for(tmp_path)
    page = client.get("/sample/000000000632")
    assert page.status_code == 200 and page.text.count('class="problem mask-damaged"') == 2
    assert client.get("/sample/000000000632/mask/0.png").status_code == 404
    assert client.get("/sample/000000000632/mask/3.png").status_code == 404


def test_markup_in_captions_is_escaped(demo_dir, tmp_path):
    record, image = demo_samples(demo_dir)[0]
    caption = 'A <script>alert("x")</script> cup <img src=x onerror=alert(1)>'
    start = caption.index("cup")
    noun = record.nouns[0].model_copy(update={"span": (start, start + 3)})
    hostile = SampleRecord.model_validate(record.model_copy(update={
        "caption": caption, "nouns": [noun],
        "candidates": [record.candidates[0].model_copy(update={"text": caption})]}).model_dump())
    write_shard(tmp_path, 0, [(hostile, image)], "jpg")
    client = client_for(tmp_path)
    for url in ("/", "/sample/000000000632", "/?q=script"):
        html = client.get(url).text
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;" in html


@pytest.fixture(scope="module")
def many_shards(demo_dir, tmp_path_factory) -> Path:
    """3 shards x 400 samples (demo records under new keys), written by the project's shard writer."""
    root = tmp_path_factory.mktemp("many")
    samples = demo_samples(demo_dir)
    for shard in range(3):
        batch = []
        for i in range(400):
            record, image = samples[i % len(samples)]
            image_id = 1_000_000 + shard * 1000 + i
            batch.append((record.model_copy(update={"key": f"{image_id:012d}", "image_id": image_id}), image))
        write_shard(root, shard, batch, "jpg")
    return root


def test_many_shards_gallery_and_shard_filter(many_shards):
    client = client_for(many_shards)
    catalog = client.app.state.catalog
    assert len(catalog.shards) == 3 and len(catalog.entries) == 1200
    first = client.get("/", params={"per_page": 96})
    assert "1,200 of 1,200 samples" in first.text and "page 1 of 13" in first.text
    only = client.get("/", params={"shard": "shard-000001.tar", "q": "spoon"})
    assert "50 of 1,200 samples" in only.text  # keys 1001000 + i, i = 0, 8, ... (50 of them below 400)
    assert client.get("/", params={"shard": "shard-000009.tar"}).status_code == 404
    assert client.get("/sample/000001002399").status_code == 200


def test_catalogue_reads_only_json_members(many_shards, monkeypatch):
    reads: list[tuple[int, int]] = []
    original = catalog_module.read_member

    def spy(handle, file_size, offset, size, limit):
        reads.append((offset, size))
        return original(handle, file_size, offset, size, limit)

    monkeypatch.setattr(catalog_module, "read_member", spy)
    catalog = Catalog(many_shards).scan()
    json_members = {(e.json_offset, e.json_size) for e in catalog.entries}
    assert len(reads) == 1200 and set(reads) <= json_members
    assert not {(e.image_offset, e.image_size) for e in catalog.entries} & set(reads)


def test_catalogue_memory_per_sample(many_shards):
    import tracemalloc

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    catalog = Catalog(many_shards).scan()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_sample = kept / len(catalog.entries)
    assert per_sample < 1500, f"{per_sample:.0f} bytes per sample"  # docs/viewer.md states about 0.6 KB


def test_background_scan_serves_while_reading(demo_dir, monkeypatch):
    gate = threading.Event()
    scan_shard = Catalog._scan_shard

    def slow(self, number):
        gate.wait(10)
        scan_shard(self, number)

    monkeypatch.setattr(Catalog, "_scan_shard", slow)
    client = TestClient(create_app(demo_dir, background_scan=True))
    early = client.get("/")
    assert early.status_code == 200 and "still being read (0 of 1 shards" in early.text
    gate.set()
    assert client.app.state.catalog.finished.wait(10)
    assert "still being read" not in client.get("/").text
    assert "8 of 8 samples" in client.get("/").text


def test_shards_folder_as_dir(demo_dir):
    catalog = Catalog(demo_dir / "shards").scan()
    assert catalog.root == demo_dir.resolve() and catalog.manifest is not None
    assert len(catalog.entries) == len(DEMO_KEYS) and catalog.shards[0].from_index


def test_flat_folder_of_tars(demo_dir, tmp_path):
    shutil.copy(demo_dir / SHARD, tmp_path / "data.tar")
    catalog = Catalog(tmp_path).scan()
    assert len(catalog.entries) == len(DEMO_KEYS) and not catalog.shards[0].from_index
