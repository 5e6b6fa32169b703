"""Jinja2 templates (autoescaped) and the viewer's own static files."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tokencompose.schemas.reasons import NounReason, RejectReason, reason_help
from tokencompose.viewer import render
from tokencompose.viewer.catalog import Catalog

HERE = Path(__file__).resolve().parent
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}

# How the boxes a noun carries were made, by the source of its mask (schemas.sample.Noun.source):
# "{box}" stands for "box" or "boxes". The human grounding (tasks/grounding/human.py) writes the first four,
# and joins them with "+" for a noun whose instances come from several sources.
BOX_KINDS = {"coco_annotations": "COCO annotation {box}", "lvis_annotations": "LVIS annotation {box}",
             "lvis_annotations_not_exhaustive": "LVIS annotation {box} (not exhaustive)",
             "stuff_annotations": "COCO-Stuff annotation {box}", "grounded_sam": "Grounding DINO {box}",
             "hybrid": "Grounding DINO {box}"}
_BOX_SOURCES = {"coco_annotations": "COCO", "lvis_annotations": "LVIS",
                "lvis_annotations_not_exhaustive": "LVIS (not exhaustive)", "stuff_annotations": "COCO-Stuff"}


def box_kind(source: str | None, count: int = 1) -> str:
    box = "box" if count == 1 else "boxes"
    parts = (source or "").split("+")
    if len(parts) > 1 and all(p in _BOX_SOURCES for p in parts):  # e.g. coco_annotations+lvis_annotations
        return f"{' + '.join(_BOX_SOURCES[p] for p in parts)} annotation {box}"
    if source in BOX_KINDS:
        return BOX_KINDS[source].replace("{box}", box)
    return f"{source} {box}" if source else box


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda part, whole: f"{100.0 * part / whole:.1f}%" if whole else "–"
    env.filters["num"] = lambda value: f"{value:,}" if isinstance(value, int) else value
    env.filters["score"] = lambda value: "–" if value is None else f"{value:.3f}"
    env.filters["box"] = lambda box: ", ".join(f"{v:.1f}" for v in box)  # pixels, one decimal for every number
    env.globals["colour"] = render.colour
    env.globals["box_kind"] = box_kind
    env.globals["noun_reason_help"] = partial(reason_help, kind=NounReason)
    env.globals["reject_reason_help"] = partial(reason_help, kind=RejectReason)
    return env


class Pages:
    """Renders a template with what every page shows (the catalogue's progress, the dataset name)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.env = environment()

    def render(self, name: str, status: int = 200, **context) -> HTMLResponse:
        catalog = self.catalog
        context.setdefault("loading", None if catalog.finished.is_set()
                           else f"{catalog.shards_done} of {len(catalog.shards)} shards")
        context.setdefault("dataset_name", catalog.root.name)
        return HTMLResponse(self.env.get_template(name).render(**context), status_code=status)

    @staticmethod
    def static_files() -> dict[str, tuple[bytes, str]]:
        """The viewer's own CSS and JS, read once: /static/<name> can only ever return one of these."""
        files = {}
        for path in sorted((HERE / "static").iterdir()):
            if path.is_file() and path.suffix in STATIC_TYPES:
                files[path.name] = (path.read_bytes(), STATIC_TYPES[path.suffix])
        return files
