"""A content-addressed blob store on disk: every blob is named by its sha256.

    blobs = BlobStore("state/blobs")
    digest = blobs.put(payload)          # atomic and idempotent: the same bytes, one file
    payload = blobs.get(digest)          # checked against its name on the way out
    with blobs.open(digest) as f: ...    # for streaming and HTTP Range reads

Files live at ``root/ab/cdef...`` (the first two hex digits as a folder). A blob is written
to a temporary file, fsynced and renamed, so a crash leaves either no blob or the whole
blob, never part of one. Global versions and uploaded updates both live here; the database
holds only their digests. The store's folders are 0700 and its files 0600 (the tensors of
updates are the participants' work and nobody else's to read).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from zenfed.errors import ZenfedError


class BlobStore:
    """Blobs under ``root``, each stored once under its sha256 hex digest."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)

    def path(self, digest: str) -> Path:
        """Where the blob named ``digest`` lives (whether or not it exists)."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ZenfedError(
                f"'{digest[:80]}' is not a sha256 hex digest", fix="use a blob's name"
            )
        return self.root / digest[:2] / digest[2:]

    def put(self, data: bytes, digest: str | None = None) -> str:
        """Store ``data`` (if not already there); return its sha256 hex digest. A caller
        that has just computed the digest of these very bytes may pass it."""
        digest = digest or hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.is_file():
            return digest
        target.parent.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def has(self, digest: str) -> bool:
        """Whether the blob is stored."""
        return self.path(digest).is_file()

    def get(self, digest: str) -> bytes:
        """The blob's bytes, verified against its name."""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError as e:
            raise ZenfedError(f"blob {digest[:12]} is not stored", fix="check the digest") from e
        if hashlib.sha256(data).hexdigest() != digest:
            raise ZenfedError(
                f"blob {digest[:12]} is corrupt (its content does not match its name)",
                fix="restore it from a backup or remove it",
            )
        return data

    def open(self, digest: str) -> BinaryIO:
        """The blob opened for reading (for streaming and ranges; not re-verified)."""
        try:
            return self.path(digest).open("rb")
        except FileNotFoundError as e:
            raise ZenfedError(f"blob {digest[:12]} is not stored", fix="check the digest") from e

    def size(self, digest: str) -> int:
        """The blob's length in bytes."""
        return self.path(digest).stat().st_size

    def digests(self) -> Iterator[str]:
        """The names of every stored blob (temporary files of unfinished writes aside)."""
        for folder in self.root.iterdir():
            if folder.is_dir() and len(folder.name) == 2:
                for f in folder.iterdir():
                    if not f.name.startswith("."):
                        yield folder.name + f.name

    def delete(self, digest: str) -> None:
        """Remove a blob (nothing if it is not stored)."""
        self.path(digest).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
