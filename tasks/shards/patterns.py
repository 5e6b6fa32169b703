"""Shard files named by paths, glob and brace patterns (``shard-{000000..000009}.tar``); no heavy imports,
so that a preflight can check them in a fraction of a second."""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Sequence

from braceexpand import braceexpand


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Shard files from paths, glob and brace patterns, sorted, unique; the first part that names no file
    raises FileNotFoundError naming it."""
    found: list[str] = []
    for pattern in patterns:
        for expanded in braceexpand(str(pattern)):
            if glob.has_magic(expanded):
                matches = sorted(glob.glob(expanded))
                if not matches:
                    raise FileNotFoundError(f"no shard matches {expanded!r}")
                found += matches
            elif Path(expanded).is_file():
                found.append(expanded)
            else:
                raise FileNotFoundError(f"shard {expanded!r} does not exist")
    return sorted(dict.fromkeys(found))
