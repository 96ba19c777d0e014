"""The file blob store's clean-up primitives: `remove` and `keys`."""

from __future__ import annotations

import hashlib
from pathlib import Path

from server.storage import FileBlobStore


def test_remove_frees_the_blob_and_reports_its_size(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path)
    key = blobs.put_bytes(b"12345")
    assert blobs.remove(key) == 5
    assert not blobs.exists(key)
    assert blobs.remove(key) == 0  # already gone: nothing freed, no error


def test_keys_lists_blobs_only(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path)
    stored = {blobs.put_bytes(b"a"), blobs.put_bytes(b"b")}
    (tmp_path / "notes.txt").write_text("not a blob")
    misplaced = hashlib.sha256(b"c").hexdigest()
    (tmp_path / "00").mkdir(exist_ok=True)
    (tmp_path / "00" / misplaced).write_bytes(b"c")  # a key outside its directory
    blobs.new_temp_path().write_bytes(b"half written")
    assert set(blobs.keys()) == stored
