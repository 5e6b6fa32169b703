"""The rejected images (rejects.jsonl) and, where the source still has it, each one's image.

A rejected image is named by its row in rejects.jsonl (``/rejects/<row>``), never by a file name from
the request. Its file is looked for only in the source image folder the dataset's config.json names
(``config.source.images_dir``, an absolute path), and only when the row's ``file_name`` is a plain
file name with an image extension whose resolved path lies directly in that folder (no ``..``, no
sub-folder, no symbolic link leading out).
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from tokencompose.schemas.reports import BUILD_CONFIG_FILE, REJECTS_FILE, Reject
from tokencompose.tasks.shards.rejects import RejectRows, read_rejects
from tokencompose.viewer.catalog import IMAGE_TYPES, MAX_IMAGE_BYTES

PLAIN_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$")
MAX_REJECTS = 1_000_000  # rows kept in memory (each ~200 bytes); the counts cover every row


class RejectList:
    """rejects.jsonl read once, on first use; the source image folder from config.json."""

    def __init__(self, root: Path):
        self.root = root
        self._rows: RejectRows | None = None
        self._lock = threading.Lock()
        self.images_dir, self.images_problem = self._images_dir()

    def _images_dir(self) -> tuple[Path | None, str | None]:
        try:
            config = json.loads((self.root / BUILD_CONFIG_FILE).read_bytes())
            folder = config["config"]["source"]["images_dir"]
        except FileNotFoundError:
            return None, "the dataset has no config.json, so the source images are unknown"
        except (OSError, ValueError, KeyError, TypeError):
            return None, "config.json does not name the source image folder"
        if not isinstance(folder, str) or not Path(folder).is_absolute():
            return None, "config.json's source image folder is not an absolute path"
        folder = Path(folder)
        if not folder.is_dir():
            return None, f"the source image folder {folder} is not on this machine"
        return folder.resolve(), None

    def read(self) -> RejectRows:
        with self._lock:
            if self._rows is None:
                self._rows = self._read()
            return self._rows

    def _read(self) -> RejectRows:
        return read_rejects(self.root / REJECTS_FILE, MAX_REJECTS)

    def get(self, row: int) -> Reject | None:
        rows = self.read().rows
        return rows[row] if 0 <= row < len(rows) else None

    def image_path(self, reject: Reject) -> Path | None:
        """The source file of a rejected image, or None (no folder, an unsafe name, no such file)."""
        name = reject.file_name
        if self.images_dir is None or not name or not PLAIN_FILE.match(name) or name in (".", ".."):
            return None
        if name.rpartition(".")[2].lower() not in IMAGE_TYPES:
            return None
        path = self.images_dir / name
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if resolved.parent != self.images_dir or not resolved.is_file():
            return None
        return resolved

    def image_bytes(self, reject: Reject) -> tuple[bytes, str] | None:
        path = self.image_path(reject)
        if path is None:
            return None
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                return None
            data = path.read_bytes()
        except OSError:
            return None
        return data, IMAGE_TYPES[path.suffix.lstrip(".").lower()]
