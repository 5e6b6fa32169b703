"""Reading and writing shard tars: the one place that knows their byte layout.

A shard is a plain ustar archive. Every member has a 512-byte ustar header with fixed metadata
(mtime 0, uid/gid 0, empty owner names, mode 0o644), its data, and zero padding to 512 bytes; the
archive ends with two zero blocks and is padded to tarfile's record size (10240 bytes), as Python's
tarfile does. There are no PAX headers: Python's tarfile writes one (1 KiB: header plus data block)
before every member whose mtime is a float, which is what webdataset's TarWriter gave us in
dataset format 1.

:class:`ShardWriter` computes the file's sha256 and every member's data offset while it writes, so
a finished shard is never read back. :func:`scan_members` walks the headers of an existing tar
(the viewer's fallback when an index is missing); :func:`file_sha256` hashes a file in chunks.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Iterable

BLOCK = tarfile.BLOCKSIZE            # 512
RECORD = tarfile.RECORDSIZE          # 10240: tarfile pads a finished archive to a multiple of this
CHUNK = 1 << 20                      # bytes per read when hashing a file

Locations = dict[str, dict[str, tuple[int, int]]]  # key -> member extension -> (data offset, size)


def member_header(name: str, size: int) -> bytes:
    """The ustar header of one regular file member with the fixed metadata (512 bytes)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


class ShardWriter:
    """Writes a ustar shard to ``path``, hashing and counting the bytes as they go out.

    ``add(key, {ext: bytes})`` writes one sample's members in sorted extension order (the order
    webdataset's TarWriter used). ``close()`` ends the archive and returns (sha256, size).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open(self.path, "wb")
        self._digest = hashlib.sha256()
        self.size = 0
        self.locations: Locations = {}

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._digest.update(data)
        self.size += len(data)

    def add(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key or "/" in key or not key:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
        if key in self.locations:
            raise ValueError(f"sample key {key!r} is already in {self.path.name}")
        where = self.locations[key] = {}
        for extension in sorted(members):
            data = members[extension]
            self._write(member_header(f"{key}.{extension}", len(data)))
            where[extension] = (self.size, len(data))
            self._write(data)
            remainder = len(data) % BLOCK
            if remainder:
                self._write(bytes(BLOCK - remainder))

    def close(self) -> tuple[str, int]:
        """End the archive (two zero blocks, then padding to a whole record); (sha256, bytes)."""
        self._write(bytes(2 * BLOCK))
        remainder = self.size % RECORD
        if remainder:
            self._write(bytes(RECORD - remainder))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._digest.hexdigest(), self.size

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None and not self._file.closed:
            self.abort()


def write_tar(path: Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> tuple[str, int, Locations]:
    """A whole shard in one call: (sha256, bytes, member locations)."""
    with ShardWriter(path) as writer:
        for key, members in samples:
            writer.add(key, members)
        digest, size = writer.close()
    return digest, size, writer.locations


def file_sha256(path: Path, chunk: int = CHUNK) -> str:
    """sha256 of a file read in chunks (never the whole file in memory): the one file hash (shards, weight
    files, tables)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def scan_members(path: Path) -> tuple[Locations, str | None]:
    """Member locations found by walking a tar's headers (tarfile seeks over the data), and what
    stopped the walk early (a damaged or truncated tar), or None."""
    locations: Locations = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    key, _, extension = member.name.partition(".")
                    locations.setdefault(key, {})[extension] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError, EOFError) as error:
        return locations, str(error) or type(error).__name__
    return locations, None
