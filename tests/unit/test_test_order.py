"""tests/conftest.py's LONGEST_FIRST names files that exist: a file renamed or removed would leave it an order that
no longer puts the long files first, silently."""

from __future__ import annotations

from tests.conftest import LONGEST_FIRST, TESTS


def test_every_file_of_the_longest_first_order_exists_once() -> None:
    assert [name for name in LONGEST_FIRST if not (TESTS / name).is_file()] == []
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
