"""A Hugging Face dataset as a build source (``hf:NAME[#split]``): a folder written by ``save_to_disk``,
or a hub dataset already in the local cache (read offline; nothing is downloaded here).

The dataset's Arrow files are memory-mapped: listing rows reads only the caption, key and URL columns
and the image column's validity, in batches; an image's bytes are read when its shard is built. The
image column may be a ``datasets.Image`` feature (its encoded bytes, or a file path), raw bytes, or a
path string; the caption column a string or a list of candidate captions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from tokencompose.schemas.config import SourceConfig
from tokencompose.schemas.reasons import RejectReason
from tokencompose.tasks.source.coco_json import SourceError
from tokencompose.tasks.source.images import ImageProblem
from tokencompose.tasks.source.dataset_rows import RawRow

BATCH_ROWS = 4096
ROW_PREFIX = "row-"


class HfDataset:
    """Rows of one split of a Hugging Face dataset; the locator of row N is ``row-N``."""

    def __init__(self, location: str, source: SourceConfig):
        name, _, split = location.partition("#")
        self.name, self.split = name, split or None
        self.source = source
        self.description = f"hf dataset {name}" + (f" (split {split})" if split else "")
        self._dataset: Any = None

    def check(self) -> None:
        self._open()

    def rows(self) -> Iterator[RawRow]:
        return self.rows_between(0, self.row_count())

    def row_count(self) -> int:
        return self._open().num_rows

    def content_fingerprint(self) -> str:
        return str(self._open()._fingerprint)

    def rows_between(self, start: int, stop: int) -> Iterator[RawRow]:
        """Rows ``start`` to ``stop - 1``: a contiguous selection of the memory-mapped table, no row before read."""
        import pyarrow.compute as pc

        dataset = self._open()
        source = self.source
        columns = [source.image_column, source.caption_column]
        columns += [c for c in (source.key_column, self._url_column()) if c and c not in columns]
        stop = min(stop, dataset.num_rows)
        position = start
        if start >= stop:
            return
        chosen = dataset.select_columns(columns).select(range(start, stop))
        for table in chosen.with_format("arrow").iter(batch_size=BATCH_ROWS):
            has_image = _has_image(table.column(source.image_column), pc).to_pylist()
            captions = table.column(source.caption_column).to_pylist()
            keys = table.column(source.key_column).to_pylist() if source.key_column else [None] * len(captions)
            url_column = self._url_column()
            urls = table.column(url_column).to_pylist() if url_column else [None] * len(captions)
            for present, caption, key, url in zip(has_image, captions, keys, urls):
                values = None if caption is None else tuple(caption) if isinstance(caption, list) else (caption,)
                yield RawRow(position, f"{ROW_PREFIX}{position}", bool(present), values,
                             None if key is None else str(key), url if isinstance(url, str) else None)
                position += 1

    def read_image(self, locator: str) -> bytes:
        value = self._open()[int(locator[len(ROW_PREFIX):])][self.source.image_column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and value:
            try:
                return Path(value).read_bytes()
            except FileNotFoundError:
                raise ImageProblem(RejectReason.MISSING_FILE, f"{locator}: {value}") from None
            except OSError as error:
                raise ImageProblem(RejectReason.UNREADABLE_FILE, f"{locator}: {value}: {error.strerror}") from None
        raise ImageProblem(RejectReason.NOT_AN_IMAGE, f"{locator}: the image column holds {type(value).__name__}")

    def fingerprint(self, locator: str) -> str:
        return f"{self._open()._fingerprint}:{locator}"

    def _url_column(self) -> str | None:
        column = self.source.url_column
        return column if column and column in self._open().column_names else None

    def _open(self) -> Any:
        if self._dataset is None:
            self._dataset = self._load()
        return self._dataset

    def _load(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise SourceError("an hf source needs the datasets package: pip install 'datasets>=4,<5'") from None
        path = Path(self.name).expanduser()
        if path.is_dir():
            try:
                loaded = datasets.load_from_disk(str(path))
            except (FileNotFoundError, ValueError) as error:
                raise SourceError(f"{path} is not a folder written by datasets' save_to_disk ({_first_line(error)})"
                                  ) from None
        elif path.exists() or self.name.startswith((".", "/", "~")):
            raise SourceError(f"{path} is not a dataset folder" if path.exists() else f"{path} does not exist")
        else:
            loaded = self._load_cached(datasets)
        if isinstance(loaded, datasets.DatasetDict):
            if self.split not in loaded:
                raise SourceError(f"{self.description} has the splits {', '.join(loaded)}: name one, e.g. "
                                  f"hf:{self.name}#{next(iter(loaded), 'train')}")
            loaded = loaded[self.split]
        return self._checked(loaded, datasets)

    def _load_cached(self, datasets: Any) -> Any:
        import os

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        try:
            return datasets.load_dataset(self.name, split=self.split)
        except Exception as error:  # the hub library raises many kinds (offline, gated, missing, no such split)
            where = "is not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1)" if offline else \
                "could not be loaded from the Hugging Face cache or hub (missing, gated or no access)"
            raise SourceError(f"hub dataset {self.name!r:.120} {where}: {_first_line(error)}") from None

    def _checked(self, dataset: Any, datasets: Any) -> Any:
        source = self.source
        named = [("source.image_column", source.image_column), ("source.caption_column", source.caption_column)]
        named += [("source.key_column", source.key_column)] if source.key_column else []
        for field, column in named:
            if column not in dataset.column_names:
                raise SourceError(f"{self.description} has no column {column!r} ({field}); its columns: "
                                  f"{', '.join(dataset.column_names)}")
        feature = dataset.features[source.image_column]
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(source.image_column, datasets.Image(decode=False))
        return dataset


def _has_image(column: Any, pc: Any) -> Any:
    """Per row: whether the image column holds bytes or a path (without reading the bytes)."""
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        names = [column.type.field(i).name for i in range(column.type.num_fields)]
        present = [pc.is_valid(pc.struct_field(column, name)) for name in names if name in ("bytes", "path")]
        if not present:
            return pc.is_valid(column)
        any_present = present[0] if len(present) == 1 else pc.or_(present[0], present[1])
        return pc.and_(pc.is_valid(column), any_present)
    return pc.is_valid(column)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
