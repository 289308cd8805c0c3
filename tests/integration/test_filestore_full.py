"""The file store's writer on a REAL full file system (tests/fault_disk.py: a small tmpfs), at every step where
the kernel can answer ENOSPC: a write, the flush of the buffered tail when the `with` block ends, the large
file's path past the page cache, the temporary file itself (no inode left). Each time: StoreFull (an OSError,
errno ENOSPC, naming the store's folder), no temporary file, every byte of the failed file given back, and the
same writer works again once there is space. (Before, an ENOSPC met when the block ended left its temporary file
behind, holding the space it had taken.)

No database or broker here, but a real mount, so these run with the integration tests.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.runtime.filestore import (
    DIRECT_BYTES,
    SPACE_WAIT_INITIAL_S,
    STALE_TEMPORARY_S,
    WORK_PREFIX,
    FileStore,
    SpaceWaits,
    StoreFull,
    is_full,
)
from tests.fault_disk import SmallDisk, small_disk
from tests.log_capture import RecordedLog

pytestmark = pytest.mark.integration


def _nothing_left(disk: SmallDisk, free_before: int) -> None:
    assert disk.files("tmp") == [] and disk.files("sha256") == []
    assert disk.free_bytes() == free_before, "the failed file still holds space"


def _full(exc: pytest.ExceptionInfo[StoreFull], disk: SmallDisk) -> None:
    assert exc.value.errno == errno.ENOSPC and is_full(exc.value) and isinstance(exc.value, OSError)
    assert exc.value.root == disk.path and str(disk.path) in str(exc.value)


def test_a_write_that_does_not_fit_leaves_nothing_and_says_the_store_is_full(tmp_path: Path) -> None:
    with small_disk(tmp_path / "files", size_kb=64) as disk:
        store = FileStore(disk.path)
        free = disk.free_bytes()
        with pytest.raises(StoreFull) as exc:
            with store.writer() as w:
                for _ in range(100):
                    w.write(b"x" * 10_000)
        _full(exc, disk)
        assert 0 < exc.value.written < 64 * 1024
        _nothing_left(disk, free)


def test_a_tail_that_fails_only_at_the_end_of_the_block_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Small writes stay in the writer's buffer: the disk is found full by the flush when the block ends."""
    with small_disk(tmp_path / "files", size_kb=64) as disk:
        store = FileStore(disk.path)
        (disk.path / "filler").write_bytes(b"f" * (60 * 1024))
        free = disk.free_bytes()
        assert free < 8 * 1024
        with pytest.raises(StoreFull) as exc:
            with store.writer() as w:
                w.write(b"y" * 6_000)  # buffered (8 KB buffer): this write succeeds
                w.write(b"z" * 1_000)
        _full(exc, disk)
        assert disk.files("tmp") == [] and disk.free_bytes() == free
        (disk.path / "filler").unlink()
        sha, size = store.put_bytes(b"y" * 6_000 + b"z" * 1_000)  # room again: the same store works
        assert store.path(sha).read_bytes() == b"y" * 6_000 + b"z" * 1_000 and size == 7_000


def test_a_large_file_past_the_page_cache_that_does_not_fit_leaves_nothing(tmp_path: Path) -> None:
    with small_disk(tmp_path / "files", size_kb=6 * 1024) as disk:
        store = FileStore(disk.path)
        free = disk.free_bytes()
        block = bytes(range(256)) * 4096  # 1 MB
        with pytest.raises(StoreFull) as exc:
            with store.writer() as w:
                for _ in range(3 * DIRECT_BYTES // len(block)):
                    w.write(block)
        _full(exc, disk)
        _nothing_left(disk, free)
        disk.grow(16 * 1024)
        with store.writer() as w:
            for _ in range(3 * DIRECT_BYTES // len(block)):
                w.write(block)
        data = store.path(w.sha256).read_bytes()
        assert len(data) == w.size == 3 * DIRECT_BYTES and hashlib.sha256(data).hexdigest() == w.sha256


def test_no_inode_left_for_the_temporary_file_is_a_full_store_too(tmp_path: Path) -> None:
    with small_disk(tmp_path / "files", size_kb=1024, inodes=16) as disk:
        store = FileStore(disk.path)
        (disk.path / "tmp").mkdir()
        n = 0
        with pytest.raises(OSError) as no_inode:
            while n < 100:
                (disk.path / f"filler-{n}").touch()
                n += 1
        assert no_inode.value.errno == errno.ENOSPC
        with pytest.raises(StoreFull) as exc:
            with store.writer() as w:
                w.write(b"never")
        _full(exc, disk)
        assert disk.files("tmp") == []


def test_a_temporary_file_left_by_a_killed_writer_is_swept_once_stale_and_a_live_one_is_kept(tmp_path: Path) -> None:
    with small_disk(tmp_path / "files", size_kb=256) as disk:
        store = FileStore(disk.path)
        (disk.path / "tmp").mkdir()
        left = disk.path / "tmp" / "part-killed"  # what a writer killed with SIGKILL mid-file leaves
        left.write_bytes(b"k" * 200 * 1024)
        stale = time.time() - STALE_TEMPORARY_S - 60
        os.utime(left, (stale, stale))
        live = disk.path / "tmp" / "part-live"
        live.write_bytes(b"l" * 4096)
        with pytest.raises(StoreFull):
            store.put_bytes(b"d" * 100 * 1024)
        assert store.sweep_temporaries() == [(left, 200 * 1024)]
        assert disk.files("tmp") == [live]
        sha, _ = store.put_bytes(b"d" * 100 * 1024)  # the space it held is the store's again
        assert store.exists(sha)



def test_a_730_work_folder_left_by_a_killed_formatter_is_swept_once_its_newest_file_is_stale(tmp_path: Path) -> None:
    """The 730 formatter builds its zip parts in tmp/work-730-...; a kill -9 leaves the folder. It goes once nothing
    in it was written for STALE_TEMPORARY_S; one with a fresh part (a formatter still building) stays."""
    with small_disk(tmp_path / "files", size_kb=512) as disk:
        store = FileStore(disk.path)
        stale = time.time() - STALE_TEMPORARY_S - 60
        left, live = disk.path / "tmp" / f"{WORK_PREFIX}730-7-abc", disk.path / "tmp" / f"{WORK_PREFIX}730-8-def"
        for folder in (left, live):
            folder.mkdir(parents=True)
            (folder / "p1.zip").write_bytes(b"z" * 100 * 1024)
            (folder / "p2.zip").write_bytes(b"z" * 50 * 1024)
            for path in (folder / "p1.zip", folder / "p2.zip", folder):
                os.utime(path, (stale, stale))
        os.utime(live / "p2.zip")  # being written now
        free = disk.free_bytes()
        assert store.sweep_temporaries() == [(left, 150 * 1024)]
        assert not left.exists() and sorted(p.name for p in live.iterdir()) == ["p1.zip", "p2.zip"]
        assert disk.free_bytes() >= free + 150 * 1024  # (and the folder's own page)


def test_space_waits_back_off_and_retry_at_once_when_space_is_freed(tmp_path: Path) -> None:
    with small_disk(tmp_path / "files", size_kb=64) as disk:
        store = FileStore(disk.path)
        log = RecordedLog()
        waits = SpaceWaits(log)
        assert waits.due(7)  # nothing known: try
        for attempt in (1, 2):
            with pytest.raises(StoreFull) as full:
                store.put_bytes(b"x" * 100 * 1024)
            assert waits.failed(7, full.value) == SPACE_WAIT_INITIAL_S * attempt
            assert not waits.due(7)  # backed off: not before the delay ...
        assert [(level, event) for level, event, _ in log.lines] == [("warning", "store.full")] * 2
        line = log.lines[-1][2]
        assert line["path"] == str(disk.path) and line["instance"] == 7 and line["attempt"] == 2
        assert "No space left on device" in line["error"] and line["free_bytes"] == disk.free_bytes()
        assert REGISTRY.get_sample_value("flows_file_store_waiting", {"path": str(disk.path)}) == 1
        disk.grow(4 * 1024)
        assert waits.due(7)  # ... unless space was freed: then at once
        store.put_bytes(b"x" * 100 * 1024)
        waits.done(7)
        assert log.lines[-1][:2] == ("info", "store.space_again") and log.lines[-1][2]["attempts"] == 2
        assert REGISTRY.get_sample_value("flows_file_store_waiting", {"path": str(disk.path)}) == 0
        waits.done(7)  # done twice, or for work that never waited: no line
        assert len(log.lines) == 3
