"""The model registry: a folder with one JSON file per trained model and an index naming the promoted one.

    registry/
      registry.json        RegistryIndex: format, promoted entry id, history of decisions
      entries/<id>.json    RegistryEntry: pipeline folder, base model, dataset version, config hash,
                           steps, MultiGen result, status and reason
      damaged/             entry files (and indexes) `repair` took out of the registry, kept for reading
      .lock                held while the registry is changed (one writer at a time)

Every file is replaced atomically (temporary sibling, fsync, rename) and an entry is written before
the index that points at it, so a crash leaves either the old state or the new one; the index alone
says which entry is promoted.

Files edited or lost by hand are found by `check` (one `Problem` per file) and `repair` rebuilds the
index from the entry files that are valid. Nothing here ever writes into a model's pipeline folder.
"""
from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from pydantic import ValidationError

from tokencompose.schemas.registry import (REGISTRY_FORMAT, Action, RegistryEntry, RegistryEvent, RegistryIndex,
                                           entry_id_problem)
from tokencompose.schemas.reports import write_atomic

INDEX_FILE = "registry.json"
ENTRIES_DIR = "entries"
DAMAGED_DIR = "damaged"
LOCK_FILE = ".lock"
REPAIR_HINT = "`tokencompose models registry repair` rebuilds the index from the entry files"
# History actions that show an entry was once written (a missing file is then "dangling", not "unknown").
WRITTEN_ACTIONS = ("register", "reject", "fail")


class RegistryError(ValueError):
    """The registry cannot be read or the change cannot be made; the message (one line) says why."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a registry, found by :meth:`ModelRegistry.check`.

    kind: ``corrupt`` (a file that is not valid JSON or not a valid entry / index), ``dangling`` (an
    entry the history recorded whose file is gone), ``unknown`` (the index names an id no entry has),
    ``broken promoted`` (the promoted entry cannot serve: failed, or its pipeline folder is gone) or
    ``missing index`` (entries without registry.json)."""

    kind: str
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.message}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def one_line(error: ValidationError) -> str:
    """A pydantic error as one line: the first problem's field and message, and how many more."""
    errors = error.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "the document"
    text = f"{where}: {first['msg']}"
    if len(text) > 300:
        text = text[:297] + "..."
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(text.split()) + more


def _parse(path: Path, model, what: str):
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RegistryError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        return model.model_validate_json(data)
    except ValidationError as error:
        if any(e["type"] == "json_invalid" for e in error.errors()):
            raise RegistryError(f"{path}: not valid JSON") from None
        raise RegistryError(f"{path}: not a valid {what}: {one_line(error)}") from None


def check_entry_id(entry_id: object) -> str:
    problem = entry_id_problem(entry_id)
    if problem:
        raise RegistryError(problem)
    return str(entry_id)


class ModelRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._held = 0
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root} is not a folder: it cannot be a model registry")
        self._check_format()

    # ---------------------------------------------------------------- reading
    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    def _check_format(self) -> None:
        """Refuse a registry written by a newer tokencompose (a damaged index is left to check/repair)."""
        try:
            data = json.loads(self.index_path.read_bytes()) if self.index_path.is_file() else None
        except (ValueError, OSError):
            return
        found = data.get("format") if isinstance(data, dict) else None
        if isinstance(found, int) and not isinstance(found, bool) and found > REGISTRY_FORMAT:
            raise RegistryError(f"{self.index_path} is registry format {found}, written by a newer tokencompose; "
                                f"this version reads format {REGISTRY_FORMAT}: upgrade tokencompose to use it")

    def index(self) -> RegistryIndex:
        path = self.index_path
        if path.is_dir():
            raise RegistryError(f"{path} is a folder, not the registry index; {REPAIR_HINT}")
        if not path.exists():
            return RegistryIndex()
        index = _parse(path, RegistryIndex, "registry index")
        if index.format != REGISTRY_FORMAT:
            raise RegistryError(f"{path}: format {index.format} is not a registry format this version reads "
                                f"({REGISTRY_FORMAT})")
        return index

    def entry_path(self, entry_id: str) -> Path:
        return self.root / ENTRIES_DIR / f"{check_entry_id(entry_id)}.json"

    def _read_entry(self, path: Path) -> RegistryEntry:
        entry = _parse(path, RegistryEntry, "registry entry")
        if f"{entry.id}.json" != path.name:
            raise RegistryError(f"{path}: holds entry id {entry.id!r}, not the one its name says")
        return entry

    def entry(self, entry_id: str) -> RegistryEntry:
        path = self.entry_path(entry_id)
        if not path.is_file():
            raise RegistryError(f"no registry entry {entry_id!r} in {self.root} ({path} does not exist)")
        return self._read_entry(path)

    def scan(self) -> tuple[dict[str, RegistryEntry], list[Problem]]:
        """Every valid entry by id, and a ``corrupt`` problem for every entry file that is not one."""
        folder = self.root / ENTRIES_DIR
        if not folder.exists():
            return {}, []
        if not folder.is_dir():
            return {}, [Problem("corrupt", folder, "is not a folder: the entries are lost")]
        valid: dict[str, RegistryEntry] = {}
        problems: list[Problem] = []
        for path in sorted(folder.iterdir()):
            if path.name.endswith(".tmp"):
                continue  # a writer's temporary file (in use, or left by a crash): never read
            try:
                if not path.name.endswith(".json") or not path.is_file():
                    raise RegistryError(f"{path}: not an entry file (entries are <id>.json files)")
                check_entry_id(path.name[:-len(".json")])
                entry = self._read_entry(path)
            except RegistryError as error:
                problems.append(Problem("corrupt", path, str(error).removeprefix(f"{path}: ")))
                continue
            valid[entry.id] = entry
        return valid, problems

    def entries(self) -> list[RegistryEntry]:
        """The valid entries, oldest first (damaged files are skipped: ``check`` reports them)."""
        return sorted(self.scan()[0].values(), key=lambda e: (e.created, e.id))

    def promoted(self) -> RegistryEntry | None:
        promoted = self.index().promoted
        return self.entry(promoted) if promoted else None

    def usable(self, entry_id: str) -> str | None:
        """Why the entry cannot be promoted, or None when it can."""
        try:
            entry = self.entry(entry_id)
        except RegistryError as error:
            return str(error)
        if entry.status == "failed" or entry.pipeline_dir is None:
            return f"entry {entry_id} failed: it has no model"
        if not (Path(entry.pipeline_dir) / "model_index.json").is_file():
            return f"entry {entry_id}'s pipeline folder {entry.pipeline_dir} is missing"
        return None

    # ---------------------------------------------------------------- checking
    def check(self) -> list[Problem]:
        """Everything wrong with the registry, one problem per file or reference."""
        valid, problems = self.scan()
        try:
            index = self.index()
        except RegistryError as error:
            problems.append(Problem("corrupt", self.index_path,
                                    str(error).removeprefix(f"{self.index_path}: ") + f"; {REPAIR_HINT}"))
            return problems
        if not self.index_path.exists():
            if valid:
                problems.append(Problem("missing index", self.index_path,
                                        f"{len(valid)} entries but no index: nothing is promoted; {REPAIR_HINT}"))
            return problems
        written = {e.entry for e in index.history if e.action in WRITTEN_ACTIONS}
        named = ([index.promoted] if index.promoted else []) + [e.entry for e in index.history if e.entry]
        for entry_id in dict.fromkeys(named):
            path = self.entry_path(entry_id)
            if entry_id in valid or path.exists():
                continue  # valid, or damaged and reported by scan
            role = f"the promoted entry {entry_id}" if entry_id == index.promoted else f"entry {entry_id} (in the history)"
            if entry_id in written:
                problems.append(Problem("dangling", path, f"the file of {role} is gone; {REPAIR_HINT}"))
            else:
                problems.append(Problem("unknown", self.index_path,
                                        f"names {role}, which was never registered; {REPAIR_HINT}"))
        if index.promoted and self.entry_path(index.promoted).exists():
            problem = self.usable(index.promoted)
            if problem:
                problems.append(Problem("broken promoted", self.index_path,
                                        f"promoted entry {index.promoted} cannot serve: "
                                        f"{problem.removeprefix(str(self.entry_path(index.promoted)) + ': ')}; "
                                        f"{REPAIR_HINT}"))
        return problems

    # ---------------------------------------------------------------- writing
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's lock (one writer at a time across processes; nested holds by the same
        object are one hold, since a second flock of the file by this process would wait forever)."""
        if self._held:
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held = 1
            try:
                yield
            finally:
                self._held = 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record(self, event: RegistryEvent) -> None:
        """Append an event to the history (a gc, say) without changing any entry."""
        with self.locked():
            index = self.index()
            index.history.append(event)
            self._write_index(index)

    def _write_entry(self, entry: RegistryEntry) -> None:
        write_atomic(self.entry_path(entry.id), entry.model_dump_json(indent=1).encode())

    def _write_index(self, index: RegistryIndex) -> None:
        write_atomic(self.index_path, index.model_dump_json(indent=1).encode())

    def register(self, entry: RegistryEntry, by: str = "manual") -> RegistryEntry:
        """Add an entry with its status as decided; a 'promoted' entry becomes the promoted one."""
        with self.locked():
            if self.entry_path(entry.id).exists():
                raise RegistryError(f"registry entry {entry.id!r} exists already")
            wanted = entry.status
            recorded = entry.model_copy(update={"status": "candidate"}) if wanted == "promoted" else entry
            index = self.index()  # read first: a damaged index stops the change before anything is written
            self._write_entry(recorded)
            action: Action = "reject" if wanted == "rejected" else "fail" if wanted == "failed" else "register"
            index.history.append(RegistryEvent(at=utc_now(), action=action, entry=entry.id, by=by))
            self._write_index(index)
            if wanted == "promoted":
                self._promote(entry.id, "promote", by)
        return self.entry(entry.id)

    def promote(self, entry_id: str, by: str = "manual", reason: str = "promoted by hand") -> RegistryEntry:
        check_entry_id(entry_id)
        with self.locked():
            self._promote(entry_id, "promote", by, reason)
        return self.entry(entry_id)

    def rollback(self, by: str = "manual", on_skip: Callable[[str], None] | None = None) -> RegistryEntry:
        """Undo the last promotion: the entry promoted before the current one is promoted again
        (promotions form a stack; a rollback pops it, so rolling back twice goes two steps back).
        Entries below that can no longer serve (file gone or damaged, pipeline folder gone) are
        skipped; ``on_skip`` hears why for each."""
        with self.locked():
            index = self.index()
            if index.promoted is None:
                raise RegistryError("nothing is promoted: there is nothing to roll back")
            stack = self._promotion_stack(index)
            current = stack.pop() if stack else index.promoted
            skipped: list[str] = []
            while stack:
                candidate = stack[-1]
                problem = self.usable(candidate) if candidate != current else "it is the current one"
                if problem is None:
                    self._promote(candidate, "rollback", by, f"rolled back from {current}", "; ".join(skipped))
                    return self.entry(candidate)
                if candidate != current:
                    skipped.append(f"skipped {candidate}: {problem}")
                    if on_skip:
                        on_skip(skipped[-1])
                stack.pop()
            raise RegistryError(f"no earlier promoted entry to roll back to from {current}"
                                + (f" ({'; '.join(skipped)})" if skipped else ""))

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

    def _promote(self, entry_id: str, action: Action, by: str, reason: str = "", detail: str = "") -> None:
        problem = self.usable(entry_id)
        if problem:
            raise RegistryError(f"cannot promote: {problem}")
        index = self.index()
        previous = index.promoted
        if previous and previous != entry_id:
            try:
                old = self.entry(previous)
            except RegistryError:
                old = None  # the promoted pointer was broken: nothing to retire
            if old is not None:
                self._write_entry(old.model_copy(update={"status": "retired", "reason": f"replaced by {entry_id}"}))
        entry = self.entry(entry_id)
        self._write_entry(entry.model_copy(update={"status": "promoted", "reason": reason or entry.reason}))
        index.promoted = entry_id
        index.history.append(RegistryEvent(at=utc_now(), action=action, entry=entry_id, by=by, detail=detail))
        self._write_index(index)  # last: the pointer moves only once both entries are written

    # ---------------------------------------------------------------- repairing
    def _set_aside(self, path: Path, stamp: str) -> Path:
        """Move a damaged file out of the registry's way into damaged/, under a name that says when."""
        target = self.root / DAMAGED_DIR / f"{path.name}.{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        number = 1
        while target.exists():
            number += 1
            target = target.with_name(f"{path.name}.{stamp}.{number}")
        path.replace(target)
        return target

    def _salvaged_index(self) -> tuple[str | None, list[RegistryEvent], list[str]]:
        """What can be read of the current index: its promoted id, its valid events, and notes on the rest."""
        try:
            index = self.index()
            return index.promoted, list(index.history), []
        except RegistryError as error:
            notes = [f"index unreadable ({str(error).removeprefix(f'{self.index_path}: ')})"]
        try:
            data = json.loads(self.index_path.read_bytes())
        except (ValueError, OSError):
            return None, [], notes
        if not isinstance(data, dict):
            return None, [], notes
        promoted = data.get("promoted") if entry_id_problem(data.get("promoted")) is None else None
        events: list[RegistryEvent] = []
        history = data.get("history")
        raw: list = history if isinstance(history, list) else []
        for item in raw:
            try:
                events.append(RegistryEvent.model_validate(item))
            except ValidationError:
                pass
        if len(events) < len(raw):
            notes.append(f"dropped {len(raw) - len(events)} unreadable history events")
        return promoted, events, notes

    def repair(self, by: str = "manual") -> list[str]:
        """Rebuild the index from the entry files that are valid.

        Damaged entry files (and an unreadable index) are moved into ``damaged/``; history events that
        name no valid entry are dropped; the promoted entry stays if it can serve, otherwise the newest
        valid entry whose status is promoted, otherwise the top of the promotion stack that can serve,
        otherwise none. The decision and what was dropped are one ``repair`` event. Pipeline folders
        are never touched. Returns the decision as lines for the operator."""
        with self.locked():
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            valid, problems = self.scan()
            notes: list[str] = []
            for problem in problems:
                moved = self._set_aside(problem.path, stamp)
                notes.append(f"moved damaged {problem.path.name} to {moved.relative_to(self.root)} ({problem.message})")
            if not (self.root / ENTRIES_DIR).is_dir():
                (self.root / ENTRIES_DIR).mkdir(parents=True)
            promoted, events, index_notes = self._salvaged_index()
            notes += index_notes
            if index_notes and self.index_path.exists():
                moved = self._set_aside(self.index_path, stamp)
                notes.append(f"moved the damaged index to {moved.relative_to(self.root)}")
            kept = [e for e in events if not e.entry or e.entry in valid]
            if len(kept) < len(events):
                gone = sorted({e.entry for e in events if e.entry and e.entry not in valid})
                notes.append(f"dropped {len(events) - len(kept)} history events naming entries with no valid file: "
                             + ", ".join(gone))
            choice, why = self._choose_promoted(promoted, valid, kept, readable=not index_notes)
            decision = f"promoted: {choice} ({why})" if choice else f"nothing promoted ({why})"
            index = RegistryIndex(promoted=choice, history=kept)
            index.history.append(RegistryEvent(at=utc_now(), action="repair", entry=choice or "", by=by,
                                               detail="; ".join([decision, *notes])))
            if choice:
                entry = valid[choice]
                if entry.status != "promoted":
                    self._write_entry(entry.model_copy(update={"status": "promoted", "reason": f"repair: {why}"}))
            self._write_index(index)
            return [decision, *notes]

    def _choose_promoted(self, promoted: str | None, valid: dict[str, RegistryEntry],
                         history: list[RegistryEvent], readable: bool) -> tuple[str | None, str]:
        if promoted and promoted in valid and self.usable(promoted) is None:
            return promoted, "the index's promoted entry is valid"
        if promoted:
            lost = f"the index's promoted entry {promoted} cannot serve"
        else:
            lost = "the index named none" if readable else "the index is unreadable"
        newest = sorted((e for e in valid.values() if e.status == "promoted" and self.usable(e.id) is None),
                        key=lambda e: (e.created, e.id))
        if newest:
            return newest[-1].id, f"{lost}; newest valid entry with status promoted"
        stack = self._promotion_stack(RegistryIndex(history=history))
        for entry_id in reversed(stack):
            if entry_id in valid and self.usable(entry_id) is None:
                return entry_id, f"{lost}; last promotion in the history that can serve"
        return None, f"{lost}; no valid entry can serve"
