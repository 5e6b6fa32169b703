"""The edits page: an edit folder's panels side by side, only its known images served."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tokencompose.viewer.editing import EDITS_DIR_ENV


def test_edit_folders_are_listed_and_shown_side_by_side(client, tmp_path, monkeypatch):
    folder = tmp_path / "stone"
    folder.mkdir()
    for name in ("source", "mask", "result"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{name}.png")
    (folder / "edit.json").write_text(json.dumps({"prompt": "a <b>stone</b>", "mask_from": "word 'cat'",
                                                  "model": "tiny"}))
    (tmp_path / "not-an-edit").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    monkeypatch.setenv(EDITS_DIR_ENV, str(tmp_path))
    index = client.get("/edits")
    assert index.status_code == 200 and 'href="/edits/stone"' in index.text and "not-an-edit" not in index.text
    page = client.get("/edits/stone")
    assert page.status_code == 200
    assert all(f'src="/edits/stone/{n}.png"' in page.text for n in ("source", "mask", "result"))
    assert "attention.png" not in page.text and "&lt;b&gt;stone" in page.text     # absent panel; escaped prompt
    assert client.get("/edits/stone/result.png").headers["content-type"] == "image/png"
    assert client.get("/edits/stone/edit.json").status_code == 404
    assert client.get("/edits/not-an-edit").status_code == 404
    assert client.get("/edits/..%2Fsecret.png").status_code == 404
    monkeypatch.delenv(EDITS_DIR_ENV)
    assert client.get("/edits").status_code == 404
