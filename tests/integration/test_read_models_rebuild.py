"""The instance list's bulk rebuild (folded in memory, written set-based) leaves exactly the rows the inline,
event-by-event projection left: every lifecycle path, files replaced by name, illegal and orphan events, a
deletion kept as data (who, the reason or none) beside the summary it leaves as it was."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import asyncpg
import pytest

from contracts import flows
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.host import prepare_database
from services.runtime.instances import new_event
from services.runtime.migrations import migrate
from services.runtime.projections import rebuild_and_diff
from services.runtime.read_models import FLOW_PROJECTIONS, InstanceList, instance_stream

pytestmark = pytest.mark.integration

PERIOD = flows.Period(start=date(2026, 10, 1), end=date(2026, 10, 31))


def file(name: str, kind: str, sha: str = "a", **extra: object) -> flows.FileRef:
    return flows.FileRef(name=name, kind=kind, records=3, bytes=120, sha256=sha * 64, **extra)  # type: ignore[arg-type]


def created(instance: int, flow: str = "FLUSSO_C", scheduled: bool = False) -> flows.Payload:
    common = dict(instance=instance, request_id=uuid.uuid4(), flow_type=flows.FlowType(flow), version="2020",
                  ente="201", period=PERIOD, requested_by="op.rossi")
    if scheduled:
        return flows.LoadScheduled(**common, scheduled_at=datetime(2026, 11, 2, 6, tzinfo=UTC))  # type: ignore[arg-type]
    return flows.LoadRunning(**common)  # type: ignore[arg-type]


def histories() -> dict[int, list[flows.Payload | NewEvent]]:
    fed = file("feedback_3.csv", "feedback", "b", media_type="text/csv")
    return {
        1: [created(1), flows.LoadChecked(instance=1, source_instance=11, counts={"services": 12}, warnings=1),
            flows.FormatRequested(instance=1, requested_by="op.rossi"), flows.FormattingStarted(instance=1),
            flows.Formatted(instance=1, files=[file("C1_1.txt", "C1"), file("C2_1.txt", "C2", "c")])],
        2: [created(2, scheduled=True), created(2),
            flows.LoadFailed(instance=2, source_instance=21, errors=3, summary="3 errori in 2 record",
                             feedback=fed.model_copy(update={"name": "feedback_2.csv"})),
            flows.InstanceDeleted(instance=2, deleted_by="op.rossi", reason="loaded twice")],
        3: [created(3), flows.LoadChecked(instance=3, source_instance=31, counts={}),
            flows.FormattingStarted(instance=3),
            flows.FormatFailed(instance=3, reasons=["disk full", "retry"], feedback=fed),
            flows.FormattingStarted(instance=3),
            flows.Formatted(instance=3, files=[file("feedback_3.csv", "C1", "d"), file("C2_3.txt", "C2")])],
        # 4 was never created: the read model ignores its events
        4: [flows.LoadChecked(instance=4, source_instance=41, counts={"services": 1})],
        5: [created(5), flows.Formatted(instance=5, files=[file("C1_5.txt", "C1")]),  # illegal: state stays
            NewEvent(type="audit.note", data={"text": "not a flows event"})],
        6: [created(6, "FLUSSO_730"), flows.LoadChecked(instance=6, source_instance=61, counts={"services": 2}),
            flows.FormattingStarted(instance=6),
            flows.Formatted(instance=6, files=[file("730_6_1.zip", "730-zip", part=1)]),
            flows.TsSubmitted(instance=6, part=1, parts=1, protocollo="12345678901234567", zip_sha256="e" * 64),
            flows.TsFeedbackReceived(instance=6, part=1, parts=1, outcome="confirmed_with_errors",
                                     reason="2 CF unknown", errors_file=file("errors_6.csv", "ts-errors"),
                                     receipt_file=file("receipt_6.pdf", "ts-receipt", media_type="application/pdf"),
                                     instance_outcome="confirmed_with_errors"),
            flows.TsFeedbackReceived(instance=6, part=1, parts=1, outcome="confirmed", instance_outcome=None)],
        # no feedback file: the bulk rebuild takes summary, errors and warnings from the columns it selects,
        # without decoding the payload
        7: [created(7), flows.LoadFailed(instance=7, source_instance=71, errors=2, warnings=1,
                                         summary="2 errori in 1 record")],
        # deleted without a reason, with no summary before it
        8: [created(8), flows.LoadChecked(instance=8, source_instance=81, counts={"services": 4}),
            flows.InstanceDeleted(instance=8, deleted_by="op.bianchi")],
        # deleted after a format failure, then an (illegal) late outcome with a summary of its own
        9: [created(9), flows.LoadChecked(instance=9, source_instance=91, counts={}),
            flows.FormattingStarted(instance=9), flows.FormatFailed(instance=9, reasons=["disco pieno"]),
            flows.InstanceDeleted(instance=9, deleted_by="op.rossi", reason="doppione"),
            flows.LoadFailed(instance=9, errors=1, summary="1 errore in 1 record")],
    }


async def test_the_bulk_rebuild_equals_the_inline_projection(pool: asyncpg.Pool) -> None:
    await prepare_database(pool, FLOW_PROJECTIONS)
    store = EventStore(pool, source="/flows/test", projections=FLOW_PROJECTIONS)
    for instance, history in histories().items():
        for version, item in enumerate(history):  # one append per event, as the services write them
            event = item if isinstance(item, NewEvent) else new_event(item, "loader")
            await store.append(instance_stream(instance), [event], expected_version=version, key=str(instance))
    live = {r["instance"]: dict(r) for r in await pool.fetch("SELECT * FROM instance_list")}
    assert {i: r["state"] for i, r in live.items()} == {
        1: "Formatted", 2: "Deleted", 3: "Formatted", 5: "Running", 6: "Confirmed with errors", 7: "Failed loading",
        8: "Deleted", 9: "Deleted"}
    assert (live[7]["summary"], live[7]["errors"], live[7]["warnings"]) == ("2 errori in 1 record", 2, 1)
    # A deletion is data, and the summary stays the last outcome's own text (no sentence of the read model's).
    deletions = {i: (r["summary"], r["deleted_by"], r["deletion_reason"]) for i, r in live.items()}
    assert deletions[2] == ("3 errori in 2 record", "op.rossi", "loaded twice")
    assert deletions[8] == (None, "op.bianchi", None)
    assert deletions[9] == ("1 errore in 1 record", "op.rossi", "doppione")
    assert deletions[7] == ("2 errori in 1 record", None, None)
    assert live[2]["scheduled_at"] is not None and live[3]["summary"] == "disk full; retry"
    assert await pool.fetchval("SELECT kind FROM instance_files WHERE name = 'feedback_3.csv'") == "C1"
    assert await pool.fetchval("SELECT count(*) FROM instance_files") == 9  # the illegal Formatted of 5 too
    # Whether its files hold an esito and any other file, as instance_files has them: 3's feedback was replaced by a
    # C1 of the same name, so it has none left.
    assert {i: (r["has_esiti"], r["has_files"]) for i, r in live.items()} == {
        1: (False, True), 2: (True, False), 3: (False, True), 5: (False, True), 6: (True, True), 7: (False, False),
        8: (False, False), 9: (False, False)}
    assert {i: (r["has_esiti"], r["has_files"]) for i, r in live.items()} == await _kinds_from_files(pool)

    assert hasattr(InstanceList(), "rebuilder")  # the bulk path is the one under test
    report = await rebuild_and_diff(pool, FLOW_PROJECTIONS)
    assert report.events_replayed == sum(len(h) for h in histories().values())
    assert report.differences == []

    # The comparison sees a difference in any column: a state, a count, a file's kind.
    await pool.execute("UPDATE instance_list SET events = events + 1 WHERE instance = 1")
    await pool.execute("UPDATE instance_files SET kind = 'C9' WHERE name = 'C2_3.txt'")
    report = await rebuild_and_diff(pool, FLOW_PROJECTIONS)
    assert sorted((d.table, d.only_in) for d in report.differences) == [
        ("instance_files", "live"), ("instance_files", "rebuilt"), ("instance_list", "live"),
        ("instance_list", "rebuilt")]


async def _kinds_from_files(pool: asyncpg.Pool) -> dict[int, tuple[bool, bool]]:
    """has_esiti and has_files as instance_files says them (what migration 0077 fills from)."""
    return {r["instance"]: (r["esiti"], r["others"]) for r in await pool.fetch(
        "SELECT l.instance, coalesce(bool_or(f.kind IN ('feedback', 'ts-errors')), false) AS esiti, "
        "coalesce(bool_or(f.kind NOT IN ('feedback', 'ts-errors')), false) AS others "
        "FROM instance_list l LEFT JOIN instance_files f USING (instance) GROUP BY l.instance")}


async def test_migration_0077_fills_the_files_kinds_of_the_rows_written_before(pool: asyncpg.Pool) -> None:
    """A live table written before has_esiti and has_files were columns: the migration adds them and fills them from
    instance_files, so that the live rows equal the ones rebuilt from the log."""
    await prepare_database(pool, FLOW_PROJECTIONS)
    store = EventStore(pool, source="/flows/test", projections=FLOW_PROJECTIONS)
    for instance, history in histories().items():
        events = [item if isinstance(item, NewEvent) else new_event(item, "loader") for item in history]
        await store.append(instance_stream(instance), events, expected_version=0, key=str(instance))
    kept = await _kinds_from_files(pool)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE instance_list DROP COLUMN has_esiti, DROP COLUMN has_files")
        await conn.execute("DELETE FROM schema_migrations WHERE version = 77")
    await migrate(pool)
    filled = {r["instance"]: (r["has_esiti"], r["has_files"])
              for r in await pool.fetch("SELECT instance, has_esiti, has_files FROM instance_list")}
    assert filled == kept and filled[6] == (True, True) and filled[7] == (False, False)
    assert (await rebuild_and_diff(pool, FLOW_PROJECTIONS)).differences == []


def onboarding_history(rid: str) -> list[NewEvent]:
    def ev(event: str, **data: object) -> NewEvent:
        return NewEvent(type=f"onboarding.{event}", data={"request_id": rid, **data})

    completeness = dict(required=5, present=3, compliant=2, missing=["contratto"], pending=["tracciato"],
                        non_compliant={"visura": ["scaduta"]}, summary="3 of 5 present, 1 non-compliant")
    return [
        ev("request-opened", kind="new-aggregation", structure_name="Laboratorio Partenope", structure_sts11="150999",
           municipality_istat="063049", opened_at="2026-09-01T08:00:00+00:00"),
        ev("document-received", document_id="doc-1"),
        ev("completeness-changed", **completeness),
        ev("completeness-changed", **{**completeness, "non_compliant": {}, "missing": [], "pending": [],
                                      "present": 5, "compliant": 5}),
        ev("request-complete", completed_on="2026-09-10"),
        ev("completeness-changed", **completeness),  # after completion the status stays
        ev("taken-in-charge", taken_on="2026-09-11", expected_completion_from="2026-10-08",
           expected_completion_to="2026-10-22"),
        ev("switch-scheduled", switch_date="2026-10-12", window_start="09:00", window_end="11:00",
           credentials="existing", warning="a Monday"),
        ev("switch-refused", reasons=["the CUP is frozen that week"], proposed_date="2026-10-19",
           proposed_window_start="10:00", proposed_window_end="12:00"),
    ]


def refused_then_scheduled(rid: str) -> list[NewEvent]:
    """A refusal, then the proposed slot taken: the refusal's columns are cleared."""
    scheduled = onboarding_history(rid)[7]
    return [*onboarding_history(rid), NewEvent(type=scheduled.type, data={**scheduled.data, "switch_date": "2026-10-19",
                                                                          "window_start": "10:00", "warning": None})]


async def test_the_dashboards_bulk_rebuild_equals_the_inline_projection(pool: asyncpg.Pool) -> None:
    from services.onboarding.projection import DashboardProjection

    dashboard = DashboardProjection()
    await prepare_database(pool, [dashboard])
    store = EventStore(pool, source="/flows/test", projections=[dashboard])
    histories = {"req-1": onboarding_history("req-1"), "req-2": onboarding_history("req-2")[:4],
                 "req-3": onboarding_history("req-3")[1:3],  # req-3 never opened: no row
                 "req-4": refused_then_scheduled("req-4"),
                 "req-5": [e for e in onboarding_history("req-5") if e.type != "onboarding.switch-scheduled"]}
    for rid, history in histories.items():
        await store.append(f"onboarding-{rid}", history, expected_version=0, key=rid, publish=False)
    live = {r["request_id"]: r for r in await pool.fetch("SELECT * FROM onboarding_dashboard")}
    # req-1: a new slot refused after a switch was scheduled, which stays (the request's history keeps it too);
    # req-5: a refusal with no switch scheduled.
    assert {rid: r["status"] for rid, r in live.items()} == {"req-1": "switch-scheduled", "req-2": "compliant",
                                                             "req-4": "switch-scheduled", "req-5": "switch-refused"}
    assert live["req-1"]["missing"] == ["contratto"]
    # A refusal is data, as its event has it: no note of the read model's.
    switch = ("switch_date", "switch_window", "switch_note", "switch_refused_reasons", "proposed_date",
              "proposed_window")
    assert tuple(live["req-1"][c] for c in switch) == (
        date(2026, 10, 12), "09:00-11:00", "a Monday", ["the CUP is frozen that week"], date(2026, 10, 19),
        "10:00-12:00")
    assert tuple(live["req-5"][c] for c in switch) == (
        None, None, None, ["the CUP is frozen that week"], date(2026, 10, 19), "10:00-12:00")
    assert tuple(live["req-4"][c] for c in switch) == (date(2026, 10, 19), "10:00-11:00", None, None, None, None)
    assert tuple(live["req-2"][c] for c in switch) == (None,) * 6
    report = await rebuild_and_diff(pool, [dashboard])
    assert report.events_replayed == sum(len(h) for h in histories.values()) and report.differences == []
    await pool.execute("UPDATE onboarding_dashboard SET summary = 'edited' WHERE request_id = 'req-2'")
    assert len((await rebuild_and_diff(pool, [dashboard])).differences) == 2
