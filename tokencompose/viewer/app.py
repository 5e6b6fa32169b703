"""`tokencompose view DIR`: a local web viewer for the shards of build-grounded-coco.

Server-rendered pages (jinja2) with a little vanilla JS. This module only assembles the app: the
state and its dependencies are in :mod:`.state`, the routes in :mod:`.pages` (HTML), :mod:`.media`
(images and static files) and :mod:`.api` (JSON and exports). Every URL that names a sample is
resolved by looking its key up in the catalogue; nothing from a request is ever joined into a path.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokencompose.viewer import api, curation, editing, media, pages
from tokencompose.viewer.state import ViewerState

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; form-action 'self'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def create_app(shard_dir: Path, *, background_scan: bool = False, allowed_hosts: list[str] | None = None,
               tokenizer_dir: Path | None = None) -> FastAPI:
    """The viewer for the shard set in ``shard_dir`` (the build output folder, or its shards/ folder).

    ``background_scan``: serve at once, fill the catalogue and load the tokenizer in threads (large
    datasets); otherwise the catalogue is complete before this returns and the tokenizer loads on
    the first sample page. ``allowed_hosts``: accepted Host headers (against DNS rebinding when bound
    to loopback); None accepts any. ``tokenizer_dir``: a training folder whose tokenizer the sample
    page uses (default: CLIP's BPE vocabulary bundled with open_clip).
    """
    state = ViewerState.open(Path(shard_dir), tokenizer_dir=tokenizer_dir)
    if background_scan:
        state.catalog.start_background_scan()
        state.training.warm()
    else:
        state.catalog.scan()

    app = FastAPI(title="tokencompose viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.viewer = state
    # the parts tests and tools look at directly
    app.state.catalog, app.state.thumbs, app.state.masks = state.catalog, state.thumbs, state.masks
    app.state.searches = state.searches

    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if error.status_code == 404:
            return state.pages.render("error.html", status=404, title="Not found",
                                      message="There is no such page or sample in this shard set.")
        return state.pages.render("error.html", status=error.status_code, title=f"Error {error.status_code}",
                                  message=str(error.detail))

    for router in (pages.router, curation.router, api.router, media.router, editing.router):
        app.include_router(router)
    return app
