"""`tokencompose view DIR`: a local web viewer for the shards of build-grounded-coco.

Server-rendered pages (jinja2) with a little vanilla JS. Every URL that names a sample is resolved by
looking its key up in the catalogue; nothing from a request is ever joined into a file path.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi import Query as Param
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokencompose.viewer import render
from tokencompose.viewer.catalog import Catalog, Entry, Query, SampleError, SearchCache

HERE = Path(__file__).resolve().parent
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
PER_PAGE = (24, 48, 96)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; form-action 'self'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class NotFound(StarletteHTTPException):
    def __init__(self, what: str = "not found"):
        super().__init__(status_code=404, detail=what)


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda part, whole: f"{100.0 * part / whole:.1f}%" if whole else "–"
    env.filters["num"] = lambda value: f"{value:,}" if isinstance(value, int) else value
    env.filters["score"] = lambda value: "–" if value is None else f"{value:.3f}"
    env.filters["box"] = lambda box: ", ".join(f"{v:g}" if abs(v) >= 1 else f"{v:.2f}" for v in box)
    env.globals["colour"] = render.colour
    return env


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The viewer's own CSS and JS, read once: /static/<name> can only ever return one of these."""
    files = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.is_file() and path.suffix in STATIC_TYPES:
            files[path.name] = (path.read_bytes(), STATIC_TYPES[path.suffix])
    return files


def _int_or_none(value: str | None, low: int = 0, high: int = 10_000) -> int | None:
    try:
        number = int(value) if value not in (None, "") else None
    except ValueError:
        return None
    return None if number is None else max(low, min(high, number))


def create_app(shard_dir: Path, *, background_scan: bool = False, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The viewer for the shard set in ``shard_dir`` (the build output folder, or its shards/ folder).

    ``background_scan``: serve at once and fill the catalogue in a thread (large datasets); otherwise
    the catalogue is complete before this returns. ``allowed_hosts``: accepted Host headers (against
    DNS rebinding when bound to loopback); None accepts any.
    """
    catalog = Catalog(Path(shard_dir))
    if background_scan:
        catalog.start_background_scan()
    else:
        catalog.scan()
    templates = _templates()
    static = _static_files()
    thumbs = render.ByteLRU(max_bytes=64 * 1024 * 1024)
    masks = render.ByteLRU(max_bytes=32 * 1024 * 1024)
    derived: dict = {}
    searches = SearchCache(catalog)

    app = FastAPI(title="tokencompose viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.catalog = catalog
    app.state.thumbs = thumbs
    app.state.masks = masks
    app.state.searches = searches

    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def page(name: str, status: int = 200, **context) -> HTMLResponse:
        context.setdefault("loading", None if catalog.finished.is_set()
                           else f"{catalog.shards_done} of {len(catalog.shards)} shards")
        context.setdefault("dataset_name", catalog.root.name)
        return HTMLResponse(templates.get_template(name).render(**context), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if error.status_code == 404:
            return page("error.html", status=404, title="Not found",
                        message="There is no such page or sample in this shard set.")
        return page("error.html", status=error.status_code, title=f"Error {error.status_code}",
                    message=str(error.detail))

    def entry_or_404(key: str) -> Entry:
        entry = catalog.get(key)
        if entry is None:
            raise NotFound()
        return entry

    # ---- pages ------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def gallery(q: str = "", unmasked: str = "", errors: str = "", min_nouns: str = "", max_nouns: str = "",
                shard: str = "", page_number: str = Param("1", alias="page"), per_page: str = "24") -> HTMLResponse:
        shard_number = None
        if shard:
            shard_number = catalog.shard_number(shard)
            if shard_number is None:
                raise NotFound()
        query = Query(text=q[:200], unmasked=bool(unmasked), errors=bool(errors),
                      min_nouns=_int_or_none(min_nouns), max_nouns=_int_or_none(max_nouns), shard=shard_number)
        size = _int_or_none(per_page, 1, 200) or PER_PAGE[0]
        found = searches.search(query)
        pages = max(1, math.ceil(len(found) / size))
        number = min(_int_or_none(page_number, 1, 10**9) or 1, pages)
        shown = found[(number - 1) * size:number * size]
        params = {k: v for k, v in (("q", q), ("unmasked", unmasked), ("errors", errors), ("min_nouns", min_nouns),
                                    ("max_nouns", max_nouns), ("shard", shard), ("per_page", per_page)) if v}

        def page_url(n: int) -> str:
            return "/?" + urlencode({**params, "page": n})

        cards = [{"entry": e, "nouns": list(enumerate(e.noun_texts)), "shard": catalog.shards[e.shard].name}
                 for e in shown]
        return page("gallery.html", title="Samples", cards=cards, total=len(catalog.entries), matched=len(found),
                    page_number=number, pages=pages, page_url=page_url, form=params, shards=catalog.shards,
                    per_page_choices=PER_PAGE, size=size, error_count=catalog.error_count)

    @app.get("/sample/{key}", response_class=HTMLResponse)
    def sample(key: str) -> HTMLResponse:
        entry = entry_or_404(key)
        previous, following = catalog.neighbours(entry)
        context = {"title": key, "entry": entry, "shard": catalog.shards[entry.shard].name, "previous": previous,
                   "following": following}
        try:
            record = catalog.record(entry)
        except SampleError as error:
            return page("sample.html", error=str(error), image_readable=catalog.image_readable(entry), **context)
        nouns = []
        for index, noun in enumerate(record.nouns):
            box_rows = [{"box": b, "score": s} for b, s in
                        zip(noun.boxes, list(noun.box_scores) + [None] * (len(noun.boxes) - len(noun.box_scores)))]
            area, damaged = None, None
            if noun.mask is not None:
                try:
                    area = render.rle_area(noun.mask.model_dump())
                except render.RenderError as problem:
                    damaged = str(problem)
            nouns.append({"index": index, "noun": noun, "colour": render.colour(index), "area": area,
                          "damaged": damaged,
                          "box_style": _box_style(noun.box, record.width, record.height) if noun.box else None,
                          "boxes": [dict(row, style=_box_style(row["box"], record.width, record.height))
                                    for row in box_rows]})
        candidates = sorted(record.candidates, key=lambda c: (c.score is None, -(c.score or 0.0)))
        return page("sample.html", error=None, record=record, nouns=nouns, segments=_caption_segments(record),
                    candidates=candidates, pixels=record.width * record.height,
                    provenance=json.dumps(record.provenance.model_dump(mode="json"), indent=1, sort_keys=True),
                    **context)

    @app.get("/dataset", response_class=HTMLResponse)
    def dataset() -> HTMLResponse:
        stats, stats_problem = catalog.stats()
        if stats is None and catalog.finished.is_set():
            if "stats" not in derived:
                derived["stats"] = _stats_from_catalog(catalog.entries)
            stats = derived["stats"]
        if "rejects" not in derived:
            derived["rejects"] = catalog.rejects()
        rejects = derived["rejects"]
        nouns = int(stats.get("nouns", 0)) if stats else 0
        with_mask = int(stats.get("nouns_with_mask", 0)) if stats else 0
        per_caption = sorted(((int(k), v) for k, v in (stats or {}).get("nouns_per_caption", {}).items()))
        return page("dataset.html", title="Dataset", stats=stats, stats_problem=stats_problem, rejects=rejects,
                    nouns=nouns, with_mask=with_mask, per_caption=per_caption,
                    per_caption_max=max((v for _, v in per_caption), default=0),
                    top_with=_top((stats or {}).get("noun_texts_with_mask", {})),
                    top_without=_top((stats or {}).get("noun_texts_without_mask", {})),
                    by_reason=sorted((stats or {}).get("nouns_without_mask_by_reason", {}).items(),
                                     key=lambda kv: -kv[1]),
                    manifest=catalog.manifest, shards=catalog.shards, problems=catalog.problems,
                    entries=len(catalog.entries), error_count=catalog.error_count,
                    provenance=json.dumps(catalog.manifest.provenance, indent=1, sort_keys=True)
                    if catalog.manifest else None)

    # ---- sample resources -------------------------------------------------------------------------

    @app.get("/sample/{key}/image")
    def image(key: str) -> Response:
        entry = entry_or_404(key)
        try:
            data, media_type = catalog.image_bytes(entry)
        except SampleError:
            raise NotFound() from None
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/sample/{key}/thumb.jpg")
    def thumb(key: str) -> Response:
        entry = entry_or_404(key)

        def make() -> bytes:
            data, _ = catalog.image_bytes(entry)
            return render.thumbnail(data)

        try:
            return Response(thumbs.get_or_make(entry.key, make), media_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=3600"})
        except (SampleError, render.RenderError):
            return Response(render.broken_thumbnail(), media_type="image/png", headers={"X-Viewer-Error": "1"})

    @app.get("/sample/{key}/mask/{index}.png")
    def mask(key: str, index: int) -> Response:
        entry = entry_or_404(key)
        if index < 0 or index >= entry.noun_count or not entry.noun_has_mask(index) or entry.error:
            raise NotFound()

        def make() -> bytes:
            noun = catalog.record(entry).nouns[index]
            return render.mask_png(noun.mask.model_dump(), render.colour(index))

        try:
            data = masks.get_or_make((entry.key, index), make)
        except (SampleError, render.RenderError, IndexError, AttributeError):
            raise NotFound() from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/sample/{key}/record.json")
    def record_json(key: str) -> Response:
        entry = entry_or_404(key)
        try:
            record = catalog.record(entry)
        except SampleError as error:
            return JSONResponse({"key": entry.key, "error": str(error)}, status_code=422)
        return Response(record.to_json_bytes(), media_type="application/json")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in static:
            raise NotFound()
        data, media_type = static[name]
        return Response(data, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return app


def _box_style(box, width: int, height: int) -> str:
    x, y, w, h = box
    if width <= 0 or height <= 0:
        return "display:none"
    return (f"left:{100 * x / width:.3f}%;top:{100 * y / height:.3f}%;"
            f"width:{100 * w / width:.3f}%;height:{100 * h / height:.3f}%")


def _caption_segments(record) -> list[tuple[str, int | None]]:
    """The caption cut into (text, noun index or None); overlapping spans keep the first noun."""
    segments, position = [], 0
    for index, noun in sorted(enumerate(record.nouns), key=lambda item: item[1].span[0]):
        start, end = noun.span
        if start < position:
            continue
        if start > position:
            segments.append((record.caption[position:start], None))
        segments.append((record.caption[start:end], index))
        position = end
    if position < len(record.caption):
        segments.append((record.caption[position:], None))
    return segments


def _top(counts: dict, limit: int = 25) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def _stats_from_catalog(entries: list[Entry]) -> dict:
    """What stats.json would hold, from the catalogue, when stats.json is missing."""
    per_caption: Counter[str] = Counter()
    with_mask: Counter[str] = Counter()
    without_mask: Counter[str] = Counter()
    samples = nouns = masked = 0
    for entry in entries:
        if entry.error:
            continue
        samples += 1
        per_caption[str(entry.noun_count)] += 1
        for index, text in enumerate(entry.noun_texts):
            nouns += 1
            if entry.noun_has_mask(index):
                masked += 1
                with_mask[text] += 1
            else:
                without_mask[text] += 1
    return {"samples": samples, "nouns": nouns, "nouns_with_mask": masked, "nouns_per_caption": dict(per_caption),
            "noun_texts_with_mask": dict(with_mask), "noun_texts_without_mask": dict(without_mask),
            "derived_from_catalog": True}
