"""The model registry: a folder with one JSON file per trained model and an index naming the promoted one.

    registry/
      registry.json        RegistryIndex: format, promoted entry id, history of decisions
      entries/<id>.json    RegistryEntry: pipeline folder, base model, dataset version, config hash,
                           steps, MultiGen result, status and reason
      .lock                held while the registry is changed (one writer at a time)

Every file is replaced atomically (temporary sibling, fsync, rename) and an entry is written before
the index that points at it, so a crash leaves either the old state or the new one; the index alone
says which entry is promoted.
"""
from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from tokencompose.schemas.registry import REGISTRY_FORMAT, RegistryEntry, RegistryEvent, RegistryIndex
from tokencompose.schemas.reports import write_atomic

INDEX_FILE = "registry.json"
ENTRIES_DIR = "entries"
LOCK_FILE = ".lock"


class RegistryError(ValueError):
    """The registry cannot be read or the change cannot be made; the message says why."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._check_format()

    # ---------------------------------------------------------------- reading
    def _check_format(self) -> None:
        path = self.root / INDEX_FILE
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise RegistryError(f"{path} is not valid JSON ({error})") from None
        found = data.get("format") if isinstance(data, dict) else None
        if not isinstance(found, int):
            raise RegistryError(f"{path} has no format number: not a tokencompose registry")
        if found > REGISTRY_FORMAT:
            raise RegistryError(f"{path} is registry format {found}, written by a newer tokencompose; this version "
                                f"reads format {REGISTRY_FORMAT}: upgrade tokencompose to use it")

    def index(self) -> RegistryIndex:
        path = self.root / INDEX_FILE
        return RegistryIndex.model_validate_json(path.read_bytes()) if path.is_file() else RegistryIndex()

    def entry(self, entry_id: str) -> RegistryEntry:
        path = self._entry_path(entry_id)
        if not path.is_file():
            raise RegistryError(f"no registry entry {entry_id!r} in {self.root}")
        return RegistryEntry.model_validate_json(path.read_bytes())

    def entries(self) -> list[RegistryEntry]:
        folder = self.root / ENTRIES_DIR
        found = [RegistryEntry.model_validate_json(p.read_bytes()) for p in folder.glob("*.json")] if folder.is_dir() else []
        return sorted(found, key=lambda e: (e.created, e.id))

    def promoted(self) -> RegistryEntry | None:
        promoted = self.index().promoted
        return self.entry(promoted) if promoted else None

    def _entry_path(self, entry_id: str) -> Path:
        if not entry_id or "/" in entry_id or entry_id.startswith("."):
            raise RegistryError(f"{entry_id!r} is not a registry entry id")
        return self.root / ENTRIES_DIR / f"{entry_id}.json"

    # ---------------------------------------------------------------- writing
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_entry(self, entry: RegistryEntry) -> None:
        write_atomic(self._entry_path(entry.id), entry.model_dump_json(indent=1).encode())

    def _write_index(self, index: RegistryIndex) -> None:
        write_atomic(self.root / INDEX_FILE, index.model_dump_json(indent=1).encode())

    def register(self, entry: RegistryEntry, by: str = "manual") -> RegistryEntry:
        """Add an entry with its status as decided; a 'promoted' entry becomes the promoted one."""
        with self._locked():
            if self._entry_path(entry.id).exists():
                raise RegistryError(f"registry entry {entry.id!r} exists already")
            wanted = entry.status
            recorded = entry.model_copy(update={"status": "candidate"}) if wanted == "promoted" else entry
            self._write_entry(recorded)
            index = self.index()
            action = {"rejected": "reject", "failed": "fail"}.get(wanted, "register")
            index.history.append(RegistryEvent(at=utc_now(), action=action, entry=entry.id, by=by))
            self._write_index(index)
            if wanted == "promoted":
                self._promote(entry.id, "promote", by)
        return self.entry(entry.id)

    def promote(self, entry_id: str, by: str = "manual", reason: str = "promoted by hand") -> RegistryEntry:
        with self._locked():
            self._promote(entry_id, "promote", by, reason)
        return self.entry(entry_id)

    def rollback(self, by: str = "manual") -> RegistryEntry:
        """Undo the last promotion: the entry promoted before the current one is promoted again
        (promotions form a stack; a rollback pops it, so rolling back twice goes two steps back)."""
        with self._locked():
            index = self.index()
            if index.promoted is None:
                raise RegistryError("nothing is promoted: there is nothing to roll back")
            stack = self._promotion_stack(index)
            current = stack.pop() if stack else index.promoted
            while stack:
                candidate = stack[-1]
                if candidate != current and self._usable(candidate) is None:
                    self._promote(candidate, "rollback", by, f"rolled back from {current}")
                    return self.entry(candidate)
                stack.pop()
            raise RegistryError(f"no earlier promoted entry to roll back to from {current}")

    @staticmethod
    def _promotion_stack(index: RegistryIndex) -> list[str]:
        stack: list[str] = []
        for event in index.history:
            if event.action == "promote":
                stack.append(event.entry)
            elif event.action == "rollback":
                while stack and stack[-1] != event.entry:
                    stack.pop()
        return stack

    def _usable(self, entry_id: str) -> str | None:
        try:
            entry = self.entry(entry_id)
        except RegistryError as error:
            return str(error)
        if entry.status == "failed" or entry.pipeline_dir is None:
            return f"entry {entry_id} failed: it has no model"
        if not (Path(entry.pipeline_dir) / "model_index.json").is_file():
            return f"entry {entry_id}'s pipeline folder {entry.pipeline_dir} is missing"
        return None

    def _promote(self, entry_id: str, action: str, by: str, reason: str = "") -> None:
        problem = self._usable(entry_id)
        if problem:
            raise RegistryError(f"cannot promote: {problem}")
        index = self.index()
        previous = index.promoted
        if previous and previous != entry_id:
            old = self.entry(previous)
            self._write_entry(old.model_copy(update={"status": "retired", "reason": f"replaced by {entry_id}"}))
        entry = self.entry(entry_id)
        self._write_entry(entry.model_copy(update={"status": "promoted", "reason": reason or entry.reason}))
        index.promoted = entry_id
        index.history.append(RegistryEvent(at=utc_now(), action=action, entry=entry_id, by=by))
        self._write_index(index)  # last: the pointer moves only once both entries are written
