"""Curating over HTTP on a private copy of the demo shards: flags on a sample and on one mask (kept in
flags.jsonl beside the dataset), the forms' protection against other sites, the flags filter and the
key export, saved views, and a corrupt or foreign flags file named with its line."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tokencompose.schemas.curation import FLAGS_FILE, VIEWS_FILE, Flag, SavedView, read_records
from tokencompose.viewer.app import create_app

CUP_KEY = "000000000632"  # nouns: cup 0, coffee 1, saucer 2, spoon 3
CAT_KEY = "000000000285"
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def module_viewer(demo_dir, tmp_path_factory):
    """One app (its tokenizer loads once) on a private copy of the demo shards."""
    folder = Path(shutil.copytree(demo_dir, tmp_path_factory.mktemp("curation") / "copy"))
    with TestClient(create_app(folder), base_url="http://127.0.0.1:8765") as client:
        yield client, folder


@pytest.fixture
def viewer(module_viewer):
    """The module's viewer with no flags and no saved views."""
    client, folder = module_viewer
    for name in (FLAGS_FILE, VIEWS_FILE):
        (folder / name).unlink(missing_ok=True)
    return client, folder


def token_of(html: str) -> str:
    return re.search(r'name="token" value="([^"]+)"', html).group(1)


def post(client, path: str, token: str | None, **fields):
    data = dict(fields, **({"token": token} if token is not None else {}))
    return client.post(path, data=data, follow_redirects=False)


def cards(html: str) -> list[str]:
    return re.findall(r'<li class="card[^"]*" data-key="([^"]+)"', html)


def test_flag_a_sample_and_a_mask_then_unflag(viewer):
    client, folder = viewer
    token = token_of(client.get(f"/sample/{CUP_KEY}").text)
    answer = post(client, f"/sample/{CUP_KEY}/flag", token, noun="", reason="blurry photo")
    assert answer.status_code == 303 and answer.headers["location"] == f"/sample/{CUP_KEY}#flags"
    assert post(client, f"/sample/{CUP_KEY}/flag", token, noun="2", reason="the  saucer mask\ncovers the cup").status_code == 303
    assert post(client, f"/sample/{CAT_KEY}/flag", token, noun="0", reason="mask too small").status_code == 303

    flags = read_records(folder / FLAGS_FILE, Flag)
    assert [(f.key, f.noun, f.noun_text, f.reason) for f in flags] == [
        (CAT_KEY, 0, "cat", "mask too small"), (CUP_KEY, None, None, "blurry photo"),
        (CUP_KEY, 2, "saucer", "the saucer mask covers the cup")]
    assert not list((folder / "shards").glob("*flag*")) and not (folder / "shards" / FLAGS_FILE).exists()

    html = client.get(f"/sample/{CUP_KEY}").text
    assert 'id="sample-flagged"' in html and "blurry photo" in html
    listed = html[html.index('id="flag-list"'):html.index('id="flag-form"')]
    assert re.findall(r'<li data-noun="(\d*)">', listed) == ["", "2"]
    assert re.findall(r'<tr class="[^"]*flagged[^"]*" data-noun="(\d)"', html) == ["2"]

    # flagging again replaces the reason; unflagging removes only that target
    assert post(client, f"/sample/{CUP_KEY}/flag", token, noun="", reason="too dark").status_code == 303
    assert post(client, f"/sample/{CUP_KEY}/unflag", token, noun="2").status_code == 303
    flags = read_records(folder / FLAGS_FILE, Flag)
    assert [(f.key, f.noun, f.reason) for f in flags] == [(CAT_KEY, 0, "mask too small"), (CUP_KEY, None, "too dark")]
    assert 'data-noun="2" class' not in client.get(f"/sample/{CUP_KEY}").text.split('id="flag-list"')[1][:400]


@pytest.mark.parametrize("fields, status", [
    ({"noun": "4", "reason": "x"}, 400),     # the cup's caption has 4 nouns
    ({"noun": "-1", "reason": "x"}, 400),
    ({"noun": "1e0", "reason": "x"}, 400),
    ({"noun": "", "reason": "   "}, 400),
    ({"noun": "", "reason": "x" * 501}, 400),
])
def test_bad_flag_forms_change_nothing(viewer, fields, status):
    client, folder = viewer
    token = token_of(client.get(f"/sample/{CUP_KEY}").text)
    assert post(client, f"/sample/{CUP_KEY}/flag", token, **fields).status_code == status
    assert not (folder / FLAGS_FILE).exists()


def test_changes_need_the_viewers_form_token_and_origin(viewer):
    client, folder = viewer
    token = token_of(client.get("/").text)
    path = f"/sample/{CUP_KEY}/flag"
    fields = {"noun": "", "reason": "spam"}
    assert post(client, path, None, **fields).status_code == 403
    assert post(client, path, "not-the-token", **fields).status_code == 403
    assert post(client, "/views", "", name="v", q="cup").status_code == 403
    for headers in ({"origin": "http://attacker.example"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"},
                    {"sec-fetch-site": "same-site"}, {"origin": "null", "sec-fetch-site": "cross-site"},
                    {"origin": "http://127.0.0.1:8765", "sec-fetch-site": "cross-site"}):
        answer = client.post(path, data={**fields, "token": token}, headers=headers, follow_redirects=False)
        assert answer.status_code == 403, headers
        assert "spam" not in answer.text
    answer = client.post(path, content=f'{{"token": "{token}", "reason": "x"}}',
                         headers={"content-type": "application/json"}, follow_redirects=False)
    assert answer.status_code == 400
    assert client.get(f"{path}?token={token}&reason=x").status_code in (404, 405)
    assert not (folder / FLAGS_FILE).exists()
    # the viewer's own page, as a browser sends it
    same = client.post(path, data={**fields, "token": token}, follow_redirects=False,
                       headers={"origin": "http://127.0.0.1:8765", "sec-fetch-site": "same-origin"})
    assert same.status_code == 303 and (folder / FLAGS_FILE).exists()
    # Chrome under Referrer-Policy no-referrer: "Origin: null" from the viewer's own page
    chrome = client.post(path, data={**fields, "token": token}, follow_redirects=False,
                         headers={"origin": "null", "sec-fetch-site": "same-origin"})
    assert chrome.status_code == 303
    # another viewer process has another token
    other = create_app(folder)
    assert other.state.viewer.form_token != token


def test_flagged_filter_and_export(viewer):
    client, _ = viewer
    token = token_of(client.get("/").text)
    post(client, f"/sample/{CUP_KEY}/flag", token, noun="", reason="blurry")
    post(client, f"/sample/{CAT_KEY}/flag", token, noun="0", reason="small mask")
    assert cards(client.get("/?flagged=any").text) == [CUP_KEY, CAT_KEY]
    assert cards(client.get("/?flagged=sample").text) == [CUP_KEY]
    assert cards(client.get("/?flagged=mask").text) == [CAT_KEY]
    unflagged = cards(client.get("/?flagged=none&per_page=96").text)
    assert len(unflagged) == 6 and CUP_KEY not in unflagged and CAT_KEY not in unflagged
    assert cards(client.get("/?flagged=any&q=cat").text) == [CAT_KEY]  # with the other filters
    assert client.get("/export/keys.txt?flagged=any").text == f"{CUP_KEY}\n{CAT_KEY}\n"
    gallery = client.get("/").text
    assert gallery.count('class="flag-badge"') == 2
    assert client.get("/?flagged=maybe").status_code == 400


def test_saved_views(viewer):
    client, folder = viewer
    token = token_of(client.get("/?category=person").text)
    answer = post(client, "/views", token, name="people", category="person", sort="key", page="3", junk="x")
    assert answer.status_code == 303 and answer.headers["location"] == "/views"
    listing = client.get("/views").text
    assert '<a href="/views/people">people</a>' in listing and "category=person, sort=key, per_page=24" in listing
    opened = client.get("/views/people", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/?category=person&sort=key&per_page=24"
    assert cards(client.get("/views/people").text) == ["000000000139", "000000000785"]

    post(client, "/views", token, name="people", flagged="any")  # the same name again replaces it
    assert client.get("/views/people", follow_redirects=False).headers["location"] == "/?flagged=any&per_page=24"
    assert post(client, "/views", token, name="../x", q="cup").status_code == 400
    assert post(client, "/views", token, name="cats", category="no-such-category").status_code == 400
    assert client.get("/views/nothing-saved").status_code == 404
    assert client.get("/views/..%2f..%2fetc").status_code == 404
    assert post(client, "/views/people/delete", token).status_code == 303
    assert client.get("/views/people").status_code == 404
    assert read_records(folder / VIEWS_FILE, SavedView) == []
    assert post(client, "/views/people/delete", token).status_code == 404


@pytest.mark.parametrize("content, line, what", [
    ('{"key": "000000000632", "reason": "ok", "flagged_at": "t"}\n{not json\n', 2, "Flag"),
    ('{"key": "000000000632", "reason": "ok", "flagged_at": "t", "colour": "red"}\n', 1, "colour"),
    ('{"image_id": 632, "stage": "source"}\n', 1, "Flag"),   # another program's JSON Lines
    ('\n\n{"key": "../../etc", "reason": "x", "flagged_at": "t"}\n', 3, "key"),
])
def test_a_corrupt_or_foreign_flags_file_is_named_with_its_line(viewer, content, line, what):
    client, folder = viewer
    path = folder / FLAGS_FILE
    path.write_text(content)
    token = token_of(client.get(f"/sample/{CUP_KEY}").text)
    page = client.get(f"/sample/{CUP_KEY}").text
    assert f"{path}:{line}" in page and what in page  # the page still shows, with the problem
    answer = post(client, f"/sample/{CUP_KEY}/flag", token, noun="", reason="x")
    assert answer.status_code == 409 and f"{path}:{line}" in answer.text and "Nothing was changed" in answer.text
    assert path.read_text() == content  # never rewritten, never emptied
    filtered = client.get("/?flagged=any")
    assert filtered.status_code == 409 and f"{path}:{line}" in filtered.text
    assert client.get("/").status_code == 200
