"""rejects.jsonl: one :class:`~tokencompose.schemas.reports.Reject` per line. Written here for the
build (``finalize``) and read here for the viewer, so the file is parsed one way."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pydantic import ValidationError

from tokencompose.schemas.reports import Reject, write_atomic


@dataclass
class RejectRows:
    """What a rejects.jsonl holds: its first rows (as many as asked for), and counts over every row."""

    rows: list[Reject] = field(default_factory=list)
    total: int = 0
    bad_lines: int = 0
    missing: bool = False
    by_reason: dict[str, int] = field(default_factory=dict)
    by_stage: dict[str, int] = field(default_factory=dict)


def write_rejects(path: Path, rejects: Sequence[Reject]) -> None:
    """The rows as canonical JSON lines (sorted keys, UTF-8), written atomically."""
    write_atomic(path, b"".join(json.dumps(r.model_dump(), sort_keys=True, ensure_ascii=False).encode() + b"\n"
                                for r in rejects))


def read_rejects(path: Path, keep: int) -> RejectRows:
    """The file read line by line: the first ``keep`` rows kept, every row counted by reason and stage;
    a line that is not a Reject is counted in ``bad_lines``, a missing file sets ``missing``."""
    result = RejectRows()
    try:
        handle = open(path, "rb")
    except OSError:
        result.missing = True
        return result
    with handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                reject = Reject.model_validate_json(line)
            except (ValidationError, ValueError):
                result.bad_lines += 1
                continue
            result.total += 1
            result.by_reason[reject.reason] = result.by_reason.get(reject.reason, 0) + 1
            result.by_stage[reject.stage] = result.by_stage.get(reject.stage, 0) + 1
            if len(result.rows) < keep:
                result.rows.append(reject)
    return result
