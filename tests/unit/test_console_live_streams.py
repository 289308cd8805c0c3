"""The pieces of an open stream's loop, without I/O: `next_change` (the next event, or None when the stream must
check its session) never loses an event, and AccessWatch.notice wakes exactly the streams a notice names."""

from __future__ import annotations

import asyncio
import hashlib

from services.console.access_watch import AccessWatch
from services.console.live import next_change


async def test_a_wake_comes_before_the_events_waiting_and_leaves_them_queued() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    wake = asyncio.Event()
    queue.put_nowait("flows.load-checked")
    wake.set()
    assert await next_change(queue, wake, timeout=3600) is None
    wake.clear()
    assert await next_change(queue, wake, timeout=3600) == "flows.load-checked"


async def test_an_event_and_a_wake_at_the_same_moment_lose_no_event() -> None:
    """Both arrive while next_change waits: whichever it returns, the event is delivered now or stays queued."""
    for _ in range(50):
        queue: asyncio.Queue[str] = asyncio.Queue()
        wake = asyncio.Event()
        waiting = asyncio.create_task(next_change(queue, wake, timeout=3600))
        await asyncio.sleep(0)  # next_change is waiting on both
        queue.put_nowait("flows.formatted")
        wake.set()
        got = await waiting
        delivered = [got] if got is not None else []
        while not queue.empty():
            delivered.append(queue.get_nowait())
        assert delivered == ["flows.formatted"]


async def test_a_wake_while_waiting_returns_none_and_the_timeout_too() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    wake = asyncio.Event()
    waiting = asyncio.create_task(next_change(queue, wake, timeout=3600))
    await asyncio.sleep(0)
    wake.set()
    assert await waiting is None
    wake.clear()
    assert await next_change(queue, wake, timeout=0.01) is None
    queue.put_nowait("flows.load-running")
    assert await next_change(queue, wake, timeout=3600) == "flows.load-running"


def _sha(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def test_a_notice_wakes_the_streams_it_names_and_no_other() -> None:
    access = AccessWatch("postgresql://unused")
    first = access.watch(_sha("cookie-1"), "op.201")
    again = access.watch(_sha("cookie-1"), "op.201")  # a second tab of the same session
    other_session = access.watch(_sha("cookie-2"), "op.201")
    other_user = access.watch(_sha("cookie-3"), "op.202")

    def woken() -> set[int]:
        found = {index for index, w in enumerate((first, again, other_session, other_user)) if w.recheck.is_set()}
        for w in (first, again, other_session, other_user):
            w.recheck.clear()
        return found

    assert access.notice("session:" + _sha("cookie-1").hex()) == 2 and woken() == {0, 1}
    assert access.notice("user:op.201") == 3 and woken() == {0, 1, 2}
    assert access.notice("session:" + "00" * 32) == 0 and woken() == set()
    assert access.notice("something else") == 0 and woken() == set()
    assert access.notice("all") == 4 and woken() == {0, 1, 2, 3}
    access.unwatch(first)
    access.unwatch(again)
    assert access.notice("session:" + _sha("cookie-1").hex()) == 0 and woken() == set()
    assert access.notice("user:op.201") == 1 and woken() == {2}
