"""MultiGen's outputs are trusted only when intact, as the build trusts a shard only through its manifest.

Every image shard and detections file is written with a record beside it (``<file>.check.json``:
its sha256 and size, and for a detections file the sha256 of the image shard it was made from). A
file counts as done only when its record exists and its size and sha256 still match; anything else
(truncated, overwritten, no record, made from images that were regenerated since) is redone, and a
line per redone file goes to the model folder's ``redone.jsonl``, which the report lists.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tokencompose.tasks.shards.shard_io import file_sha256

CHECK_SUFFIX = ".check.json"
REDONE_FILE = "redone.jsonl"


def check_path(path: Path) -> Path:
    return path.with_name(path.name + CHECK_SUFFIX)


def write_record(path: Path, sha256: str, size: int, made_from: str | None = None) -> Path:
    """The record of ``path`` (written under a temporary name and renamed)."""
    record: dict[str, object] = {"sha256": sha256, "bytes": size}
    if made_from is not None:
        record["made_from"] = made_from
    target = check_path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(record, sort_keys=True) + "\n")
    tmp.replace(target)
    return target


def read_record(path: Path) -> dict | None:
    """The record beside ``path``, or None when it is missing or unreadable."""
    try:
        record = json.loads(check_path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("sha256"), str) and isinstance(record.get("bytes"), int)
            and not isinstance(record.get("bytes"), bool)):
        return None
    return record


def problem(path: Path, made_from: str | None = None) -> str | None:
    """Why ``path`` (which exists) cannot be trusted, or None when it is intact. ``made_from``: the
    sha256 its record must name as its source (a detections file's image shard)."""
    record = read_record(path)
    if record is None:
        return f"no valid record beside it ({check_path(path).name})"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"{size} bytes, {record['bytes']} when written (truncated or overwritten)"
    if file_sha256(path) != record["sha256"]:
        return "sha256 differs from the one recorded when it was written (overwritten or damaged)"
    if made_from is not None and record.get("made_from") != made_from:
        return "made from other images (its image shard was generated again)"
    return None


def status(path: Path, made_from: str | None = None) -> tuple[bool, str | None]:
    """(done, why it must be redone): (True, None) intact; (False, None) absent; (False, reason) broken."""
    if not path.exists():
        return False, None
    reason = problem(path, made_from)
    return reason is None, reason


def note_redone(folder: Path, path: Path, reason: str) -> str:
    """Append one line for a redone file to ``folder``'s redone.jsonl; returns the line's text. One
    ``write`` of an O_APPEND file, so ranks noting at once do not interleave."""
    line = json.dumps({"file": path.relative_to(folder).as_posix(), "reason": reason}, sort_keys=True) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / REDONE_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)
    return f"{path.relative_to(folder).as_posix()} redone: {reason}"


def redone_lines(folder: Path) -> list[str]:
    """``<file> redone: <reason>`` for each line of ``folder``'s redone.jsonl (unreadable lines named as such)."""
    path = folder / REDONE_FILE
    if not path.exists():
        return []
    lines = []
    for number, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            entry = json.loads(text)
            lines.append(f"{entry['file']} redone: {entry['reason']}")
        except (json.JSONDecodeError, KeyError, TypeError):
            lines.append(f"{REDONE_FILE} line {number}: unreadable ({text[:80]!r})")
    return lines
