import hashlib
from pathlib import Path

import pytest

from services.runtime.filestore import FileStore


def test_put_bytes_stores_the_file_under_its_sha256(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    sha, size = store.put_bytes(b"C1 of November\n")
    assert sha == hashlib.sha256(b"C1 of November\n").hexdigest() and size == 15
    assert store.path(sha) == tmp_path / "sha256" / sha[:2] / sha[2:]
    with store.open(sha) as f:
        assert f.read() == b"C1 of November\n"


def test_put_stream_hashes_the_concatenation(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    assert store.put_stream([b"150", b"201", b"\n"]) == store.put_bytes(b"150201\n")


def test_the_writer_is_a_binary_sink_committed_on_exit(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with store.writer() as w:
        w.write(b"row 01\n")
        w.write(memoryview(b"row 99\n"))
    assert w.size == 14 and store.exists(w.sha256)


def test_a_failed_write_leaves_nothing_in_the_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(b"half a file")
        raise RuntimeError("formatter crashed")
    assert not list((tmp_path / "sha256").glob("*/*")) and not list((tmp_path / "tmp").iterdir())
    with pytest.raises(RuntimeError, match="not committed"):
        _ = w.sha256


def test_storing_the_same_content_twice_is_harmless(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    assert store.put_bytes(b"same") == store.put_bytes(b"same")
    assert len(list((tmp_path / "sha256").glob("*/*"))) == 1


def test_a_missing_file_or_a_bad_address_is_an_explicit_error(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.open("0" * 64)
    with pytest.raises(ValueError, match="not a sha256"):
        store.path("../../etc/passwd")
