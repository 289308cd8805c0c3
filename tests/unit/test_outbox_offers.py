"""OutboxRelay's choice between sending the rows its notifications named, as their appends offered them, and reading
the outbox (`_offered_rows`): every rule that makes a pass read instead. The relay's sends and reads on the real stack
are in tests/integration/test_outbox.py."""

from __future__ import annotations

import time
from typing import Any, cast

import asyncpg

from services.runtime.outbox import PARKED_CHANGED, OutboxRelay

APPENDER, STRANGER = 4101, 4102  # server process ids: the appending connection's, and another session's


def row(row_id: int, key: str = "9") -> dict[str, Any]:
    return {"id": row_id, "event_id": f"e{row_id}", "topic": "t", "key": key, "headers": "[]", "payload": "{}"}


def relay(*offered: dict[str, Any], caught_up: bool = True) -> OutboxRelay:
    """A leader relay (no pool: only its choice is used) whose appends offered `offered` (their rows but the ids)."""
    relay = OutboxRelay(cast(asyncpg.Pool, None), "127.0.0.1:1")
    relay.is_leader = True
    for r in offered:
        relay.offer(r["event_id"], APPENDER, {k: v for k, v in r.items() if k != "id"})
    relay._caught_up = caught_up
    return relay


def named(row_id: int) -> str:
    """What the append of row `row_id` NOTIFYs (services.runtime.eventstore._NAMED_WAKE): its id and its event's."""
    return f"{row_id} e{row_id}"


def woken(relay: OutboxRelay, *wakes: tuple[int, str]) -> list[dict[str, Any]] | None:
    relay._wakes = list(wakes)
    return relay._offered_rows()


def test_offered_rows_named_by_their_appenders_notifications_go_in_the_notifications_order() -> None:
    r = relay(row(1), row(2, "8"), row(3))
    assert woken(r, (APPENDER, named(3)), (APPENDER, named(1)), (APPENDER, named(2))) == [row(3), row(1), row(2, "8")]
    assert r._offers == {}  # each offer is used once
    assert woken(r) is None  # no notification: the pass reads (the poll, the marks)


def test_every_other_wake_up_makes_the_pass_read() -> None:
    cases = {
        "not caught up (the relay's first pass, a full batch, a failed send)": (relay(row(1), caught_up=False),
                                                                               [(APPENDER, named(1))]),
        "a row offered by no one here (another process appended it)": (relay(row(1)), [(APPENDER, named(1)),
                                                                                      (APPENDER, named(2))]),
        "a NOTIFY of another session naming an offered row": (relay(row(1)), [(STRANGER, named(1))]),
        "an append of several events (its wake-up names no row)": (relay(row(1)), [(APPENDER, named(1)),
                                                                                   (APPENDER, "")]),
        "a parked row retried or skipped": (relay(row(1)), [(APPENDER, PARKED_CHANGED), (APPENDER, named(1))]),
        "anything else on the channel": (relay(row(1)), [(STRANGER, "[1, 2]"), (APPENDER, named(1))]),
        "not a plain number": (relay(row(1)), [(APPENDER, "¹"), (APPENDER, named(1))]),
    }
    for why, (r, wakes) in cases.items():
        assert woken(r, *wakes) is None, why
        assert r._offers == {}, why  # the offers named are dropped: the read sends those rows


def test_a_row_of_a_stream_with_a_parked_row_is_left_to_the_read() -> None:
    r = relay(row(1, "7"), row(2, "8"))
    r._parked_keys = {"8"}
    assert woken(r, (APPENDER, named(1)), (APPENDER, named(2))) is None


def test_rows_a_recent_read_sent_are_not_sent_again() -> None:
    r = relay(row(5), row(6), row(7))
    r._read_ids = (frozenset({5}), frozenset({6}))  # the last two reads'
    assert woken(r, (APPENDER, named(5)), (APPENDER, named(6)), (APPENDER, named(7))) == [row(7)]
    r = relay()
    r._read_ids = (frozenset(), frozenset({9}))  # read already, offered by no one here: nothing to read for it
    assert woken(r, (STRANGER, named(9))) == []


def test_dropped_notifications_and_due_marks_make_the_pass_read() -> None:
    r = relay(row(1))
    r._wakes_dropped = True
    assert woken(r, (APPENDER, named(1))) is None
    assert woken(r) is None and r._wakes_dropped is False
    r = relay(row(1), row(2))
    r._unmarked, r._unmarked_since = [40], time.monotonic() - r.MARK_DELAY_S
    assert woken(r, (APPENDER, named(1))) is None
    r._unmarked_since = time.monotonic()
    assert woken(r, (APPENDER, named(2))) == [row(2)]
    r = relay(row(1))
    r._unmarked = list(range(r._batch_size))
    r._unmarked_since = time.monotonic()
    assert woken(r, (APPENDER, named(1))) is None


def test_offers_are_kept_only_by_the_leader_and_only_so_many() -> None:
    r = relay(caught_up=True)
    r.is_leader = False
    r.offer("e1", APPENDER, row(1))
    assert r._offers == {}
    r.is_leader = True
    r.OFFERS_KEPT = 3
    for n in range(1, 6):
        r.offer(f"e{n}", APPENDER, row(n))
    assert list(r._offers) == ["e3", "e4", "e5"]  # a rolled-back append's offer is never named: the oldest go
