"""Curation records kept beside a dataset, never in its shards: flags and saved views.

``flags.jsonl`` holds one :class:`Flag` a line: a whole sample (``noun`` absent) or one noun's mask
(``noun`` its index in the record) marked bad, with a reason. ``views.jsonl`` holds one
:class:`SavedView` a line: the viewer's gallery filters under a name. Both are written by the viewer
(``tasks/curation/store.py``: locked, read-modify-write, atomic replace) and read by the build
(``selection.exclude_flagged``) and training (``exclude_flagged``). Reading is strict: a line that is
not such a record stops the reader with the file and line named; nothing is dropped silently.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError

from tokencompose.schemas.base import StrictRecord

FLAGS_FILE = "flags.jsonl"
VIEWS_FILE = "views.jsonl"
KEY_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # a WebDataset key as the build writes it (no dot, no slash)
VIEW_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # a view name is a URL segment
REASON_LIMIT = 500


class Flag(StrictRecord):
    """One sample, or one noun (mask) of it, marked bad."""

    key: str = Field(pattern=KEY_PATTERN, description="the sample key")
    noun: int | None = Field(default=None, ge=0, description="the noun's index in the record; absent: the sample")
    noun_text: str | None = Field(default=None, max_length=REASON_LIMIT,
                                  description="the noun's text when flagged (a check, not the identity)")
    reason: str = Field(min_length=1, max_length=REASON_LIMIT, description="why, in the curator's words")
    flagged_at: str = Field(description="UTC time, ISO 8601")

    @property
    def target(self) -> tuple[str, int | None]:
        return (self.key, self.noun)


class SavedView(StrictRecord):
    """The gallery's filters (query parameters as given) saved under a name."""

    name: str = Field(pattern=VIEW_NAME_PATTERN)
    filters: dict[str, str]
    saved_at: str = Field(description="UTC time, ISO 8601")


class CurationFileError(ValueError):
    """A flags or views file that cannot be read as such: names the file and the line."""


Record = TypeVar("Record", Flag, SavedView)


def parse_lines(path: Path, text: str, model: type[Record]) -> list[Record]:
    """Every line of ``text`` (the content of ``path``) as ``model``; blank lines are allowed."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(model.model_validate_json(line))
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            detail = f"{where}: {problem['msg']}" if where else problem["msg"]
            raise CurationFileError(f"{path}:{number}: not a {model.__name__} record ({detail})") from None
    return records


def read_records(path: Path, model: type[Record]) -> list[Record]:
    """The records of ``path``; none when the file does not exist yet."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise CurationFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise CurationFileError(f"{path}:{line}: not UTF-8 text") from None
    return parse_lines(Path(path), text, model)


def to_lines(records: list[Flag] | list[SavedView]) -> str:
    return "".join(json.dumps(r.model_dump(mode="json", exclude_none=True), sort_keys=True,
                              ensure_ascii=False) + "\n" for r in records)


@dataclass(frozen=True)
class Exclusions:
    """What a flags file takes out: whole samples, and single nouns (key, noun index)."""

    samples: frozenset[str] = frozenset()
    nouns: frozenset[tuple[str, int]] = frozenset()
    source: str = ""  # the flags file, for messages

    @classmethod
    def from_flags(cls, flags: list[Flag], source: str = "") -> "Exclusions":
        return cls(samples=frozenset(f.key for f in flags if f.noun is None),
                   nouns=frozenset((f.key, f.noun) for f in flags if f.noun is not None), source=source)

    def noun_flagged(self, key: str, noun: int) -> bool:
        return (key, noun) in self.nouns


def read_exclusions(path: Path) -> Exclusions:
    """The flags of ``path``, which must exist (an exclusion the user asked for is never empty by accident)."""
    if not Path(path).is_file():
        raise CurationFileError(f"{path}: no such flags file")
    return Exclusions.from_flags(read_records(Path(path), Flag), source=str(path))


def flagged_samples_digest(path: Path) -> str:
    """A hash of the sample keys a flags file excludes from a build (its part of the configuration hash)."""
    keys = sorted(read_exclusions(path).samples)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def valid_key(key: str) -> bool:
    return re.fullmatch(KEY_PATTERN, key) is not None
