"""Every page of the viewer over HTTP, on the real demo shards."""
from __future__ import annotations

import io
import json
import re

import numpy as np
from PIL import Image

from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.grounding.masks import decode
from tokencompose.viewer import render

from tests.support.viewer_support import DEMO_KEYS


def cards(html: str) -> list[str]:
    return re.findall(r'<li class="card[^"]*" data-key="([^"]+)"', html)


def test_gallery_lists_every_sample_with_thumbnails(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert sorted(cards(response.text)) == sorted(DEMO_KEYS)
    assert "8 of 8 samples" in response.text
    for key in DEMO_KEYS:
        assert f'src="/sample/{key}/thumb.jpg"' in response.text
    assert "A cup of coffee on a red saucer with a spoon." in response.text


def test_gallery_search_by_noun_caption_and_key(client):
    assert cards(client.get("/", params={"q": "spoon"}).text) == ["000000000632"]
    assert cards(client.get("/", params={"q": "tabby"}).text) == ["000000000285"]  # caption text, not a noun
    assert cards(client.get("/", params={"q": "WALL CLOCK"}).text) == ["000000000872"]  # case-insensitive
    assert cards(client.get("/", params={"q": "000000000785"}).text) == ["000000000785"]
    empty = client.get("/", params={"q": "giraffe"})
    assert cards(empty.text) == [] and "No sample matches" in empty.text


def test_gallery_filters(client, demo_app):
    catalog = demo_app.state.catalog
    four = cards(client.get("/", params={"min_nouns": 4}).text)
    assert four == ["000000000632"]
    two = cards(client.get("/", params={"min_nouns": 2, "max_nouns": 2}).text)
    assert sorted(two) == sorted(e.key for e in catalog.entries if e.noun_count == 2) and len(two) == 3
    unmasked = cards(client.get("/", params={"unmasked": 1}).text)
    assert sorted(unmasked) == sorted(e.key for e in catalog.entries if e.has_unmasked)
    assert cards(client.get("/", params={"errors": 1}).text) == []
    # bad numbers are ignored, not a server error
    assert len(cards(client.get("/", params={"min_nouns": "lots", "page": "x", "per_page": "-4"}).text)) > 0


def test_gallery_pages(client):
    first = client.get("/", params={"per_page": 3})
    assert len(cards(first.text)) == 3 and "page 1 of 3" in first.text
    assert 'rel="next"' in first.text
    last = client.get("/", params={"per_page": 3, "page": 3})
    assert len(cards(last.text)) == 2 and 'rel="prev"' in last.text
    beyond = client.get("/", params={"per_page": 3, "page": 99})  # clamps to the last page
    assert cards(beyond.text) == cards(last.text)
    seen = cards(first.text) + cards(client.get("/", params={"per_page": 3, "page": 2}).text) + cards(last.text)
    assert sorted(seen) == sorted(DEMO_KEYS)


def test_gallery_marks_nouns_without_mask(client):
    html = client.get("/", params={"q": "000000000632"}).text
    chips = re.findall(r'<span class="chip( unmasked)?"[^>]*>([^<]+)</span>', html)
    assert chips == [("", "cup"), (" unmasked", "coffee"), ("", "saucer"), ("", "spoon")]


def test_sample_page(client):
    response = client.get("/sample/000000000632")
    assert response.status_code == 200
    html = response.text
    # caption with each noun highlighted in its own colour, masked or not
    marks = re.findall(r'<mark class="noun( unmasked)?" data-noun="(\d)" style="--c: (#[0-9a-f]{6})">([^<]+)</mark>',
                       html)
    assert [(m[1], m[3]) for m in marks] == [("0", "cup"), ("1", "coffee"), ("2", "saucer"), ("3", "spoon")]
    assert [m[2] for m in marks] == [render.colour(i) for i in range(4)]
    assert [bool(m[0]) for m in marks] == [False, True, False, False]
    # one overlay and one checkbox per masked noun, an opacity slider
    assert re.findall(r'<img class="mask" data-noun="(\d)" src="([^"]+)"', html) == [
        ("0", "/sample/000000000632/mask/0.png"), ("2", "/sample/000000000632/mask/2.png"),
        ("3", "/sample/000000000632/mask/3.png")]
    assert re.findall(r'class="noun-toggle" data-noun="(\d)"', html) == ["0", "2", "3"]
    assert 'type="range" id="opacity"' in html
    # boxes (the demo's human annotations give boxes, no scores): the cup (COCO), the saucer (LVIS), the spoon
    assert html.count('class="box" data-noun=') == 3 and "172.0, 18.0, 240.0, 280.0" in html and "77.0, 95.0, 403.0, 300.0" in html
    # nouns without a mask with their reason
    without = html[html.index('id="without-mask"'):]
    assert "<strong>coffee</strong>: <span class=\"reason\">category_not_annotated_in_image</span>" in without
    assert "<strong>saucer</strong>" not in without
    # candidate captions with scores, the chosen one marked; provenance
    candidates = html[html.index('id="candidates"'):html.index("</table>", html.index('id="candidates"'))]
    assert candidates.count("<tr") == 6 and "0.448" in candidates and "chosen" in candidates
    assert "An espresso cup and a silver spoon sitting on a wooden table." in candidates
    assert "<dt>captions</dt><dd>consensus" in html and "<dt>nouns</dt><dd>spacy" in html
    assert '/static/viewer.js' in html


def test_sample_provenance_matches_record(client):
    record = SampleRecord.model_validate_json(client.get("/sample/000000000285/record.json").content)
    html = client.get("/sample/000000000285").text
    assert record.provenance.config_hash in html
    assert record.provenance.grounding.name in html
    assert "A close up of a tabby cat with green eyes." in html


def test_sample_navigation_links(client):
    html = client.get("/sample/000000000632").text
    assert 'rel="next"' in html and 'rel="prev"' not in html  # first sample of the shard


def test_image_is_the_original_bytes(client, demo_dir):
    response = client.get("/sample/000000000632/image")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    index = json.loads((demo_dir / "index" / "shard-000000.json").read_text())
    location = index["samples"]["000000000632"]["jpg"]
    with open(demo_dir / "shards" / "shard-000000.tar", "rb") as handle:
        handle.seek(location["offset"])
        assert response.content == handle.read(location["size"])


def test_mask_png_is_the_noun_mask_in_its_colour(client):
    record = SampleRecord.model_validate_json(client.get("/sample/000000000632/record.json").content)
    for index in (0, 3):
        response = client.get(f"/sample/000000000632/mask/{index}.png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        rgba = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))
        expected = decode(record.nouns[index].mask.model_dump())
        assert rgba.shape == (record.height, record.width, 4)
        assert np.array_equal(rgba[..., 3] == 255, expected)
        assert np.all(rgba[..., 3][~expected] == 0)
        assert np.all(rgba[expected][:, :3] == render.rgb(render.colour(index)))
    assert client.get("/sample/000000000632/mask/1.png").status_code == 404  # coffee: no mask


def test_thumbnail_is_bounded_and_cached(client, demo_app):
    cache = demo_app.state.thumbs
    response = client.get("/sample/000000000885/thumb.jpg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert max(thumb.size) <= render.THUMB_SIZE
    hits = cache.hits
    assert client.get("/sample/000000000885/thumb.jpg").content == response.content
    assert cache.hits == hits + 1


def test_byte_lru_drops_the_oldest():
    cache = render.ByteLRU(max_bytes=10)
    for key in "abc":
        cache.get_or_make(key, lambda: b"1234")
    assert len(cache) == 2 and cache.total == 8
    made = []
    cache.get_or_make("a", lambda: made.append(1) or b"1234")
    assert made == [1]  # "a" had been dropped


def test_dataset_page(client, demo_dir):
    stats = json.loads((demo_dir / "stats.json").read_text())
    response = client.get("/dataset")
    assert response.status_code == 200
    html = response.text
    counts = html[html.index('id="counts"'):]
    assert f"<th>samples</th><td>{stats['samples']}</td>" in counts
    assert f"<th>nouns</th><td>{stats['nouns']}</td>" in counts
    share = f"{100 * stats['nouns_with_mask'] / stats['nouns']:.1f}%"
    assert f"{stats['nouns_with_mask']} ({share})" in counts
    per_caption = html[html.index('id="nouns-per-caption"'):]
    for count, samples in stats["nouns_per_caption"].items():
        assert f'max_nouns={count}">{count}</a></td><td>{samples}</td>' in per_caption
    with_mask = html[html.index('id="top-with-mask"'):html.index('id="top-without-mask"')]
    assert all(f">{noun}</a>" in with_mask for noun in stats["noun_texts_with_mask"])
    without_mask = html[html.index('id="top-without-mask"'):html.index('id="unmasked-reasons"')]
    assert all(f">{noun}</a>" in without_mask for noun in stats["noun_texts_without_mask"])
    rejects = html[html.index('id="rejects-by-reason"'):]
    for reason, count in stats["rejects_by_reason"].items():
        assert f">{reason}</td><td>{count}</td>" in rejects  # the cell carries the reason's meaning as a title
    assert "000000999999.jpg" in html and "not in captions.json" in html  # rejects.jsonl lines
    manifest = json.loads((demo_dir / "manifest.json").read_text())
    assert "shard-000000.tar" in html and manifest["config_hash"] in html


def test_static_assets(client):
    js = client.get("/static/viewer.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    css = client.get("/static/viewer.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get("/favicon.ico").status_code == 204


def test_paging_reuses_the_search(demo_app):
    from tokencompose.viewer.catalog import Query

    searches = demo_app.state.searches
    first = searches.search(Query(text=" Spoon "))
    assert searches.search(Query(text="spoon")) is first
    assert [e.key for e in first] == ["000000000632"]
    assert len(searches.search(Query())) == 8
