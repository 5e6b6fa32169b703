"""Flags and saved views on disk, safe under several writers (viewers in other processes or threads).

Every change is a read-modify-write under an exclusive lock (``<file>.lock``, filelock), written to
a temporary file in the same folder and moved over the old one with ``os.replace``: a reader sees the
old file or the new one, never half of one, and no writer's change is lost. A file that does not read
as its records (corrupt, or another program's) stops the change with the file and line named, and is
left as it is.
"""
from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from filelock import FileLock

from tokencompose.schemas.curation import (FLAGS_FILE, VIEWS_FILE, Flag, Record, SavedView, read_records,
                                           to_lines)

LOCK_TIMEOUT_S = 30.0


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _replace(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def update(path: Path, model: type[Record], change: Callable[[list[Record]], list[Record]]) -> list[Record]:
    """Apply ``change`` to the records of ``path`` under its lock and write the result; returns it."""
    with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S):
        records = change(read_records(path, model))
        _replace(path, to_lines(records))
        return records


class FlagStore:
    """``flags.jsonl`` in a dataset folder: one flag per target (a sample, or one noun of it)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / FLAGS_FILE

    def read(self) -> list[Flag]:
        return read_records(self.path, Flag)

    def flag(self, key: str, reason: str, noun: int | None = None, noun_text: str | None = None) -> Flag:
        """Flag a sample or one noun of it; flagging it again replaces the reason."""
        made = Flag(key=key, noun=noun, noun_text=noun_text, reason=reason.strip(), flagged_at=now())

        def put(flags: list[Flag]) -> list[Flag]:
            kept = [f for f in flags if f.target != made.target] + [made]
            return sorted(kept, key=lambda f: (f.key, -1 if f.noun is None else f.noun))

        update(self.path, Flag, put)
        return made

    def unflag(self, key: str, noun: int | None = None) -> bool:
        """Remove the flag of a sample or noun; False when it was not flagged."""
        removed = []

        def drop(flags: list[Flag]) -> list[Flag]:
            kept = [f for f in flags if f.target != (key, noun)]
            removed.append(len(kept) != len(flags))
            return kept

        update(self.path, Flag, drop)
        return removed[0]


class ViewStore:
    """``views.jsonl`` in a dataset folder: named gallery filters, one per name."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / VIEWS_FILE

    def read(self) -> list[SavedView]:
        return read_records(self.path, SavedView)

    def get(self, name: str) -> SavedView | None:
        return next((v for v in self.read() if v.name == name), None)

    def save(self, name: str, filters: dict[str, str]) -> SavedView:
        """Save (or overwrite) the view ``name``."""
        made = SavedView(name=name, filters=dict(filters), saved_at=now())
        update(self.path, SavedView,
               lambda views: sorted([v for v in views if v.name != name] + [made], key=lambda v: v.name))
        return made

    def delete(self, name: str) -> bool:
        removed = []

        def drop(views: list[SavedView]) -> list[SavedView]:
            kept = [v for v in views if v.name != name]
            removed.append(len(kept) != len(views))
            return kept

        update(self.path, SavedView, drop)
        return removed[0]
