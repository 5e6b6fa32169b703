"""The HTML pages: the gallery, one sample, the dataset, the rejected images."""
from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from tokencompose.viewer import render
from tokencompose.viewer.catalog import SORTS, Entry, SampleError
from tokencompose.viewer.filters import FLAGGED, PER_PAGE, GalleryFilters, int_or_none, matching
from tokencompose.viewer.state import BadRequest, NotFound, Sample, State, plain_number

router = APIRouter(default_response_class=HTMLResponse)
REJECTS_PER_PAGE = 50


@router.get("/")
def gallery(state: State, filters: GalleryFilters) -> HTMLResponse:
    catalog = state.catalog
    found = matching(state, filters)
    flags, flags_problem = state.flag_index()
    size = filters.size
    pages = max(1, math.ceil(len(found) / size))
    number = min(filters.page, pages)
    shown = found[(number - 1) * size:number * size]
    cards = [{"entry": e, "nouns": list(enumerate(e.noun_texts)), "shard": catalog.shards[e.shard].name,
              "flags": flags.get(e.key, {})} for e in shown]
    return state.pages.render(
        "gallery.html", title="Samples", cards=cards, total=len(catalog.entries), matched=len(found),
        page_number=number, pages=pages, page_url=lambda n: filters.url("/", page=n), form=filters.form,
        shards=catalog.shards, per_page_choices=PER_PAGE, size=size, error_count=catalog.error_count,
        labels={kind: sorted(values[1:]) for kind, values in catalog.labels.items()}, sorts=SORTS,
        export_txt=filters.url("/export/keys.txt"), export_json=filters.url("/export/keys.json"),
        noun_level=filters.query.noun_level, flagged_choices=FLAGGED, flags_problem=flags_problem,
        form_token=state.form_token)


@router.get("/sample/{key}")
def sample(entry: Sample, state: State) -> HTMLResponse:
    catalog = state.catalog
    previous, following = catalog.neighbours(entry)
    context: dict[str, Any] = {"title": entry.key, "entry": entry, "shard": catalog.shards[entry.shard].name,
               "previous": previous, "following": following}
    try:
        record = catalog.record(entry)
    except SampleError as error:
        return state.pages.render("sample.html", error=str(error), image_readable=catalog.image_readable(entry),
                                  **context)
    problems = sample_problems(state, entry, record)
    flags, flags_problem = state.flag_index()
    marks = flags.get(entry.key, {})
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
                      "damaged": damaged, "flag": marks.get(index),
                      "box_style": box_style(noun.box, record.width, record.height) if noun.box else None,
                      "boxes": [dict(row, style=box_style(row["box"], record.width, record.height))
                                for row in box_rows]})
    candidates = sorted(record.candidates, key=lambda c: (c.score is None, -(c.score or 0.0)))
    training, training_problem = None, None
    if state.training.loading:
        training_problem = "The tokenizer is still loading (seconds, once per start): reload for the token view."
    else:
        training, training_problem = training_view(state, entry, record)
    return state.pages.render(
        "sample.html", error=None, record=record, nouns=nouns, segments=caption_segments(record),
        candidates=candidates, pixels=record.width * record.height, training=training,
        training_problem=training_problem, problems=problems, sample_flag=marks.get(None), flags_problem=flags_problem,
        flagged_nouns=[n for n in nouns if n["flag"] is not None], form_token=state.form_token,
        provenance=json.dumps(record.provenance.model_dump(mode="json"), indent=1, sort_keys=True), **context)


@router.get("/dataset")
def dataset(state: State) -> HTMLResponse:
    catalog, derived = state.catalog, state.derived
    stats, stats_problem = catalog.stats()
    if stats is None and catalog.finished.is_set():
        if "stats" not in derived:
            derived["stats"] = stats_from_catalog(catalog.entries)
        stats = derived["stats"]
    if "rejects" not in derived:
        derived["rejects"] = catalog.rejects()
    rejects = derived["rejects"]
    nouns = int(stats.get("nouns", 0)) if stats else 0
    with_mask = int(stats.get("nouns_with_mask", 0)) if stats else 0
    per_caption = sorted(((int(k), v) for k, v in (stats or {}).get("nouns_per_caption", {}).items()))
    return state.pages.render(
        "dataset.html", title="Dataset", stats=stats, stats_problem=stats_problem, rejects=rejects,
        nouns=nouns, with_mask=with_mask, per_caption=per_caption,
        per_caption_max=max((v for _, v in per_caption), default=0),
        top_with=top((stats or {}).get("noun_texts_with_mask", {})),
        top_without=top((stats or {}).get("noun_texts_without_mask", {})),
        by_reason=sorted((stats or {}).get("nouns_without_mask_by_reason", {}).items(), key=lambda kv: -kv[1]),
        manifest=catalog.manifest, shards=catalog.shards, problems=catalog.problems,
        entries=len(catalog.entries), error_count=catalog.error_count,
        provenance=json.dumps(catalog.manifest.provenance, indent=1, sort_keys=True) if catalog.manifest else None)


@router.get("/rejects")
def rejects(state: State, reason: str = "", stage: str = "", page: str = "1") -> HTMLResponse:
    table = state.rejects.read()
    if reason and reason not in table.by_reason:
        raise BadRequest("There is no such reject reason in this dataset.")
    if stage and stage not in table.by_stage:
        raise BadRequest("There is no such stage in this dataset.")
    rows = [(i, r) for i, r in enumerate(table.rows)
            if (not reason or r.reason == reason) and (not stage or r.stage == stage)]
    pages = max(1, math.ceil(len(rows) / REJECTS_PER_PAGE))
    number = min(int_or_none(page, 1, 10**9) or 1, pages)
    shown = [(i, r, state.rejects.image_path(r) is not None)
             for i, r in rows[(number - 1) * REJECTS_PER_PAGE:number * REJECTS_PER_PAGE]]
    form = {k: v for k, v in (("reason", reason), ("stage", stage)) if v}
    return state.pages.render(
        "rejects.html", title="Rejected images", table=table, shown=shown, matched=len(rows), form=form,
        page_number=number, pages=pages, images_dir=state.rejects.images_dir,
        images_problem=state.rejects.images_problem)


@router.get("/rejects/{row}")
def reject(row: str, state: State) -> HTMLResponse:
    number = plain_number(row)
    found = state.rejects.get(number)
    if found is None:
        raise NotFound()
    total = len(state.rejects.read().rows)
    return state.pages.render(
        "reject.html", title=f"Rejected: {found.file_name or found.image_id or number}", row=number, reject=found,
        has_image=state.rejects.image_path(found) is not None, images_problem=state.rejects.images_problem,
        previous=number - 1 if number > 0 else None, following=number + 1 if number + 1 < total else None)


def sample_problems(state: State, entry: Entry, record) -> list[str]:
    """What is wrong with a readable record beyond its JSON: an image whose header disagrees with the
    record's size or is past the decode limits (read from the header, nothing decoded), and the same
    key in other shards."""
    problems = []
    try:
        width, height = render.image_size(state.catalog.image_bytes(entry)[0])
    except SampleError as error:
        problems.append(f"the image member cannot be read: {error}")
    except render.RenderError as error:
        problems.append(str(error))
    else:
        if (width, height) != (record.width, record.height):
            problems.append(f"the record says the image is {record.width}x{record.height} pixels, the image is "
                            f"{width}x{height}: masks and boxes are drawn at the record's size")
        too_big = render.size_problem(width, height)
        if too_big:
            problems.append(too_big)
    for shard in state.catalog.duplicates.get(entry.key, []):
        problems.append(f"key {entry.key} appears again in {shard}; that sample is not shown")
    return problems


def training_view(state: State, entry: Entry, record):
    """(what training sees of the sample, None) or (None, why it cannot be shown)."""
    try:
        image = state.catalog.image_bytes(entry)[0]
    except SampleError:
        image = None
    try:
        return state.training.for_sample(entry.key, record, image), None
    except RuntimeError as error:  # the tokenizer is unavailable
        return None, str(error)


def box_style(box, width: int, height: int) -> str:
    x, y, w, h = box
    if width <= 0 or height <= 0:
        return "display:none"
    return (f"left:{100 * x / width:.3f}%;top:{100 * y / height:.3f}%;"
            f"width:{100 * w / width:.3f}%;height:{100 * h / height:.3f}%")


def caption_segments(record) -> list[tuple[str, int | None]]:
    """The caption cut into (text, noun index or None); overlapping spans keep the first noun."""
    segments: list[tuple[str, int | None]] = []
    position = 0
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


def top(counts: dict, limit: int = 25) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def stats_from_catalog(entries: list[Entry]) -> dict:
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
