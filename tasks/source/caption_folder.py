"""A folder of images with a captions file as a build source (``folder:DIR`` or ``folder:CAPTIONS_FILE``).

The captions file is ``captions.jsonl`` or ``captions.csv`` in DIR (one of them), or the file named;
image paths in it are relative to its folder. JSON Lines: one object per line, the image path in
``source.image_column`` and a caption or a list of candidate captions in ``source.caption_column``.
CSV (with a header): one caption per row. The file is read line by line, never whole; a line that is
not a JSON object becomes a row without image (a rejects row naming the line).
"""
from __future__ import annotations

import csv
import json
from itertools import islice
from pathlib import Path
from typing import Iterator

from tokencompose.schemas.config import SourceConfig
from tokencompose.schemas.reasons import RejectReason
from tokencompose.tasks.source.coco_json import SourceError
from tokencompose.tasks.source.images import ImageProblem, image_path
from tokencompose.tasks.source.dataset_rows import RawRow

CAPTION_FILES = ("captions.jsonl", "captions.csv")


class CaptionFolder:
    """The rows of a captions file in line order; the locator is the image path as written there."""

    def __init__(self, location: str, source: SourceConfig):
        self.location = Path(location).expanduser()
        self.source = source
        self.description = f"folder {location}"
        self._file: Path | None = None

    def captions_file(self) -> Path:
        if self._file is None:
            self._file = self._find()
        return self._file

    def _find(self) -> Path:
        if self.location.is_file():
            return self.location
        if not self.location.is_dir():
            raise SourceError(f"{self.location} does not exist")
        found = [self.location / name for name in CAPTION_FILES if (self.location / name).is_file()]
        if len(found) != 1:
            raise SourceError(f"{self.location} must hold one of {' or '.join(CAPTION_FILES)} "
                              f"({'both' if found else 'neither'} found); or name the captions file")
        return found[0]

    @property
    def root(self) -> Path:
        return self.captions_file().parent

    def check(self) -> None:
        path = self.captions_file()
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8", errors="replace") as handle:
                header = next(csv.reader(handle), [])
            wanted = [c for c in (self.source.image_column, self.source.caption_column, self.source.key_column) if c]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise SourceError(f"{path} has no column {missing[0]!r} (source.image_column / caption_column / "
                                  f"key_column); its header: {', '.join(header) or '(empty)'}")
        elif path.suffix.lower() == ".jsonl":
            first = next((entry for _, entry in _jsonl_rows(path) if entry is not None), None)
            missing = [c for c in (self.source.image_column, self.source.caption_column)
                       if first is not None and c not in first]
            if missing:
                raise SourceError(f"{path}: its first object has no key {missing[0]!r} (source.image_column / "
                                  f"caption_column); its keys: {', '.join(first or {})}")
        else:
            raise SourceError(f"{path}: a captions file must be .jsonl or .csv")

    def rows(self) -> Iterator[RawRow]:
        return self.rows_between(0, None)

    def row_count(self) -> int:
        """The rows, counted without parsing a JSON line (a CSV file is parsed: a quoted cell may hold a newline)."""
        path = self.captions_file()
        lines = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_lines(path)
        return sum(1 for _ in lines)

    def content_fingerprint(self) -> str:
        stat = self.captions_file().stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def rows_between(self, start: int, stop: int | None) -> Iterator[RawRow]:
        """Rows ``start`` to ``stop - 1`` (to the end when None); earlier JSON lines are skipped unparsed."""
        path = self.captions_file()
        entries: Iterator[tuple[int, dict | None]]
        if path.suffix.lower() == ".csv":
            entries = islice(_csv_rows(path), start, stop)
        else:
            entries = ((line, _json_object(text)) for line, text in islice(_jsonl_lines(path), start, stop))
        for position, (line, entry) in enumerate(entries, start=start):
            if entry is None:
                yield RawRow(position, f"{path.name}:{line}", False, None, problem=f"line {line} is not a JSON object")
                continue
            image = entry.get(self.source.image_column)
            caption = entry.get(self.source.caption_column)
            captions = None if caption is None else tuple(caption) if isinstance(caption, list) else (caption,)
            has_image = isinstance(image, str) and bool(image)
            key = entry.get(self.source.key_column) if self.source.key_column else None
            url = entry.get(self.source.url_column) if self.source.url_column else None
            locator = image if isinstance(image, str) and image else f"{path.name}:{line}"
            yield RawRow(position, locator, has_image, captions,
                         None if key is None else str(key), url if isinstance(url, str) and url else None)

    def read_image(self, locator: str) -> bytes:
        path = image_path(self.root, locator)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageProblem(RejectReason.MISSING_FILE, str(path)) from None
        except IsADirectoryError:
            raise ImageProblem(RejectReason.UNREADABLE_FILE, f"{path} is not a regular file") from None
        except OSError as error:
            raise ImageProblem(RejectReason.UNREADABLE_FILE, f"{path}: {error.strerror or error}") from None

    def fingerprint(self, locator: str) -> str:
        try:
            stat = image_path(self.root, locator).stat()
        except (ImageProblem, OSError):
            return f"missing:{locator}"
        return f"{stat.st_size}:{stat.st_mtime_ns}:{locator}"


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | None]]:
    return ((line_no, _json_object(line)) for line_no, line in _jsonl_lines(path))


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The non-blank lines (one row each) with their line numbers."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                yield line_no, line


def _json_object(line: str) -> dict | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict | None]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            # an empty cell is a missing value, as in a JSON line without the key
            yield reader.line_num, {k: v for k, v in row.items() if k is not None and v not in (None, "")}
