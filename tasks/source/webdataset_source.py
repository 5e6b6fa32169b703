"""WebDataset shards as img2dataset writes them as a build source (``wds:PATTERN``).

PATTERN names the tars with braces (``data/{00000..00099}.tar``) or a glob (``data/*.tar``, sorted);
every file it names must exist. A sample is the run of consecutive members sharing a key (the member
name up to the first dot of its base name): the image (``jpg``, ``jpeg``, ``png`` or ``webp``), the
caption (``txt``) and img2dataset's metadata (``json``: ``url``, ``caption``, ...). The caption is the
``.txt``; the ``.json``'s ``source.caption_column`` is used when it holds a list of candidates, or when
there is no ``.txt``. Tars are read as streams (only captions and metadata are read while listing);
an image is read later from its offset, found by a scan of its tar's headers kept once per process.

img2dataset writes ``NNNNN.parquet`` beside ``NNNNN.tar``: a row per URL it tried, with ``key``, ``status``
(``success``, ``failed_to_download``, ``failed_to_resize``) and ``error_message``. Its rows that did not
succeed are not in the tar; each becomes a row without image (a ``download_failed`` reject whose detail gives the
status, img2dataset's message and the URL, located ``NNNNN.parquet/KEY``), after the tar's own samples. The
parquet is streamed by record batches. Rows are counted from the parquets' footers (a build plans row ranges
without reading a tar; a shard reads only the tars its range touches), so a tar and its parquet must agree:
one that does not is named when read. A tar without a parquet is plain WebDataset (its samples are streamed
to count them). A parquet that cannot
be read, or lacks ``key``, ``status`` or ``error_message``, is a problem of the source as a whole: its
schema is checked for every tar before work (``check``), and a parquet whose data is damaged stops the
listing with its path; either raises :class:`SourceError` (a build that skipped it would silently lose
that shard's rejects and give another dataset from the same files).
"""
from __future__ import annotations

import functools
import glob
import json
import tarfile
from itertools import islice
from pathlib import Path
from typing import Iterator

from tokencompose.schemas.config import SourceConfig
from tokencompose.schemas.reasons import RejectReason
from tokencompose.tasks.source.coco_json import SourceError
from tokencompose.tasks.source.images import ImageProblem
from tokencompose.tasks.source.dataset_rows import RawRow

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
PARQUET_COLUMNS = ("key", "status", "error_message")   # what img2dataset's parquet must have: which rows failed
PARQUET_BATCH_ROWS = 65_536
SUCCESS = "success"


def _split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member: ``sub/000012.jpg`` -> (``sub/000012``, ``jpg``)."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


class WebDatasetShards:
    """The samples of a list of tars, in the pattern's order; the locator is ``TAR/MEMBER``."""

    def __init__(self, location: str, source: SourceConfig):
        self.pattern = location
        self.source = source
        self.description = f"wds shards {location}"
        self._tars: dict[str, Path] | None = None
        self._row_counts: dict[Path, int] = {}

    def tars(self) -> dict[str, Path]:
        """The tars by file name, in order."""
        if self._tars is None:
            from braceexpand import braceexpand

            paths: list[Path] = []
            for expanded in braceexpand(str(Path(self.pattern).expanduser())):
                if glob.has_magic(expanded):
                    paths += [Path(p) for p in sorted(glob.glob(expanded))]
                elif not Path(expanded).is_file():
                    raise SourceError(f"{self.description}: {expanded} does not exist")
                else:
                    paths.append(Path(expanded))
            if not paths:
                raise SourceError(f"{self.description}: the pattern names no file")
            tars: dict[str, Path] = {}
            for path in paths:
                if tars.setdefault(path.name, path) != path:
                    raise SourceError(f"{self.description}: two tars are named {path.name}; samples would collide")
            self._tars = tars
        return self._tars

    def check(self) -> None:
        first = next(iter(self.tars().values()))
        try:
            with tarfile.open(first, "r|") as stream:
                stream.next()
        except (tarfile.TarError, OSError) as error:
            raise SourceError(f"{self.description}: {first} is not a readable tar ({error})") from None
        for path in self.tars().values():
            if parquet_beside(path).is_file():
                self._parquet_columns(parquet_beside(path))

    def rows(self) -> Iterator[RawRow]:
        position = 0
        for name, path in self.tars().items():
            for row in self._tar_rows(name, path, position):
                yield row
                position += 1

    def row_count(self) -> int:
        """The rows of every tar: from img2dataset's parquet footers where they are, so a source of millions of
        rows is counted in seconds; a tar without a parquet has its samples streamed."""
        return sum(self._tar_row_count(path) for path in self.tars().values())

    def rows_between(self, start: int, stop: int) -> Iterator[RawRow]:
        """The rows ``start`` to ``stop - 1``: tars before them are counted, not read."""
        position = 0
        for name, path in self.tars().items():
            if position >= stop:
                return
            count = self._tar_row_count(path)
            if position + count > start:
                yield from islice(self._tar_rows(name, path, position), max(0, start - position), stop - position)
            position += count

    def _tar_row_count(self, path: Path) -> int:
        """Counted once per tar and source object (every shard's range is found from the counts before it)."""
        if path not in self._row_counts:
            self._row_counts[path] = self._count_tar_rows(path)
        return self._row_counts[path]

    def _count_tar_rows(self, path: Path) -> int:
        parquet = parquet_beside(path)
        if not parquet.is_file():
            return sum(1 for _ in _samples(path))
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._parquet_columns(parquet)
        try:
            return pq.ParquetFile(parquet).metadata.num_rows
        except (pa.ArrowException, OSError) as error:
            raise SourceError(f"{self.description}: {parquet} cannot be read ({_one_line(error)})") from None

    def _tar_rows(self, name: str, path: Path, position: int) -> Iterator[RawRow]:
        """A tar's samples, then the rows its parquet lists as failed, numbered from ``position``. Read to the
        end, a tar beside a parquet must give as many rows as the parquet lists (row positions, and so the
        keys of every later row, are counted from the parquets)."""
        first = position
        for key, members in _samples(path):
            yield self._row(position, name, key, members)
            position += 1
        parquet = parquet_beside(path)
        for row in self._failed_rows(parquet, position):
            yield row
            position += 1
        if parquet.is_file() and position - first != self._tar_row_count(path):
            raise SourceError(f"{self.description}: {path} and {parquet.name} disagree: the tar holds "
                              f"{position - first - self._failed_count(parquet)} samples, the parquet lists "
                              f"{self._tar_row_count(path) - self._failed_count(parquet)} successes")

    def _parquet_columns(self, path: Path) -> list[str]:
        """The columns to read from img2dataset's parquet (its footer only); SourceError when it is unusable."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as error:
            raise SourceError(f"{self.description}: {path} is not a readable parquet ({_one_line(error)})") from None
        missing = [column for column in PARQUET_COLUMNS if column not in names]
        if missing:
            raise SourceError(f"{self.description}: {path} has no column {', '.join(missing)} (img2dataset's "
                              f"parquet has {', '.join(PARQUET_COLUMNS)})")
        return [*PARQUET_COLUMNS, *(["url"] if "url" in names else [])]

    def _failed_count(self, path: Path) -> int:
        return sum(1 for _ in self._failed_rows(path, 0))

    def _failed_rows(self, path: Path, position: int) -> Iterator[RawRow]:
        """A row without image for each parquet row img2dataset did not succeed with, streamed by batches."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not path.is_file():
            return
        columns = self._parquet_columns(path)
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                values = {column: batch.column(column).to_pylist() for column in columns}
                urls = values.get("url") or [None] * batch.num_rows
                for index, status in enumerate(values["status"]):
                    if status == SUCCESS:
                        continue
                    key, url = values["key"][index], urls[index]
                    yield RawRow(position, f"{path.name}/{key}", False, None, None if key is None else str(key),
                                 url if isinstance(url, str) else None,
                                 problem=_failure(status, values["error_message"][index], url),
                                 reason=RejectReason.DOWNLOAD_FAILED)
                    position += 1
        except (pa.ArrowException, OSError) as error:
            raise SourceError(f"{self.description}: {path} cannot be read ({_one_line(error)})") from None

    def _row(self, position: int, tar_name: str, key: str, members: dict[str, tuple[str, bytes | None]]) -> RawRow:
        image = next((members[e][0] for e in IMAGE_EXTENSIONS if e in members), None)
        meta = _json_object(members["json"][1]) if "json" in members else {}
        text = members["txt"][1] if "txt" in members else None
        listed = meta.get(self.source.caption_column)
        captions: tuple[object, ...] | None
        if isinstance(listed, list):
            captions = tuple(listed)
        elif text is not None:
            captions = (_text(text),)
        else:
            captions = None if listed is None else (listed,)
        row_key = meta.get(self.source.key_column) if self.source.key_column else key
        url = meta.get(self.source.url_column) if self.source.url_column else None
        return RawRow(position, f"{tar_name}/{image or key}", image is not None, captions,
                      None if row_key is None else str(row_key), url if isinstance(url, str) else None)

    def read_image(self, locator: str) -> bytes:
        tar_name, _, member = locator.partition("/")
        path = self.tars().get(tar_name)
        where = _member_offsets(path) if path is not None else {}
        if member not in where or path is None:
            raise ImageProblem(RejectReason.MISSING_FILE, f"{locator} is no longer in its tar")
        offset, size = where[member]
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def fingerprint(self, locator: str) -> str:
        path = self.tars().get(locator.partition("/")[0])
        stat = path.stat() if path is not None and path.exists() else None
        return f"{stat.st_size}:{stat.st_mtime_ns}:{locator}" if stat else f"missing:{locator}"


def parquet_beside(tar: Path) -> Path:
    """img2dataset's ``NNNNN.parquet`` beside ``NNNNN.tar``."""
    return tar.with_suffix(".parquet")


def _one_line(error: Exception) -> str:
    """Arrow's message on one printable line (it spans lines and may quote the damaged bytes)."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(error)).split())


def _failure(status: object, message: object, url: object) -> str:
    """A failed row's reject detail: img2dataset's status and message, and the URL it tried."""
    detail = f"img2dataset {status}: {message if message else 'no message'}"
    return f"{detail} (url {url:.200})" if isinstance(url, str) else detail


def _samples(path: Path) -> Iterator[tuple[str, dict[str, tuple[str, bytes | None]]]]:
    """(key, {extension: (member name, bytes of a txt/json member)}) per sample, streamed."""
    key: str | None = None
    members: dict[str, tuple[str, bytes | None]] = {}
    with tarfile.open(path, "r|") as stream:
        for member in stream:
            if not member.isfile():
                continue
            member_key, extension = _split_name(member.name)
            if member_key != key:
                if key is not None:
                    yield key, members
                key, members = member_key, {}
            data = None
            if extension in ("txt", "json"):
                handle = stream.extractfile(member)
                data = handle.read() if handle is not None else None
            members.setdefault(extension, (member.name, data))
    if key is not None:
        yield key, members


@functools.lru_cache(maxsize=64)
def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as archive:
        return {m.name: (m.offset_data, m.size) for m in archive.getmembers() if m.isfile()}


def _json_object(data: bytes | None) -> dict:
    try:
        value = json.loads(data or b"")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _text(data: bytes | None) -> object:
    try:
        return (data or b"").decode("utf-8")
    except UnicodeDecodeError:
        return data  # kept as bytes: the caption stage excludes it as "not text"
