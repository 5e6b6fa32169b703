"""The dataset-source interface: one row as a dataset gives it, and what the build needs from a source
(`streams.py` opens one by its `source.dataset` kind; each kind lives in its own module), and a shard's
rows as the build plans them (a range of row positions, read when the shard is built)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from tokencompose.schemas.reasons import RejectReason


@dataclass(frozen=True)
class RawRow:
    """One row as the dataset gives it. ``locator`` finds its image again (``read_image``) and is the
    sample's ``file_name``; ``captions`` is None when the row has no caption value at all."""

    position: int
    locator: str
    has_image: bool
    captions: tuple[object, ...] | None
    key: str | None = None
    url: str | None = None
    problem: str | None = None  # why a row without image has none, when more can be said
    reason: RejectReason = RejectReason.NO_IMAGE  # the reject a row without image becomes


@dataclass(frozen=True)
class RowRange:
    """The rows ``start`` to ``stop - 1`` of a dataset source: one shard of a dataset build, planned
    without reading the rows (the shard task reads them). ``len`` is the number of rows."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


class DatasetSource(Protocol):
    """What the build needs from a dataset source."""

    description: str  # for messages: "hf dataset /data/pets (split train)"

    def check(self) -> None:
        """Cheap preflight: the dataset opens and has the configured columns; raises SourceError."""

    def rows(self) -> Iterator[RawRow]:
        """Every row, in the dataset's fixed order, streamed."""

    # Optional, where a kind can do better than streaming every row (streams.py falls back to that):
    #   row_count() -> int                               the number of rows
    #   rows_between(start, stop) -> Iterator[RawRow]    rows start..stop-1, without reading the earlier ones
    #   content_fingerprint() -> str                     changes when any row may have changed

    def read_image(self, locator: str) -> bytes:
        """The encoded image of a row; raises ImageProblem when it cannot be read."""

    def fingerprint(self, locator: str) -> str:
        """Changes when the row's image may have changed (for the shard task's cache key)."""
