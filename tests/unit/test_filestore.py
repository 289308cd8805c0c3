import hashlib
from pathlib import Path

import pytest

from services.runtime.filestore import DIRECT_BYTES, FileStore


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


def _pieces(total: int, seed: int) -> list[bytes]:
    """Pieces of odd sizes (a formatter chunk is never a whole number of blocks) adding up to `total`."""
    import random

    rng = random.Random(seed)
    out: list[bytes] = []
    size = 0
    while size < total:
        n = min(rng.randint(1, 3 * DIRECT_BYTES // 2), total - size)
        out.append(bytes([65 + len(out) % 26]) * n)
        size += n
    return out


@pytest.mark.parametrize("total", [DIRECT_BYTES - 1, DIRECT_BYTES, 3 * DIRECT_BYTES + 4097, 5 * DIRECT_BYTES])
def test_a_large_file_written_past_the_page_cache_has_the_same_bytes_and_hash(tmp_path: Path, total: int) -> None:
    store = FileStore(tmp_path)
    pieces = _pieces(total, total)
    with store.writer() as w:
        for piece in pieces:
            assert w.write(memoryview(piece)) == len(piece)
        went_direct = w._direct is not None
    whole = b"".join(pieces)
    assert w.size == total and w.sha256 == hashlib.sha256(whole).hexdigest()
    assert store.path(w.sha256).read_bytes() == whole
    assert went_direct == (total >= DIRECT_BYTES)
    assert not list((tmp_path / "tmp").iterdir())


def test_a_large_file_that_starts_with_small_writes_is_still_whole(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    head, body = b"x" * 1001, b"y" * (2 * DIRECT_BYTES + 5)  # the big write starts off a block boundary
    with store.writer() as w:
        w.write(head)
        w.write(body)
        assert w._direct is not None
    assert store.path(w.sha256).read_bytes() == head + body


def test_a_failed_large_write_leaves_nothing_in_the_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(b"z" * (3 * DIRECT_BYTES + 17))
        raise RuntimeError("killed half way")
    assert not list((tmp_path / "sha256").glob("*/*")) and not list((tmp_path / "tmp").iterdir())
