"""The instance list's rebuild reads its events as COPY text (services.runtime.projections.copy_rows,
InstanceListRebuild.feed_copy): what that text carries must come back as the values the inline projection wrote.
Text holding the format's own characters (tab, newline, carriage return, backslash, a literal \\N), NULL against
'' where both exist, JSON with escapes, and timestamps in a session whose DateStyle is not ISO (they are read
back by PostgreSQL, not parsed in Python) or whose time zone is not UTC."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.host import prepare_database
from services.runtime.projections import copy_rows, rebuild_and_diff
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream

pytestmark = pytest.mark.integration

AWKWARD = ("tab\there", "line\nbreak", "cr\rhere", "back\\slash", "\\N", "\\\\N", "", " ", "caffè €", "\b\f\v",
           "quote \" and '", "end\\")


async def test_copy_rows_gives_what_a_query_gives(conn: asyncpg.Connection) -> None:
    """Every awkward text, NULL and '' side by side, a json value with escapes: copy_rows of the COPY text equals
    the rows asyncpg decodes from the same query (as text)."""
    query = ("SELECT t, NULL::text, '', t || E'\\t' || t, to_jsonb(t)::text, (i * 7)::text "
             "FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i)")
    expected = [list(r) for r in await conn.fetch(query, list(AWKWARD))]
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    literal = "ARRAY[" + ", ".join("'" + t.replace("'", "''") + "'" for t in AWKWARD) + "]::text[]"
    await conn.copy_from_query(query.replace("$1::text[]", literal), output=sink)
    got = copy_rows(b"".join(chunks).decode())
    assert got == expected
    assert any("\\" in line for line in b"".join(chunks).decode().split("\n"))  # the escape path was taken
    assert copy_rows("a\tb\n\\N\t\n") == [["a", "b"], [None, ""]]


def awkward_histories() -> dict[int, list[NewEvent]]:
    """Raw payloads (no contract model between them and the log): each instance puts other awkward values where the
    rebuild reads them as text, JSON or NULL. (An instance_outcome of '' is no case: the inline projection computes
    the move from every state, and '' is no outcome of any.)"""
    def running(instance: int, **over: object) -> NewEvent:
        data = {"instance": instance, "request_id": str(uuid.UUID(int=instance)), "flow_type": "FLUSSO_C",
                "version": "2020", "ente": "201", "period": {"start": "2026-10-01", "end": "2026-10-31"},
                "requested_by": "op.rossi", **over}
        return NewEvent(type="flows.load-running", data=data)

    def ref(name: str) -> dict[str, object]:
        return {"name": name, "kind": "C1\tx", "records": 3, "bytes": 120, "sha256": "a" * 64}

    histories: dict[int, list[NewEvent]] = {}
    for n, text in enumerate(AWKWARD, start=1):
        histories[n] = [
            running(n, ente=text or "201", requested_by=text, version=text),
            NewEvent(type="flows.load-checked", data={"instance": n, "source_instance": n + 100, "warnings": n,
                                                      "counts": {text: n, "k": text}, "summary": text}),
            NewEvent(type="flows.load-failed", data={"instance": n, "errors": n, "summary": text or None,
                                                     "feedback": {**ref(f"fb_{n}{text}.csv"), "media_type": text}}),
        ]
    last = len(AWKWARD)
    histories[last + 1] = [  # scheduled: request_id absent then null; an outcome, then none
        NewEvent(type="flows.load-scheduled", data={
            "instance": last + 1, "flow_type": "FLUSSO_730", "version": "2020", "ente": "", "requested_by": "",
            "period": {"start": "2026-10-01", "end": "2026-10-31"}, "scheduled_at": "2026-11-02T06:00:00+01:00"}),
        running(last + 1, request_id=None),
        NewEvent(type="flows.ts-feedback-received", data={"instance": last + 1, "instance_outcome": "confirmed",
                                                          "reason": "motivo\tcon\ttab"}),
        NewEvent(type="flows.ts-feedback-received", data={"instance": last + 1, "instance_outcome": None}),
        NewEvent(type="flows.format-failed", data={"instance": last + 1, "reasons": ["a\\b", "c\nd"]}),
        NewEvent(type="flows.formatted", data={"instance": last + 1, "files": [ref("out\\1.txt"), ref("out\n2")]}),
        NewEvent(type="flows.instance-deleted", data={"instance": last + 1, "deleted_by": "op\trossi",
                                                      "reason": "\\N"}),
    ]
    return histories


@pytest.mark.parametrize("session", [{}, {"DateStyle": "SQL, DMY", "TimeZone": "Asia/Kolkata"},
                                     {"DateStyle": "ISO, MDY", "TimeZone": "America/St_Johns"}],
                         ids=["default", "sql-dmy-kolkata", "iso-st-johns"])
async def test_awkward_values_rebuild_as_the_inline_projection_wrote_them(fresh_db: str,
                                                                           session: dict[str, str]) -> None:
    pool = await create_pool(fresh_db, min_size=1, max_size=2)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
        store = EventStore(pool, source="/flows/test", projections=FLOW_PROJECTIONS)
        histories = awkward_histories()
        for instance, history in histories.items():
            for version, event in enumerate(history):
                await store.append(instance_stream(instance), [event], expected_version=version, key=str(instance))
        live = {r["instance"]: r for r in await pool.fetch("SELECT * FROM instance_list")}
        assert len(live) == len(histories)
        assert live[1]["ente"] == "tab\there" and live[2]["summary"] == "line\nbreak"
        assert live[len(AWKWARD) + 1]["deletion_reason"] == "\\N"
        assert await pool.fetchval("SELECT count(*) FROM instance_files WHERE kind = 'C1\tx'") == len(AWKWARD) + 2
    finally:
        await pool.close()
    # The rebuild in a session of other settings: timestamps come out in that DateStyle and time zone.
    rebuilding = await create_pool(fresh_db, min_size=1, max_size=1, server_settings=session)
    try:
        if session:
            assert await rebuilding.fetchval("SHOW DateStyle") == session["DateStyle"]
        report = await rebuild_and_diff(rebuilding, FLOW_PROJECTIONS)
        assert report.events_replayed == sum(len(h) for h in histories.values())
        assert report.differences == []
        # ... and a difference in a timestamp shows: the rebuilt ones are not taken from the live table.
        await rebuilding.execute("UPDATE instance_list SET state_since = state_since + interval '1 microsecond' "
                                 "WHERE instance = 1")
        await rebuilding.execute("UPDATE instance_files SET added_at = added_at - interval '1 microsecond' "
                                 "WHERE instance = 2")
        report = await rebuild_and_diff(rebuilding, FLOW_PROJECTIONS)
        assert sorted((d.table, d.only_in) for d in report.differences) == [
            ("instance_files", "live"), ("instance_files", "rebuilt"), ("instance_list", "live"),
            ("instance_list", "rebuilt")]
    finally:
        await rebuilding.close()


class _Failing:
    """A read model whose COPY fold raises at the log's last event (a payload it cannot read, say): PostgreSQL has
    sent the whole COPY by then, the case where a cancel of it lands on the next statement instead."""

    name = "failing"
    tables = {"failing_rows": "CREATE TABLE IF NOT EXISTS failing_rows (n int)"}

    async def apply(self, conn: asyncpg.Connection, event: object) -> None:
        return None

    def rebuilder(self) -> _Failing:
        return self

    events_where = "true"
    copy_columns = "type, stream_id, data->>'n'"

    def feed_copy(self, rows: list[list[str | None]]) -> None:
        for kind, stream, n in rows:
            if (stream, n) == ("note-19", "99"):
                raise ValueError(f"cannot fold {kind} {n} of {stream}")

    async def write(self, conn: asyncpg.Connection) -> None:
        raise AssertionError("never written: the fold failed")


async def test_a_fold_that_raises_mid_copy_leaves_the_connection_usable(pool: asyncpg.Pool) -> None:
    """The error comes out of rebuild() as the fold raised it, and the connection is still there (asyncpg's own
    handling of a failing COPY sink cancels the COPY from a second connection: the first was then closed or
    hung), so the transaction rolls back and the next statement runs."""
    from services.runtime.projections import rebuild

    await prepare_database(pool, [])
    store = EventStore(pool, source="/flows/test")
    for n in range(20):  # enough rows for several chunks of COPY output
        await store.append(f"note-{n}", [NewEvent(type="audit.note", data={"text": "x" * 200, "n": i})
                                         for i in range(100)], expected_version=0, key=str(n), publish=False)
    async with pool.acquire() as conn:
        tx = conn.transaction(isolation="repeatable_read")
        await tx.start()
        with pytest.raises(ValueError, match=r"cannot fold audit\.note 99 of note-19"):
            await rebuild(conn, [_Failing()], "failing_scratch")
        await tx.rollback()
        assert await conn.fetchval("SELECT count(*) FROM events") == 2000
