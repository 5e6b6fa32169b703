"""Pictures and files: a sample's image, thumbnail and mask overlays, the training view's crop and
per-resolution masks, a rejected image from the source folder, and the viewer's own CSS/JS."""
from __future__ import annotations

import io

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from PIL import Image

from tokencompose.tasks.grounding.masks import decode
from tokencompose.viewer import render
from tokencompose.viewer.catalog import SampleError
from tokencompose.viewer.state import NotFound, Sample, State, plain_number

router = APIRouter()
CACHED = {"Cache-Control": "private, max-age=3600"}


@router.get("/sample/{key}/image")
def image(entry: Sample, state: State) -> Response:
    try:
        data, media_type = state.catalog.image_bytes(entry)
    except SampleError:
        raise NotFound() from None
    return Response(data, media_type=media_type, headers=CACHED)


@router.get("/sample/{key}/thumb.jpg")
def thumb(entry: Sample, state: State) -> Response:
    def make() -> bytes:
        data, _ = state.catalog.image_bytes(entry)
        return render.thumbnail(data)

    try:
        return Response(state.thumbs.get_or_make(entry.key, make), media_type="image/jpeg", headers=CACHED)
    except (SampleError, render.RenderError):
        return Response(render.broken_thumbnail(), media_type="image/png", headers={"X-Viewer-Error": "1"})


@router.get("/sample/{key}/thumb-masks.png")
def thumb_masks(entry: Sample, state: State) -> Response:
    """Every intact mask of the sample in one thumbnail-sized PNG, each noun in its colour."""
    if entry.error or not entry.masked:
        raise NotFound()

    def make() -> bytes:
        record = state.catalog.record(entry)
        return masks_thumbnail(record)

    try:
        data = state.thumbs.get_or_make(("masks", entry.key), make)
    except (SampleError, render.RenderError):
        raise NotFound() from None
    return Response(data, media_type="image/png", headers=CACHED)


def masks_thumbnail(record, size: int = render.THUMB_SIZE) -> bytes:
    width, height = record.width, record.height
    if width <= 0 or height <= 0 or width * height > render.MAX_MASK_PIXELS:
        raise render.RenderError("the image size is out of range")
    scale = min(1.0, size / max(width, height))
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = np.zeros((small[1], small[0]), dtype=np.uint8)
    palette = [0, 0, 0]
    drawn = 0
    for index, noun in enumerate(record.nouns):
        if noun.mask is None:
            palette += [0, 0, 0]
            continue
        palette += list(render.rgb(render.colour(index)))
        rle = noun.mask.model_dump()
        try:
            render.rle_counts(rle)
        except render.RenderError:
            continue  # a damaged mask is not drawn
        mask = Image.fromarray(decode(rle).astype(np.uint8) * 255).resize(small, Image.Resampling.BOX)
        canvas[np.asarray(mask) >= 128] = min(index + 1, 255)
        drawn += 1
    if not drawn:
        raise render.RenderError("no intact mask")
    image = Image.fromarray(canvas, mode="L").convert("P")
    image.putpalette((palette + [0, 0, 0] * 256)[:768])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0, optimize=True)
    return buffer.getvalue()


@router.get("/sample/{key}/mask/{index}.png")
def mask(entry: Sample, index: int, state: State) -> Response:
    if index < 0 or index >= entry.noun_count or not entry.noun_has_mask(index) or entry.error:
        raise NotFound()

    def make() -> bytes:
        noun = state.catalog.record(entry).nouns[index]
        if noun.mask is None:
            raise render.RenderError("the noun has no mask")
        return render.mask_png(noun.mask.model_dump(), render.colour(index))

    try:
        data = state.masks.get_or_make((entry.key, index), make)
    except (SampleError, render.RenderError, IndexError, AttributeError):
        raise NotFound() from None
    return Response(data, media_type="image/png", headers=CACHED)


def _training(entry, state: State):
    if state.training.loading:
        raise StarletteHTTPException(status_code=503, detail="The tokenizer is still loading.")
    try:
        record = state.catalog.record(entry)
        try:
            data = state.catalog.image_bytes(entry)[0]
        except SampleError:
            data = None
        return state.training.for_sample(entry.key, record, data)
    except (SampleError, RuntimeError):
        raise NotFound() from None


@router.get("/sample/{key}/training/crop.jpg")
def training_crop(entry: Sample, state: State) -> Response:
    """The square crop training feeds the VAE (the reference resize), as a JPEG."""
    view = _training(entry, state)
    if view.crop is None:
        raise NotFound()
    return Response(view.crop, media_type="image/jpeg", headers=CACHED)


@router.get("/sample/{key}/training/mask/{index}/{resolution}.png")
def training_mask(entry: Sample, index: str, resolution: str, state: State) -> Response:
    """Noun ``index``'s mask at one attention resolution, as the loss gets it (r x r pixels)."""
    wanted = (plain_number(index, 10_000), plain_number(resolution, 4096))
    if entry.error or wanted[0] >= entry.noun_count or not entry.noun_has_mask(wanted[0]):
        raise NotFound()
    data = _training(entry, state).masks.get(wanted)
    if data is None:
        raise NotFound()
    return Response(data, media_type="image/png", headers=CACHED)


@router.get("/rejects/{row}/image")
def reject_image(row: str, state: State) -> Response:
    found = state.rejects.get(plain_number(row))
    image = state.rejects.image_bytes(found) if found is not None else None
    if image is None:
        raise NotFound()
    return Response(image[0], media_type=image[1], headers=CACHED)


@router.get("/rejects/{row}/thumb.jpg")
def reject_thumb(row: str, state: State) -> Response:
    number = plain_number(row)
    found = state.rejects.get(number)
    if found is None or state.rejects.image_path(found) is None:
        raise NotFound()

    def make() -> bytes:
        image = state.rejects.image_bytes(found)
        if image is None:
            raise render.RenderError("the file went away")
        return render.thumbnail(image[0])

    try:
        return Response(state.thumbs.get_or_make(("reject", number), make), media_type="image/jpeg",
                        headers=CACHED)
    except render.RenderError:
        return Response(render.broken_thumbnail(), media_type="image/png", headers={"X-Viewer-Error": "1"})


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)


@router.get("/static/{name}")
def static_file(name: str, state: State) -> Response:
    if name not in state.static:
        raise NotFound()
    data, media_type = state.static[name]
    return Response(data, media_type=media_type, headers={"Cache-Control": "no-cache"})
