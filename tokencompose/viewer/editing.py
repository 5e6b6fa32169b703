"""The edits page: source, mask, result and attention maps of `tokencompose edit` output folders side by side.

The folders are the direct children of ``$TOKENCOMPOSE_EDITS_DIR`` that hold an edit.json; only their
known image files are served (a name is one path segment; nothing outside the folder is reachable).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from tokencompose.schemas.editing import EDIT_INFO_FILE

EDITS_DIR_ENV = "TOKENCOMPOSE_EDITS_DIR"
PANELS = (("source.png", "source"), ("mask.png", "mask"), ("result.png", "result"), ("decoded.png",
          "before the background step"), ("attention.png", "attention over the steps"))
SERVED = {name for name, _ in PANELS}

router = APIRouter()


def edits_root() -> Path:
    root = os.environ.get(EDITS_DIR_ENV)
    if not root or not Path(root).is_dir():
        raise HTTPException(404, f"set {EDITS_DIR_ENV} to a folder of edit outputs")
    return Path(root)


def edit_folder(name: str) -> Path:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise HTTPException(404, "no such edit")
    folder = edits_root() / name
    if not (folder / EDIT_INFO_FILE).is_file():
        raise HTTPException(404, "no such edit")
    return folder


@router.get("/edits")
def edits_index(request: Request):
    root = edits_root()
    names = sorted(p.name for p in root.iterdir() if (p / EDIT_INFO_FILE).is_file())
    return request.app.state.viewer.pages.render("editing.html", title="Edits", edits=names, edit=None)


@router.get("/edits/{name}")
def edit_page(name: str, request: Request):
    folder = edit_folder(name)
    info = json.loads((folder / EDIT_INFO_FILE).read_text())
    panels = [(file, label) for file, label in PANELS if (folder / file).is_file()]
    return request.app.state.viewer.pages.render("editing.html", title=f"Edit {name}", edits=None, edit=name,
                                                 info=info, panels=panels)


@router.get("/edits/{name}/{file}")
def edit_image(name: str, file: str):
    if file not in SERVED:
        raise HTTPException(404, "no such image")
    path = edit_folder(name) / file
    if not path.is_file():
        raise HTTPException(404, "no such image")
    return FileResponse(path, media_type="image/png")
