"""The viewer's state (one per app, on ``app.state.viewer``) and the FastAPI dependencies that hand it,
or one sample of it, to a route. A sample is only ever reached through :func:`sample_entry`: its key
is looked up in the catalogue's dictionary, never joined into a path.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokencompose.schemas.curation import CurationFileError
from tokencompose.tasks.curation.store import FlagStore, ViewStore
from tokencompose.viewer import render
from tokencompose.viewer.catalog import Catalog, Entry, SearchCache
from tokencompose.viewer.rejects import RejectList
from tokencompose.viewer.templating import Pages
from tokencompose.viewer.training_view import TrainingView


class NotFound(StarletteHTTPException):
    def __init__(self, what: str = "not found"):
        super().__init__(status_code=404, detail=what)


class Conflict(StarletteHTTPException):
    """A change the viewer cannot make as things stand (e.g. a corrupt flags file, named with its line)."""

    def __init__(self, what: str):
        super().__init__(status_code=409, detail=what)


class BadRequest(StarletteHTTPException):
    """A request value the viewer does not accept (the message never repeats the value)."""

    def __init__(self, what: str):
        super().__init__(status_code=400, detail=what)


@dataclass
class ViewerState:
    catalog: Catalog
    pages: Pages
    static: dict[str, tuple[bytes, str]]
    training: TrainingView
    rejects: RejectList
    flags: FlagStore
    views: ViewStore
    thumbs: render.ByteLRU = field(default_factory=lambda: render.ByteLRU(max_bytes=64 * 1024 * 1024))
    masks: render.ByteLRU = field(default_factory=lambda: render.ByteLRU(max_bytes=32 * 1024 * 1024))
    derived: dict = field(default_factory=dict)  # stats counted from the catalogue, once
    searches: SearchCache = field(init=False)
    # what every form that changes something carries (the pages put it in; a page of another site cannot read it)
    form_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def __post_init__(self) -> None:
        self.searches = SearchCache(self.catalog)

    @classmethod
    def open(cls, shard_dir: Path, *, tokenizer_dir: Path | None = None) -> "ViewerState":
        catalog = Catalog(Path(shard_dir))
        return cls(catalog=catalog, pages=Pages(catalog), static=Pages.static_files(),
                   training=TrainingView(tokenizer_dir), rejects=RejectList(catalog.root),
                   flags=FlagStore(catalog.root), views=ViewStore(catalog.root))

    def flag_index(self) -> tuple[dict[str, dict[int | None, str]], str | None]:
        """(key -> {noun index or None for the sample: reason}, None), or ({}, why the flags file cannot be read)."""
        try:
            flags = self.flags.read()
        except CurationFileError as error:
            return {}, str(error)
        index: dict[str, dict[int | None, str]] = {}
        for flag in flags:
            index.setdefault(flag.key, {})[flag.noun] = flag.reason
        return index, None


def viewer_state(request: Request) -> ViewerState:
    return request.app.state.viewer


State = Annotated[ViewerState, Depends(viewer_state)]


def sample_entry(key: str, state: State) -> Entry:
    """The catalogue entry of the path's ``{key}``, or 404: the only way from a URL to a sample."""
    entry = state.catalog.get(key)
    if entry is None:
        raise NotFound()
    return entry


Sample = Annotated[Entry, Depends(sample_entry)]


def plain_number(text: str, high: int = 10**9) -> int:
    """A path segment that must be a plain decimal number (no sign, no spaces), else 404."""
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > high:
        raise NotFound()
    return int(text)
