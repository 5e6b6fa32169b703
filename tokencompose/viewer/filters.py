"""The gallery's filters, read from the query string into a catalogue :class:`Query`.

Shared by the gallery and the key export, so an export holds exactly the samples the gallery shows.
Numbers that do not parse are ignored (as before); names that are not in the catalogue (a shard, a
category, a mask source, a reason, a sort order) are refused, and never echoed back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi import Query as Param

from tokencompose.viewer.catalog import SORTS, Entry, Query
from tokencompose.viewer.state import BadRequest, Conflict, NotFound, State

PER_PAGE = (24, 48, 96)
TEXT_LIMIT = 200
# the query parameters the gallery keeps in its links, in this order
FIELDS = ("q", "category", "source", "reason", "min_area", "max_area", "min_nouns", "max_nouns", "unmasked",
          "errors", "flagged", "shard", "sort", "per_page")
FLAGGED = {"any": "a flag (the sample or a mask)", "sample": "the sample flagged", "mask": "a mask flagged",
           "none": "no flag"}


def int_or_none(value: str | None, low: int = 0, high: int = 10_000) -> int | None:
    try:
        number = int(value) if value not in (None, "") else None
    except ValueError:
        return None
    return None if number is None else max(low, min(high, number))


def percent_or_none(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    if number is None or not math.isfinite(number):
        return None
    return max(0.0, min(100.0, number))


@dataclass
class Filters:
    query: Query
    form: dict[str, str]  # the parameters given, as given (for the form and the links)
    size: int  # per page
    page: int  # as asked (clamped later to the pages there are)
    flagged: str = ""  # a key of FLAGGED, or "" for no flag filter (flags change while the viewer runs:
    #                    applied after the cached catalogue search, see matching())

    def url(self, path: str = "/", **extra) -> str:
        from urllib.parse import urlencode

        params = {**self.form, **{k: v for k, v in extra.items() if v is not None}}
        return path + ("?" + urlencode(params) if params else "")


def gallery_filters(state: State, q: str = "", category: str = "", source: str = "", reason: str = "",
                    min_area: str = "", max_area: str = "", min_nouns: str = "", max_nouns: str = "",
                    unmasked: str = "", errors: str = "", flagged: str = "", shard: str = "", sort: str = "",
                    page: str = Param("1"), per_page: str = "24") -> Filters:
    catalog = state.catalog
    shard_number = None
    if shard:
        shard_number = catalog.shard_number(shard)
        if shard_number is None:
            raise NotFound()
    codes = {}
    for kind, value in (("category", category), ("source", source), ("reason", reason)):
        if value:
            code = catalog.label_code(kind, value)
            if code is None or code == 0:
                raise BadRequest(f"There is no such {kind} in this dataset.")
            codes[kind] = code
    if sort not in SORTS:
        raise BadRequest("Unknown sort order.")
    if flagged and flagged not in FLAGGED:
        raise BadRequest("Unknown flag filter.")
    query = Query(text=q[:TEXT_LIMIT], unmasked=bool(unmasked), errors=bool(errors),
                  min_nouns=int_or_none(min_nouns), max_nouns=int_or_none(max_nouns), shard=shard_number,
                  category=codes.get("category"), source=codes.get("source"), reason=codes.get("reason"),
                  min_area=percent_or_none(min_area), max_area=percent_or_none(max_area), sort=sort)
    given = dict(q=q[:TEXT_LIMIT], category=category, source=source, reason=reason, min_area=min_area,
                 max_area=max_area, min_nouns=min_nouns, max_nouns=max_nouns, unmasked=unmasked, errors=errors,
                 flagged=flagged, shard=shard, sort=sort, per_page=per_page)
    form = {name: given[name] for name in FIELDS if given[name]}
    size = int_or_none(per_page, 1, 200) or PER_PAGE[0]
    return Filters(query=query, form=form, size=size, page=int_or_none(page, 1, 10**9) or 1, flagged=flagged)


def matching(state: State, filters: Filters) -> list[Entry]:
    """The entries the filters match, in the gallery's order: the catalogue search, then the flag filter
    (read from the flags file on each request; one that cannot be read is a 409 naming its line)."""
    found = state.searches.search(filters.query)
    if not filters.flagged:
        return found
    flags, problem = state.flag_index()
    if problem:
        raise Conflict(f"The flag filter cannot be applied: {problem}")
    if filters.flagged == "none":
        return [e for e in found if e.key not in flags]
    wanted = {"any": lambda marks: True, "sample": lambda marks: None in marks,
              "mask": lambda marks: any(noun is not None for noun in marks)}[filters.flagged]
    return [e for e in found if e.key in flags and wanted(flags[e.key])]


GalleryFilters = Annotated[Filters, Depends(gallery_filters)]
