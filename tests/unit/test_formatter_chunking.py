"""Where the writer cuts the COPY stream: whole lines, and for Flusso C whole prescriptions."""

from __future__ import annotations

import random

from services.formatter.layouts import load_layout
from services.formatter.writer import chunk_end, copy_columns, copy_query


def _lines(groups: list[tuple[str, int]]) -> bytes:
    return b"".join(f"{g}\t{r:02d}\tx\n".encode() for g, n in groups for r in range(1, n + 1))


def _cut_all(buf: bytes, size: int, grouped: bool) -> list[bytes]:
    """What the writer queues from a buffer that holds the whole stream, the tail included."""
    chunks, start = [], 0
    while len(buf) - start >= size:
        end = chunk_end(buf, start, size, grouped)
        if end == 0:
            break
        chunks.append(buf[start:end])
        start = end
    chunks.append(buf[start:])
    return [c for c in chunks if c]


def _groups_of(chunk: bytes) -> list[str]:
    return [line.split(b"\t")[0].decode() for line in chunk.splitlines()]


def test_a_grouped_chunk_ends_before_the_group_that_may_continue() -> None:
    buf = _lines([("A", 2), ("B", 3), ("C", 2)])
    line = len(b"A\t01\tx\n")
    # a window of 4 lines ends inside B: the chunk is A's two lines, B starts the next one
    assert chunk_end(buf, 0, 4 * line, grouped=True) == 2 * line
    # ungrouped: whole lines only
    assert chunk_end(buf, 0, 4 * line + 3, grouped=False) == 4 * line


def test_a_group_longer_than_the_window_ends_where_the_group_ends_or_waits_for_it() -> None:
    buf = _lines([("A", 5), ("B", 1)])
    line = len(b"A\t01\tx\n")
    assert chunk_end(buf, 0, 2 * line, grouped=True) == 5 * line
    # the group has not ended in what was received so far: wait for more
    assert chunk_end(_lines([("A", 5)]), 0, 2 * line, grouped=True) == 0


def test_a_line_longer_than_the_window_is_one_chunk_and_a_partial_line_waits() -> None:
    buf = b"A\t" + b"y" * 100 + b"\nB\t01\n"
    assert chunk_end(buf, 0, 10, grouped=False) == 103
    assert chunk_end(b"A\t" + b"y" * 100, 0, 10, grouped=False) == 0


def test_a_key_that_is_a_prefix_of_the_next_key_is_another_group() -> None:
    buf = _lines([("P1", 2), ("P12", 2)])
    line = len(b"P1\t01\tx\n")
    assert chunk_end(buf, 0, 3 * line + 1, grouped=True) == 2 * line


def test_cutting_random_streams_never_splits_a_group_and_loses_nothing() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        groups = [(f"P{i:0{rnd.randint(1, 4)}d}", rnd.randint(1, 8)) for i in range(rnd.randint(1, 60))]
        groups = list(dict(groups).items())  # one run per key, as ORDER BY gives
        buf = _lines(groups)
        size = rnd.randint(5, 400)
        chunks = _cut_all(buf, size, grouped=True)
        assert b"".join(chunks) == buf
        seen: set[str] = set()
        for chunk in chunks:
            assert chunk.endswith(b"\n")
            keys = set(_groups_of(chunk))
            assert not keys & seen, "a group was split across two chunks"
            seen |= keys


def test_the_copy_puts_the_group_column_first() -> None:
    layout = load_layout("FLUSSO_C", "2020")
    names = copy_columns(layout)
    assert names[0] == "prescription_id" and sorted(names) == sorted(layout.columns())
    assert copy_query(layout, 5).startswith("SELECT prescription_id, ")
    mef = load_layout("FLUSSO_MEF", "2020")
    assert copy_columns(mef) == list(mef.columns())
