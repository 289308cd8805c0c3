"""The end of a user's access ends its open live streams at once: a logout (in another tab), a disable, a new
password, an ente no longer among the user's.

PostgreSQL announces it. The triggers of migration 0066 NOTIFY on `CHANNEL`, in the transaction that makes the
change (so the notice goes out when, and only if, it commits): `session:<SHA-256 hex>` when a console_session row
is deleted (the table's own SHA-256 of the cookie, never the cookie), `user:<name>` when a console_user's role,
enti, structure or disabled flag changes, `all` when console_session is truncated. Every path announces it:
auth.close_session, disable_user, set_password, open_session replacing an earlier cookie, an OIDC login with other
claims (oidc.upsert_user), a row changed by hand.

Every console process (each replica) LISTENs on a connection of its own, outside the pool (the pool's connections
go from request to request, and asyncpg drops a connection's listeners when it goes back). A notice does not end a
stream by itself: it wakes the open streams of that session or user, and each checks its session in the database
at once, exactly as at its keep-alive (instance_pages.py `_stream_still_allowed`); one that no longer reads its
instance ends (console.js: "Aggiornamento automatico terminato ..."). So a NOTIFY sent by anyone else ends nothing
still allowed, and a lost notice costs at most the keep-alive period (instance_pages.py STREAM_CHECK_S, 15 s), which
stays as the safety net.

A LISTEN connection that dies (PostgreSQL restarted, the backend terminated; a silent network is found by a probe
every PROBE_S) is opened again, RELISTEN_FIRST_S doubling to RELISTEN_CAP_S; once it listens again every open
stream checks once, which covers whatever was announced while nobody listened. `listening` is set while it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger("console.access_watch")

CHANNEL = "console_access"  # migration 0066's triggers
APPLICATION_NAME = "flows-console-access"  # the LISTEN connection in pg_stat_activity
PROBE_S = 15.0
PROBE_TIMEOUT_S = 10.0
RELISTEN_FIRST_S = 1.0
RELISTEN_CAP_S = 30.0
_PROBE = "SELECT $1 = ANY(ARRAY(SELECT pg_listening_channels()))"


class Watched:
    """One open stream: its session (SHA-256 hex of the cookie) and user. `recheck` is set when either may have
    ended; the stream clears it before it checks."""

    __slots__ = ("recheck", "session", "user")

    def __init__(self, session: str, user: str) -> None:
        self.session, self.user = session, user
        self.recheck = asyncio.Event()


class AccessWatch:
    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._by_session: dict[str, set[Watched]] = defaultdict(set)
        self._by_user: dict[str, set[Watched]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def watch(self, session_sha256: bytes, user: str) -> Watched:
        watched = Watched(session_sha256.hex(), user)
        self._by_session[watched.session].add(watched)
        self._by_user[user].add(watched)
        return watched

    def unwatch(self, watched: Watched) -> None:
        for index, key in ((self._by_session, watched.session), (self._by_user, watched.user)):
            index[key].discard(watched)
            if not index[key]:
                index.pop(key, None)

    def notice(self, payload: str) -> int:
        """Wakes the streams a notice names; how many."""
        kind, _, what = payload.partition(":")
        if kind == "session":
            targets = list(self._by_session.get(what, ()))
        elif kind == "user":
            targets = list(self._by_user.get(what, ()))
        elif payload == "all":
            return self.wake_all()
        else:
            log.warning("console.access_notice_unknown", payload=payload[:80])
            return 0
        for watched in targets:
            watched.recheck.set()
        return len(targets)

    def wake_all(self) -> int:
        woken = 0
        for streams in list(self._by_session.values()):
            for watched in streams:
                watched.recheck.set()
                woken += 1
        return woken

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notice(payload)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-access-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.listening.clear()

    async def _run(self) -> None:
        delay = RELISTEN_FIRST_S
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL away: the streams keep their keep-alive check meanwhile
                if self.listening.is_set():
                    delay = RELISTEN_FIRST_S  # it had listened: the backoff starts again
                self.listening.clear()
                log.warning("console.access_watch_lost", error=f"{type(exc).__name__}: {exc}"[:300],
                            retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RELISTEN_CAP_S)

    async def _listen(self) -> None:
        """Listens until the connection is lost (raises); the connection is closed on the way out."""
        conn = await asyncpg.connect(self._url, timeout=PROBE_TIMEOUT_S,
                                     server_settings={"application_name": APPLICATION_NAME})
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._on_notify)
            self.listening.set()
            # Listening first, then every stream checks: a change committed before the LISTEN is seen by the
            # check, one committed after it is announced.
            log.info("console.access_watch_listening", streams_checked=self.wake_all())
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), PROBE_S)
                # A silent network is found here, and a LISTEN undone (an UNLISTEN, a DISCARD ALL by a proxy).
                if not lost.is_set() and not await conn.fetchval(_PROBE, CHANNEL, timeout=PROBE_TIMEOUT_S):
                    raise ConnectionError(f"the connection no longer listens on {CHANNEL}")
            raise ConnectionError("the LISTEN connection was closed")
        finally:
            if not conn.is_closed():
                try:
                    await asyncio.wait_for(conn.close(), PROBE_TIMEOUT_S)
                except Exception:
                    conn.terminate()
