"""Curating from the viewer: flag or unflag a sample or one noun's mask, and saved views (named filters).

Both are kept beside the dataset (``flags.jsonl``, ``views.jsonl``; :mod:`tokencompose.tasks.curation.store`),
never in the shards. Every change is a POST of a urlencoded form that must carry the viewer's form
token (only its own pages hold it) and, where the browser says where it comes from, come from the
viewer's own origin: another site's page cannot flag on the user's behalf.
"""
from __future__ import annotations

import hmac
import re
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokencompose.schemas.curation import REASON_LIMIT, VIEW_NAME_PATTERN, CurationFileError
from tokencompose.viewer.filters import FIELDS, gallery_filters
from tokencompose.viewer.state import BadRequest, Conflict, NotFound, Sample, State

router = APIRouter()
FORM_LIMIT = 16 * 1024  # bytes of a form body
FORM_TYPE = "application/x-www-form-urlencoded"
SAME_SITE = ("same-origin", "none")  # Sec-Fetch-Site values of a request the viewer's own page (or the user) made


class Forbidden(StarletteHTTPException):
    def __init__(self, what: str):
        super().__init__(status_code=403, detail=what)


async def change_form(request: Request, state: State) -> dict[str, str]:
    """The fields of a form that changes something, once it is known to come from the viewer's own page."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in SAME_SITE:
        raise Forbidden("Changes are only accepted from the viewer's own pages.")
    origin = request.headers.get("origin")
    # under the viewer's Referrer-Policy no-referrer, the browser sends "Origin: null" from its own pages too;
    # then only Sec-Fetch-Site can say where the form comes from
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is not None and origin != own and not (origin == "null" and site == "same-origin"):
        raise Forbidden("Changes are only accepted from the viewer's own pages.")
    if request.headers.get("content-type", "").split(";")[0].strip() != FORM_TYPE:
        raise BadRequest("Send the form as application/x-www-form-urlencoded.")
    body = await request.body()
    if len(body) > FORM_LIMIT:
        raise BadRequest("The form is too large.")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("The form is not UTF-8.") from None
    fields = {name: values[-1] for name, values in parsed.items()}
    if not hmac.compare_digest(fields.pop("token", "").encode(), state.form_token.encode()):
        raise Forbidden("The form is stale or not from this viewer: reload the page and try again.")
    return fields


def noun_field(value: str, noun_count: int) -> int | None:
    """The form's ``noun``: empty for the whole sample, else a noun index of the record."""
    if value == "":
        return None
    if not value.isascii() or not value.isdigit() or int(value) >= noun_count:
        raise BadRequest("There is no such noun in this sample.")
    return int(value)


def written(action):
    """Run a change of a curation file; a file that cannot be read as one is a 409 naming it and the line."""
    try:
        return action()
    except CurationFileError as error:
        raise Conflict(f"Nothing was changed: {error}") from None


@router.post("/sample/{key}/flag")
async def flag(entry: Sample, state: State, request: Request) -> RedirectResponse:
    fields = await change_form(request, state)
    noun = noun_field(fields.get("noun", ""), entry.noun_count)
    reason = " ".join(fields.get("reason", "").split())
    if not reason or len(reason) > REASON_LIMIT:
        raise BadRequest(f"Give a reason of 1 to {REASON_LIMIT} characters.")
    noun_text = entry.noun_texts[noun] if noun is not None else None
    written(lambda: state.flags.flag(entry.key, reason, noun=noun, noun_text=noun_text))
    return RedirectResponse(f"/sample/{entry.key}#flags", status_code=303)


@router.post("/sample/{key}/unflag")
async def unflag(entry: Sample, state: State, request: Request) -> RedirectResponse:
    fields = await change_form(request, state)
    noun = noun_field(fields.get("noun", ""), entry.noun_count)
    written(lambda: state.flags.unflag(entry.key, noun))
    return RedirectResponse(f"/sample/{entry.key}#flags", status_code=303)


@router.post("/views")
async def save_view(state: State, request: Request) -> RedirectResponse:
    fields = await change_form(request, state)
    name = fields.get("name", "").strip()
    if not re.fullmatch(VIEW_NAME_PATTERN, name):
        raise BadRequest("A view name is 1 to 64 letters, digits, '-' or '_', starting with a letter or digit.")
    given = {k: v for k, v in fields.items() if k in FIELDS}
    filters = gallery_filters(state, **given, page="1")  # refuses names the dataset does not have, as the gallery does
    written(lambda: state.views.save(name, filters.form))
    return RedirectResponse("/views", status_code=303)


@router.post("/views/{name}/delete")
async def delete_view(name: str, state: State, request: Request) -> RedirectResponse:
    await change_form(request, state)
    if not written(lambda: state.views.delete(name)):
        raise NotFound()
    return RedirectResponse("/views", status_code=303)


@router.get("/views", response_class=HTMLResponse)
def views(state: State) -> HTMLResponse:
    try:
        saved, problem = state.views.read(), None
    except CurationFileError as error:
        saved, problem = [], str(error)
    rows = [{"view": v, "url": f"/views/{v.name}", "filters": filters_text(v.filters)} for v in saved]
    return state.pages.render("views.html", title="Saved views", rows=rows, problem=problem,
                              form_token=state.form_token)


@router.get("/views/{name}")
def open_view(name: str, state: State) -> RedirectResponse:
    view = written(lambda: state.views.get(name))
    if view is None:
        raise NotFound()
    ordered = {k: view.filters[k] for k in FIELDS if view.filters.get(k)}
    return RedirectResponse("/" + ("?" + urlencode(ordered) if ordered else ""), status_code=303)


def filters_text(filters: dict[str, str]) -> str:
    return ", ".join(f"{k}={filters[k]}" for k in FIELDS if filters.get(k)) or "all samples"
