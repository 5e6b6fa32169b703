"""Image-caption datasets beyond COCO behind one interface: a Hugging Face dataset (``hf:``), img2dataset
WebDataset shards (``wds:``) and a folder of images with a captions file (``folder:``).

A :class:`DatasetSource` streams :class:`RawRow` s in a fixed order (the row order of the dataset, the
shards' order, the captions file's line order) without listing the source first, and reads one image's
bytes on demand. :func:`dataset_records` turns the rows into the build's ``ImageRecord`` s (image id =
the row's position, so rows appended later keep every earlier id) and ``Reject`` rows (no image, a key or
URL seen before); captions that are not text, or not in the Latin script the noun taggers read, are
kept with their problem and excluded by the caption stage. Image sizes are unknown until an image is
decoded (``width``/``height`` 0 in the record). A problem with the dataset as a whole (missing, a column
that does not exist, a hub dataset not in the cache while offline) raises ``SourceError`` before work.

A build of a whole source (no ``selection.keys_file``, no ``selection.limit``) is planned as row ranges
(:func:`plans_row_ranges`): only the number of rows is read before work, and each shard task turns its
own rows into records and rejects (:func:`range_records`), so duplicate keys and URLs are found within a
shard (docs/scale-out.md, "The plan of a dataset source").
"""
from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator

from tokencompose.schemas.config import BuildConfig, SourceConfig
from tokencompose.schemas.reasons import RejectReason
from tokencompose.schemas.records import Caption, ImageRecord
from tokencompose.schemas.reports import Reject
from tokencompose.tasks.source.coco_json import SOURCE_STAGE, SourceError, is_text, json_type
from tokencompose.tasks.source.dataset_rows import DatasetSource, RawRow, RowRange

# The grounding backends that need no human annotations, and so can mask a dataset source.
MASKING_BACKENDS = ("grounded_sam",)


def open_dataset(source: SourceConfig) -> DatasetSource:
    """The dataset a source configuration names, opened once per process (shard tasks share it)."""
    return _open(source.model_dump_json())


@functools.lru_cache(maxsize=8)
def _open(source_json: str) -> DatasetSource:
    source = SourceConfig.model_validate_json(source_json)
    kind, _, location = (source.dataset or "").partition(":")
    if kind == "hf":
        from tokencompose.tasks.source.hf_dataset import HfDataset

        return HfDataset(location, source)
    if kind == "wds":
        from tokencompose.tasks.source.webdataset_source import WebDatasetShards

        return WebDatasetShards(location, source)
    from tokencompose.tasks.source.caption_folder import CaptionFolder

    return CaptionFolder(location, source)


def dataset_problems(config: BuildConfig) -> list[str]:
    """One line per reason this dataset source cannot be built with this configuration (no row read)."""
    kind = config.source.dataset_kind
    problems = []
    grounding = config.backend("grounding")
    if grounding not in MASKING_BACKENDS:
        problems.append(f"source.dataset: profile {config.profile!r} masks nouns with {grounding!r}, which needs human "
                        f"annotations a {kind} source does not have: use --profile paper (Grounded-SAM masks)")
    if config.selection.policy == "vsr":
        problems.append("selection.policy vsr names COCO images: use policy all with a dataset source")
    try:
        open_dataset(config.source).check()
    except SourceError as error:
        problems.append(f"source.dataset: {error}")
    return problems


def script_problem(text: str) -> str | None:
    """Why a caption cannot go to the English noun taggers: most of its letters are not Latin."""
    letters = [c for c in text if c.isalpha()]
    scripts = Counter(unicodedata.name(c, "UNKNOWN").split(" ")[0] for c in letters)
    if not letters or scripts["LATIN"] * 2 >= len(letters):
        return None
    script = scripts.most_common(1)[0][0].lower()
    return f"not in the Latin script (mostly {script}); the noun taggers read English"


def _captions(values: tuple[object, ...]) -> tuple[Caption, ...]:
    captions = []
    for index, value in enumerate(values):
        if not is_text(value):
            what = "a string that is not valid Unicode" if isinstance(value, str) else json_type(value)
            captions.append(Caption(index, "", problem=f"not text ({what})"))
        else:
            captions.append(Caption(index, value, problem=script_problem(value)))
    return tuple(captions)


def dataset_records(source: DatasetSource, rows: Iterable[RawRow] | None = None) -> Iterator[ImageRecord | Reject]:
    """The rows (default: every row of the source) as image records, in order, and a rejects row for
    each row that cannot be one.

    Keys and URLs seen are kept as 64-bit hashes (about 100 bytes each in a Python set) to find
    duplicates among these rows; the first row with a key or URL is kept."""
    keys: set[int] = set()
    urls: set[int] = set()
    for row in source.rows() if rows is None else rows:
        def reject(reason: RejectReason, detail: str) -> Reject:
            return Reject(image_id=row.position, file_name=row.locator, stage=SOURCE_STAGE, reason=reason,
                          detail=f"{source.description} row {row.position}: {detail}")

        if not row.has_image:
            yield reject(row.reason, row.problem or "no image")
            continue
        key = row.key if row.key is not None else row.locator
        if _seen(keys, key):
            yield reject(RejectReason.DUPLICATE_KEY, f"key {key!r:.120} repeats an earlier row's")
            continue
        if row.url and _seen(urls, row.url):
            yield reject(RejectReason.DUPLICATE_URL, f"url {row.url!r:.200} repeats an earlier row's")
            continue
        yield ImageRecord(row.position, row.locator, 0, 0, _captions(row.captions or ()))


def _seen(seen: set[int], value: str) -> bool:
    import hashlib

    digest = int.from_bytes(hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    if digest in seen:
        return True
    seen.add(digest)
    return False


@dataclass
class DatasetSelection:
    images: list[ImageRecord]
    rejects: list[Reject]
    seen: int


def select_dataset_rows(config: BuildConfig, wanted: set[str] | None) -> DatasetSelection:
    """The rows a build takes from a dataset source, in order: those whose sample key or file name is
    in ``wanted`` (all when None), stopping after ``selection.limit`` images (the rest is never read)."""
    from tokencompose.schemas.sample import sample_key

    source = open_dataset(config.source)
    images: list[ImageRecord] = []
    rejects: list[Reject] = []
    seen = 0
    limit = config.selection.limit
    for item in dataset_records(source):
        seen += 1
        if isinstance(item, Reject):
            rejects.append(item)
        elif wanted is None or sample_key(item.image_id) in wanted or item.file_name in wanted:
            images.append(item)
            if limit is not None and len(images) >= limit:
                break
    return DatasetSelection(images, rejects, seen)


def first_rows(source: DatasetSource, count: int) -> list[ImageRecord | Reject]:
    """The first ``count`` records of a source (what a preview or a start-up check reads)."""
    return list(islice(dataset_records(source), count))



def plans_row_ranges(config: BuildConfig) -> bool:
    """Whether a build's plan cuts the source into row ranges without reading its rows: a dataset source
    taken whole (a keys file or a limit needs the rows themselves to choose)."""
    selection = config.selection
    return bool(config.source.dataset) and selection.keys_file is None and selection.limit is None


def row_count(source: DatasetSource) -> int:
    """The number of rows: the source's own count where it has one, else every row streamed."""
    counter = getattr(source, "row_count", None)
    return counter() if counter is not None else sum(1 for _ in source.rows())


def rows_between(source: DatasetSource, rows: RowRange) -> Iterator[RawRow]:
    """The rows of a range: read from where they start where the source can, else streamed up to them."""
    reader = getattr(source, "rows_between", None)
    return reader(rows.start, rows.stop) if reader is not None else islice(source.rows(), rows.start, rows.stop)


def content_fingerprint(source: DatasetSource) -> str:
    """Changes when the source's rows may have changed, where the source can tell cheaply ("" otherwise)."""
    fingerprint = getattr(source, "content_fingerprint", None)
    return fingerprint() if fingerprint is not None else ""


def range_records(config: BuildConfig, rows: RowRange) -> tuple[list[ImageRecord], list[Reject]]:
    """A shard's rows as image records and rejects rows, in row order (what its task builds)."""
    records: list[ImageRecord] = []
    rejects: list[Reject] = []
    source = open_dataset(config.source)
    for item in dataset_records(source, rows_between(source, rows)):
        if isinstance(item, Reject):
            rejects.append(item)
        else:
            records.append(item)
    return records, rejects
