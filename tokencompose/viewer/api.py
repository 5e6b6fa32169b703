"""Machine-readable answers: a sample's JSON record and the filtered subset's keys."""
from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from tokencompose.viewer.catalog import SampleError
from tokencompose.viewer.filters import GalleryFilters, matching
from tokencompose.viewer.state import Sample, State

router = APIRouter()


@router.get("/sample/{key}/record.json")
def record_json(entry: Sample, state: State) -> Response:
    try:
        record = state.catalog.record(entry)
    except SampleError as error:
        return JSONResponse({"key": entry.key, "error": str(error)}, status_code=422)
    return Response(record.to_json_bytes(), media_type="application/json")


def _keys(state: State, filters) -> list[str]:
    return [entry.key for entry in matching(state, filters)]


@router.get("/export/keys.txt")
def export_text(state: State, filters: GalleryFilters) -> Response:
    """The keys of every sample the gallery's filters match (all pages), one per line."""
    keys = _keys(state, filters)
    return Response("".join(f"{key}\n" for key in keys), media_type="text/plain; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="keys.txt"'})


@router.get("/export/keys.json")
def export_json(state: State, filters: GalleryFilters) -> Response:
    """The same keys as JSON, with the dataset and the filters that chose them."""
    catalog = state.catalog
    keys = _keys(state, filters)
    body = {"dataset": str(catalog.root), "config_hash": catalog.manifest.config_hash if catalog.manifest else None,
            "filters": {k: v for k, v in filters.form.items() if k != "per_page"},
            "complete": catalog.finished.is_set(), "count": len(keys), "keys": keys}
    return Response(json.dumps(body, indent=1), media_type="application/json",
                    headers={"Content-Disposition": 'attachment; filename="keys.json"'})
