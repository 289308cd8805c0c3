"""Content-addressed file store: produced files live at `<root>/sha256/ab/cdef...` under their hash.

Why content addressing: an instance's event records the file by sha256, so the event alone proves
which bytes were produced; storing the same file twice is a no-op, and a replay never needs to
rewrite a file. Files are written to a temporary file in the same folder while hashing, then
renamed atomically, so a reader never sees a half-written file under a final name.

The interface is deliberately small (put_bytes, put_stream, writer, open, path, exists) so that an
S3-compatible store (object key = `sha256/ab/cdef...`, multipart upload in `writer`) can replace
this local one in production without touching the callers.

Large files bypass the page cache (O_DIRECT): the writer copies what it is given into two reused,
page-aligned buffers of DIRECT_BYTES in turn and writes every full one straight to the disk on its own
thread (the caller fills the other meanwhile: a slow disk stalls it only when both are full); the tail
(not a whole number of blocks) is written normally before the fsync. Why: a produced file is not read back
soon, and filling the page cache with it costs the writer a fresh kernel page per 4 KB. On this kind of
machine (a VM whose idle memory goes back to the host) that first touch was 0.1-3 s of system time for
the 370 MB of a 1 M-service Flusso C (bench/format.py; docs/scaling.md), against ~0.2 s of wall and no
CPU written direct. A file smaller than one buffer never goes direct. A file system that refuses
O_DIRECT (EINVAL) gets plain writes. The bytes, the hash and the fsync before the rename are the same.

A full file system (ENOSPC, or EDQUOT over a quota) is not the file's fault: whatever step meets it (the
temporary file, a write, the flush, the fsync, the folder of the final name) the writer removes its temporary
file, so a failed attempt leaves no bytes behind to fill the disk further, and raises `StoreFull` (an OSError,
errno kept), which names the store's folder and how far the file got. The services wait for space instead
of failing the work (`SpaceWaits`: per instance, backed off, retried at once when the free space grows).
A temporary file can only outlive its writer when the process dies mid-file (kill -9): `sweep_temporaries`
removes those not written for STALE_TEMPORARY_S, at every service start and whenever the store is full, and
so the work folders (WORK_PREFIX) in which the 730 formatter builds its parts before storing them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from prometheus_client import Gauge

from services.runtime.backoff import Backoffs, Wait

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DIRECT_BYTES = 4 * 1024 * 1024  # the aligned buffer of a large file's writer: a multiple of any block size
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# A temporary file nobody has written for this long was left by a writer that died mid-file (kill -9, power
# loss): every writer of the store writes its file continuously from a stream (a COPY, a local file), so a
# live one never pauses near this long. Removed at service start and whenever the store is found full.
STALE_TEMPORARY_S = 1800.0
# A writer that builds several files before storing them (the 730 formatter's zip parts) does it in a folder of
# tmp/ named with this prefix, on the store's disk: swept by the same rule, its newest file deciding its age.
WORK_PREFIX = "work-"


class StoreFull(OSError):
    """The file store's file system has no space left: the work waits for space, it is not failed."""

    def __init__(self, root: Path, written: int, cause: OSError) -> None:
        super().__init__(cause.errno, f"{cause.strerror or os.strerror(cause.errno or errno.ENOSPC)}: file store "
                                      f"{root}, after {written} bytes of a file")
        self.root = root
        self.written = written


def is_full(exc: BaseException | None) -> bool:
    """True when `exc`, or what it was raised from, is a full file system (ENOSPC, EDQUOT)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(root: Path) -> int | None:
    """Bytes an unprivileged writer may still write on `root`'s file system (None: cannot tell)."""
    try:
        st = os.statvfs(root)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


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

    def content_sha256(self, sha256: str) -> str:
        """The sha256 of the bytes stored under `sha256`, read in 1 MiB chunks: equal to it when they are intact."""
        digest = hashlib.sha256()
        with self.open(sha256) as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def writer(self) -> FileWriter:
        """A BinaryIO-like sink: `with store.writer() as w: w.write(b)`; then `w.sha256`, `w.size`."""
        return FileWriter(self)

    def sweep_temporaries(self, older_than_s: float = STALE_TEMPORARY_S) -> list[tuple[Path, int]]:
        """Removes the temporary files not written for `older_than_s` (see STALE_TEMPORARY_S): (path, bytes)
        of each. A writer's own failure removes its file itself; these are what a killed process left."""
        removed: list[tuple[Path, int]] = []
        try:
            entries = list(os.scandir(self.root / "tmp"))
        except FileNotFoundError:
            return removed
        now = time.time()
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.name.startswith("part-"):
                    st = entry.stat(follow_symlinks=False)
                    if now - st.st_mtime > older_than_s:
                        os.unlink(entry.path)
                        removed.append((Path(entry.path), st.st_size))
                elif entry.name.startswith(WORK_PREFIX) and entry.is_dir(follow_symlinks=False):
                    inside = [entry.stat(follow_symlinks=False)] + [
                        p.lstat() for p in Path(entry.path).rglob("*")]
                    if now - max(st.st_mtime for st in inside) > older_than_s:
                        shutil.rmtree(entry.path, ignore_errors=True)
                        removed.append((Path(entry.path), sum(st.st_size for st in inside[1:])))
        return removed

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
        self._direct: mmap.mmap | None = None  # the aligned buffer being filled, once the file outgrows one
        self._held = 0  # bytes in it not yet written
        self._plain = False  # O_DIRECT refused: plain writes from then on
        self._spare: mmap.mmap | None = None  # the other buffer
        self._io: concurrent.futures.ThreadPoolExecutor | None = None  # writes the full buffers, in order
        self._writing: concurrent.futures.Future[None] | None = None  # the spare's write

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            raise RuntimeError("the file is not committed yet: read sha256 after the `with` block")
        return self._sha256

    def __enter__(self) -> FileWriter:
        tmp_dir = self._store.root / "tmp"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="part-")
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                raise StoreFull(self._store.root, 0, exc) from exc
            raise
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._file is None:
            raise RuntimeError("use the writer inside a `with` block")
        self._hash.update(data)
        view = memoryview(data).cast("B")
        size = len(view)
        if self._direct is None and not self._plain and self.size + size >= DIRECT_BYTES:
            head = -self.size % mmap.PAGESIZE  # plainly up to a block boundary, where direct writes start
            self._file.write(view[:head])
            self._file.flush()
            if self._set_direct(True):
                self._direct = mmap.mmap(-1, DIRECT_BYTES)  # page-aligned, reused for the whole file
                self._spare = mmap.mmap(-1, DIRECT_BYTES)
                self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="filestore-io")
            else:
                self._plain = True
            self.size += head
            view = view[head:]
        if self._direct is None:
            self._file.write(view)
        else:
            self._buffer(view)
        self.size += len(view)
        return size

    def _buffer(self, data: memoryview) -> None:
        """Through the aligned buffer: every time it is full, one O_DIRECT write of all of it."""
        assert self._direct is not None
        at = 0
        while at < len(data):
            n = min(DIRECT_BYTES - self._held, len(data) - at)
            self._direct[self._held:self._held + n] = data[at:at + n]
            self._held += n
            at += n
            if self._held == DIRECT_BYTES:  # full: written on the io thread while the spare fills
                assert self._io is not None and self._spare is not None
                self._wait()
                self._writing = self._io.submit(self._write_all, self._direct, DIRECT_BYTES)
                self._direct, self._spare, self._held = self._spare, self._direct, 0

    def _wait(self) -> None:
        """The spare's write done (its error raised here)."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def _write_all(self, buffer: mmap.mmap, n: int) -> None:
        assert self._file is not None
        view = memoryview(buffer)
        try:
            done = 0
            while done < n:
                try:
                    done += os.write(self._file.fileno(), view[done:n])
                except OSError as exc:  # a file system that took the flag but not the write
                    if exc.errno != errno.EINVAL or not self._set_direct(False):
                        raise
        finally:
            view.release()

    def _set_direct(self, on: bool) -> bool:
        assert self._file is not None
        fd = self._file.fileno()
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return False
        return True

    def _end_direct(self) -> None:
        """The writes in flight, the whole blocks of the buffer direct, the tail plainly."""
        if self._direct is None:
            return
        self._wait()
        whole = self._held - self._held % mmap.PAGESIZE
        self._write_all(self._direct, whole)
        self._set_direct(False)
        tail = self._direct[whole:self._held]
        while tail:
            tail = tail[os.write(self._file.fileno(), tail):]  # type: ignore[union-attr]
        self._held = 0

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
            try:
                if exc_type is None:
                    self._end_direct()
                    self._file.flush()
                    os.fsync(self._file.fileno())
            finally:
                if self._io is not None:  # a write in flight ends before the file is closed (or removed)
                    self._io.shutdown(wait=True)
                self._file.close()  # after a failed flush, close() fails again (the same bytes) but closes
                for buffer in (self._direct, self._spare):
                    if buffer is not None:
                        buffer.close()
            if exc_type is None:
                digest = self._hash.hexdigest()
                final = self._store.path(digest)
                final.parent.mkdir(parents=True, exist_ok=True)
                # Same content, same name: replacing an existing file is harmless and atomic.
                os.replace(self._tmp, final)
                self._sha256 = digest
                return
        except BaseException as failure:  # the file is not stored: its temporary bytes go
            self._tmp.unlink(missing_ok=True)
            if is_full(failure) and not isinstance(failure, StoreFull):
                raise StoreFull(self._store.root, self.size, _os_error(failure)) from failure
            raise
        self._tmp.unlink(missing_ok=True)
        if is_full(exc) and not isinstance(exc, StoreFull):
            raise StoreFull(self._store.root, self.size, _os_error(exc)) from exc


def _os_error(exc: BaseException | None) -> OSError:
    """The ENOSPC / EDQUOT OSError in `exc`'s chain (is_full(exc) holds)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- waiting for space ----------------------------------------------------------------------------

SPACE_WAIT_INITIAL_S = 5.0
SPACE_WAIT_CAP_S = 300.0
SPACE_FREED_MARGIN = 1024 * 1024  # free space grown by more than this since the failure: retry at once
# On each service's /metrics; deploy/observability/alerts.yml (FileStoreFull) alerts on it.
STORE_WAITING = Gauge("flows_file_store_waiting", "Instances of this process waiting for space on a full file store",
                      ("path",))


@dataclass(kw_only=True)
class _Waiting(Wait):
    root: Path
    free: int | None  # free bytes right after the failed attempt (its temporary file removed)
    needed: int  # bytes the attempt had written when the space ran out: at least that much is needed


@dataclass
class SpaceWaits(Backoffs[_Waiting]):
    """Work (per instance) that found the file store full, waiting for space in THIS process.

    Decision: a full disk is the platform's condition, not the instance's fault, so the instance keeps its state
    (Formatting in progress, Running) and nothing is appended to its history while it waits; the service's
    periodic pass asks `due(key)` and tries again: after SPACE_WAIT_INITIAL_S doubling to SPACE_WAIT_CAP_S, or
    at once when the store's free space has grown past what the failed attempt had (an operator freed space).
    Every attempt that fails writes ONE warning `store.full` (path, instance, free bytes, retry_in_s); the
    first success after waiting writes `store.space_again` (attempts, waited_s). Nothing blocks meanwhile: the
    handler returns, the partition and the other instances go on. The state is per process: after a restart,
    or on another replica, the first attempt finds out again (one more line), then backs off the same way.
    The arithmetic is services.runtime.backoff's, shared with interrupted work (backoff.Interruptions).

    Where the operator sees it: the log lines, and the gauge `flows_file_store_waiting{path}` on the service's
    /metrics (the alert FileStoreFull). Not in the instance's history: the hash-chained, audited history
    records what happened to the instance, and a full disk happened to the platform; the instance's state
    (still Formatting in progress / Running) is true, and what it waits for is in the service's figures.
    """

    initial_s: float = SPACE_WAIT_INITIAL_S
    cap_s: float = SPACE_WAIT_CAP_S
    _published: set[str] = field(default_factory=set)  # the paths of the gauge this process has set

    def due(self, key: int) -> bool:
        if super().due(key):
            return True
        wait = self.waiting[key]
        free = free_bytes(wait.root)
        return free is not None and free > max(wait.free or 0, wait.needed) + SPACE_FREED_MARGIN

    def failed(self, key: int, exc: BaseException, **context: Any) -> float:
        """Records a failed attempt (one log line); returns the seconds until the next one."""
        full = exc if isinstance(exc, StoreFull) else next(
            (e for e in _chain(exc) if isinstance(e, StoreFull)), None)
        cause = _os_error(exc)
        root = full.root if full is not None else Path(str(cause.filename or "."))
        wait = self.waiting.get(key)
        if wait is None:
            wait = self.waiting[key] = _Waiting(root=root, free=None, needed=0)
        for path, size in FileStore(root).sweep_temporaries() if full is not None else ():
            self.log.warning("store.stale_temporary_removed", path=str(path), bytes=size)
        wait.root, wait.free = root, free_bytes(root)
        wait.needed = max(wait.needed, full.written if full is not None else 0)
        delay = self._attempt_failed(wait)
        self.log.warning("store.full", path=str(root), instance=key, free_bytes=wait.free,
                         written_before_full=wait.needed, attempt=wait.attempts, retry_in_s=delay,
                         error=f"{type(cause).__name__}: [Errno {cause.errno}] {cause.strerror}", **context)
        return delay

    def done(self, key: int) -> None:
        wait = self._ended(key)
        if wait is not None:
            self.log.info("store.space_again", path=str(wait.root), instance=key, attempts=wait.attempts,
                          waited_s=round(time.monotonic() - wait.since, 1))

    def _publish(self) -> None:
        roots = {str(w.root) for w in self.waiting.values()} | set(self._published)
        for root in roots:
            STORE_WAITING.labels(path=root).set(sum(str(w.root) == root for w in self.waiting.values()))
        self._published = roots


def _chain(exc: BaseException | None) -> list[BaseException]:
    found: list[BaseException] = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found
