"""Content-addressed blob store for bundles and sealed updates.

A blob's key is the sha256 of its bytes. Writes go to a temp file in the store,
are fsynced and atomically renamed into place (then the directory is fsynced), so
a reader never sees a half-written blob, even after a crash. Temp files left by a
crash are removed at start. `remove` and `keys` exist for the clean-ups that keep
the store to what the database references (`server.services.blob_sweep`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

_KEY = re.compile(r"^[0-9a-f]{64}$")


class BlobStore(Protocol):
    """Where bundles and sealed updates live; keyed by the sha256 of the content."""

    def new_temp_path(self) -> Path:
        """A fresh path on the store's filesystem to stream a body into."""
        ...

    def put_file(self, temp_path: Path, key: str) -> None:
        """Move a finished temp file (whose sha256 is ``key``) into the store, durably."""
        ...

    def put_bytes(self, data: bytes, key: str | None = None) -> str:
        """Store ``data`` durably; returns its key (``key``: its sha256, when known)."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The content of a blob; raises `FileNotFoundError` when absent."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A binary reader for a blob."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the blob is stored."""
        ...

    def check(self) -> None:
        """Raise `OSError` unless the store can be written."""
        ...

    def remove(self, key: str) -> int:
        """Delete a blob durably; returns the bytes freed (0 when it was absent)."""
        ...

    def keys(self) -> Iterator[str]:
        """Every stored blob's key (temp files and foreign files are not blobs)."""
        ...


class FileBlobStore:
    """Blobs as files ``root/<key[:2]>/<key>``; temp files in ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_dir = root / "tmp"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.temp_dir.iterdir():
            stale.unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key[:2] / key

    def new_temp_path(self) -> Path:
        """A fresh temp path; the caller must unlink it if it does not store it."""
        return self.temp_dir / f"{secrets.token_hex(16)}.part"

    def put_file(self, temp_path: Path, key: str) -> None:
        """Fsync ``temp_path`` and rename it to ``key``; a present blob wins (same bytes)."""
        target = self._path(key)
        if target.exists():
            temp_path.unlink(missing_ok=True)
            return
        fd = os.open(temp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        target.parent.mkdir(exist_ok=True)
        temp_path.replace(target)
        _fsync_dir(target.parent)

    def put_bytes(self, data: bytes, key: str | None = None) -> str:
        """Write ``data`` to a temp file, then move it in with `put_file`.

        A caller that has just hashed ``data`` (a bundle's key is its sha256) passes
        the hex digest as ``key`` and saves a second pass over the bytes.
        """
        if key is None:
            key = hashlib.sha256(data).hexdigest()
        if self._path(key).exists():
            return key
        temp = self.new_temp_path()
        try:
            with temp.open("wb") as handle:
                handle.write(data)
            self.put_file(temp, key)
        finally:
            temp.unlink(missing_ok=True)
        return key

    def get_bytes(self, key: str) -> bytes:
        """The bytes of a blob."""
        return self._path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        """A binary reader for a blob."""
        return self._path(key).open("rb")

    def exists(self, key: str) -> bool:
        """Whether the blob is stored."""
        return self._path(key).is_file()

    def check(self) -> None:
        """Write, fsync and remove a probe file."""
        probe = self.new_temp_path()
        try:
            with probe.open("wb") as handle:
                handle.write(b"ok")
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            probe.unlink(missing_ok=True)

    def remove(self, key: str) -> int:
        """Unlink the blob and fsync its directory, so a crash does not bring it back."""
        path = self._path(key)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        _fsync_dir(path.parent)
        return size

    def keys(self) -> Iterator[str]:
        """Files named by a key in the directory of its first two hex digits; nothing else."""
        for directory in sorted(self.root.iterdir()):
            if directory == self.temp_dir or not directory.is_dir():
                continue
            for path in sorted(directory.iterdir()):
                if _KEY.match(path.name) and path.name[:2] == directory.name and path.is_file():
                    yield path.name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse directory fsync
            os.fsync(fd)
    finally:
        os.close(fd)
