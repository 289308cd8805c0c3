"""Content-addressed file store: produced files live at `<root>/sha256/ab/cdef...` under their hash.

Why content addressing: an instance's event records the file by sha256, so the event alone proves
which bytes were produced; storing the same file twice is a no-op, and a replay never needs to
rewrite a file. Files are written to a temporary file in the same folder while hashing, then
renamed atomically, so a reader never sees a half-written file under a final name.

The interface is deliberately small (put_bytes, put_stream, writer, open, path, exists) so that an
S3-compatible store (object key = `sha256/ab/cdef...`, multipart upload in `writer`) can replace
this local one in production without touching the callers.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FileStore:
    """A local folder of immutable files addressed by their sha256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        path = self.path(sha256)
        if not path.is_file():
            raise FileNotFoundError(f"file {sha256} is not in the store at {self.root}")
        return path.open("rb")

    def writer(self) -> FileWriter:
        """A BinaryIO-like sink: `with store.writer() as w: w.write(b)`; then `w.sha256`, `w.size`."""
        return FileWriter(self)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        with self.writer() as w:
            w.write(data)
        return w.sha256, w.size

    def put_stream(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        with self.writer() as w:
            for chunk in chunks:
                w.write(chunk)
        return w.sha256, w.size


class FileWriter:
    """Writes to a temporary file while hashing; on a clean exit renames it to its content address.

    On an exception the temporary file is removed and nothing appears in the store.
    """

    def __init__(self, store: FileStore) -> None:
        self._store = store
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = None
        self._tmp: Path | None = None
        self.size = 0
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            raise RuntimeError("the file is not committed yet: read sha256 after the `with` block")
        return self._sha256

    def __enter__(self) -> FileWriter:
        tmp_dir = self._store.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="part-")
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._file is None:
            raise RuntimeError("use the writer inside a `with` block")
        self._hash.update(data)
        written = self._file.write(data)
        self.size += written
        return written

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._file is not None and self._tmp is not None
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()
        if exc_type is not None:
            self._tmp.unlink(missing_ok=True)
            return
        digest = self._hash.hexdigest()
        final = self._store.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Same content, same name: replacing an existing file is harmless and atomic.
        os.replace(self._tmp, final)
        self._sha256 = digest
