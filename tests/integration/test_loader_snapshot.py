"""Snapshots on PostgreSQL: the period rule, row numbers, per-flow selection, consistency under intake."""

from __future__ import annotations

import asyncio
import zlib
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, cast

import asyncpg
import pytest

from contracts.flows import FlowType
from contracts.sources import DeliveredService
from services.loader import checks
from services.loader.intake import store_services
from services.loader.snapshot import (
    WORK_MEM,
    SnapshotConflict,
    next_number,
    next_period_end,
    prescription_reach,
    previous_period_start,
    take_snapshot,
)
from simulators.cup.generator import generate

pytestmark = pytest.mark.integration
AUGUST = (date(2020, 8, 1), date(2020, 8, 31))
JULY = (date(2020, 7, 1), date(2020, 7, 31))


def service(source_id: str, prescription_id: str, delivered: date, **changes: Any) -> DeliveredService:
    values: dict[str, Any] = dict(
        source_id=source_id, ente="204", structure_sts11="004101", patient_cf="RSSMRA80A01F839W",
        patient_surname="ROSSI", patient_name="MARIO", patient_sex="M", patient_birth_date=date(1980, 1, 1),
        patient_residence_istat="063049", prescription_id=prescription_id,
        prescription_number=f"150A{zlib.crc32(prescription_id.encode()):012d}", catalogue_code="89.52",
        quantity=1, delivery_date=delivered, tariff=Decimal("11.62"))
    values.update(changes)
    return DeliveredService(**values)


async def _rows(conn: asyncpg.Connection, snapshot_id: int) -> list[tuple[str, str, int]]:
    return [tuple(r) for r in await conn.fetch(  # type: ignore[misc]
        "SELECT prescription_id, source_id, row_number FROM snapshot_service WHERE snapshot_id = $1 "
        "ORDER BY prescription_id, row_number", snapshot_id)]


async def test_instance_numbers_start_at_1947_like_the_seed(conn: asyncpg.Connection) -> None:
    assert [await next_number(conn), await next_number(conn)] == [1947, 1948]


async def test_a_prescription_spanning_july_and_august_belongs_to_august_whole(conn: asyncpg.Connection) -> None:
    await store_services(conn, [service("S-1", "RX-SPAN", date(2020, 7, 28)),
                                service("S-2", "RX-SPAN", date(2020, 8, 3)),
                                service("S-3", "RX-JULY", date(2020, 7, 20))])
    await take_snapshot(conn, 1, "FLUSSO_C", "204", *JULY, instance=0)
    await take_snapshot(conn, 2, "FLUSSO_C", "204", *AUGUST, instance=0)
    assert await _rows(conn, 1) == [("RX-JULY", "S-3", 1)]
    assert await _rows(conn, 2) == [("RX-SPAN", "S-1", 1), ("RX-SPAN", "S-2", 2)]


def _month(year: int, month: int) -> tuple[date, date]:
    return date(year, month, 1), date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)


async def test_an_id_is_one_prescription_within_its_year_and_another_the_next_year(conn: asyncpg.Connection) -> None:
    """An ID is unique per year (spec/flusso-c.md C1): a structure numbering its IDs from 1 each year gives August
    2020's RX-1 the ID of August 2019's. Each load takes its own; before, August 2019 took nothing (RX-1 had a
    later service, so it looked unfinished) and August 2020 took both, failing on the 2019 row. A prescription
    begun in December and ended in January is still one, January's; and within a year a row outside the two periods
    is still taken, for the checks to name (DATE_OUTSIDE_PERIOD), and still holds an earlier load's back."""
    await store_services(conn, [
        service("S-1", "RX-1", date(2019, 8, 12)), service("S-2", "RX-1", date(2020, 8, 4), patient_name="ANNA"),
        service("S-3", "RX-2", date(2019, 12, 20)), service("S-4", "RX-2", date(2020, 1, 10)),
        service("S-5", "RX-3", date(2020, 3, 10)), service("S-6", "RX-3", date(2020, 8, 5))])
    for snapshot_id, (year, month) in enumerate([(2019, 8), (2020, 8), (2019, 12), (2020, 1), (2020, 3)], start=1):
        await take_snapshot(conn, snapshot_id, "FLUSSO_C", "204", *_month(year, month), instance=0)
    assert await _rows(conn, 1) == [("RX-1", "S-1", 1)]
    assert await _rows(conn, 2) == [("RX-1", "S-2", 1), ("RX-3", "S-5", 1), ("RX-3", "S-6", 2)]
    assert await _rows(conn, 3) == []
    assert await _rows(conn, 4) == [("RX-2", "S-3", 1), ("RX-2", "S-4", 2)]
    assert await _rows(conn, 5) == []


def test_the_previous_period_is_as_many_whole_months_or_else_as_many_days() -> None:
    """The snapshot takes a prescription's rows back to the previous period's first day (prescription_reach) and the
    checks name a row before that day (DATE_OUTSIDE_PERIOD, given it by checks.rule_args): one rule, over months,
    quarters, a year and days, at every turn."""
    for year in (2019, 2020, 2021):
        for month in range(1, 13):
            start, end = _month(year, month)
            before = date(year - 1, 12, 1) if month == 1 else date(year, month - 1, 1)
            assert previous_period_start(start, end) == before, (start, end)
    whole_months = {(date(2020, 1, 1), date(2020, 3, 31)): date(2019, 10, 1),  # quarters, three months across years,
                    (date(2020, 4, 1), date(2020, 6, 30)): date(2020, 1, 1),  # a year
                    (date(2020, 7, 1), date(2020, 9, 30)): date(2020, 4, 1),
                    (date(2020, 11, 1), date(2021, 1, 31)): date(2020, 8, 1),
                    (date(2020, 1, 1), date(2020, 12, 31)): date(2019, 1, 1)}
    days = {(date(2020, 8, 10), date(2020, 8, 19)): date(2020, 7, 31),  # ten days, a month from the 15th, one day
            (date(2020, 2, 15), date(2020, 3, 14)): date(2020, 1, 17),
            (date(2020, 12, 31), date(2020, 12, 31)): date(2020, 12, 30)}
    for (start, end), before in {**whole_months, **days}.items():
        assert previous_period_start(start, end) == before, (start, end)
    assert checks.rule_args(1, "2020", (date(2020, 3, 1), date(2020, 3, 31)))[-1] == date(2020, 2, 1)
    assert next_period_end(date(2020, 12, 1), date(2020, 12, 31)) == date(2021, 1, 31)
    assert next_period_end(date(2020, 10, 1), date(2020, 12, 31)) == date(2021, 3, 31)
    assert next_period_end(date(2020, 8, 10), date(2020, 8, 19)) == date(2020, 8, 29)
    assert prescription_reach(date(2020, 1, 1), date(2020, 1, 31)) == (date(2019, 12, 1), date(2020, 12, 31))
    assert prescription_reach(date(2020, 12, 1), date(2020, 12, 31)) == (date(2020, 1, 1), date(2021, 1, 31))


async def test_rows_are_numbered_by_delivery_date_then_source_id(conn: asyncpg.Connection) -> None:
    await store_services(conn, [service("S-9", "RX-A", date(2020, 8, 5)), service("S-3", "RX-A", date(2020, 8, 9)),
                                service("S-1", "RX-A", date(2020, 8, 9))])
    await take_snapshot(conn, 1, "FLUSSO_C", "204", *AUGUST, instance=0)
    assert await _rows(conn, 1) == [("RX-A", "S-9", 1), ("RX-A", "S-1", 2), ("RX-A", "S-3", 3)]


async def test_each_flow_type_takes_its_own_services(conn: asyncpg.Connection) -> None:
    await store_services(conn, [
        service("S-SSN", "RX-SSN", date(2020, 8, 5)),
        service("S-PACC", "RX-PACC", date(2020, 8, 5), pacc=True, catalogue_code="PAC01", catalogue_coding="c"),
        service("S-ALPI", "RX-ALPI", date(2020, 8, 5), regime="ALPI"),
        # paid privately (intramoenia) inside a PACC: in no SSN flow, C PACC included
        service("S-ALPI-PACC", "RX-ALPI-PACC", date(2020, 8, 5), regime="ALPI", pacc=True, catalogue_code="PAC01",
                catalogue_coding="c"),
        service("S-OTHER", "RX-OTHER", date(2020, 8, 5), ente="201", structure_sts11="001101")])
    taken = {}
    for n, flow in enumerate(("FLUSSO_C", "FLUSSO_C_PACC", "FLUSSO_MEF"), start=1):
        await take_snapshot(conn, n, flow, "204", *AUGUST, instance=0)
        taken[flow] = {r[1] for r in await _rows(conn, n)}
    assert taken == {"FLUSSO_C": {"S-SSN"}, "FLUSSO_C_PACC": {"S-PACC"}, "FLUSSO_MEF": {"S-SSN", "S-PACC"}}


async def test_the_period_rule_and_the_row_numbers_count_only_the_rows_the_flow_takes_of_its_entity(
        conn: asyncpg.Connection) -> None:
    """A prescription's last service is the last of the rows the flow takes (its condition, its entity): a later
    PACC service moves it out of Flusso C's month only for the flows that take PACC, another entity's service under
    the same id moves nothing, and a row the flow does not take is neither numbered nor a reason to take it."""
    pacc = {"pacc": True, "catalogue_code": "PAC01", "catalogue_coding": "c"}
    await store_services(conn, [
        service("M-1", "RX-MIX", date(2020, 8, 4)), service("M-2", "RX-MIX", date(2020, 8, 6), regime="ALPI"),
        service("M-3", "RX-MIX", date(2020, 8, 8)), service("M-4", "RX-MIX", date(2020, 9, 1), **pacc),
        service("O-1", "RX-OTHER", date(2020, 8, 4)),
        service("O-2", "RX-OTHER", date(2020, 9, 10), ente="201", structure_sts11="001101"),
        service("C-1", "RX-COND", date(2020, 7, 30)), service("C-2", "RX-COND", date(2020, 8, 2), regime="ALPI")])
    september = (date(2020, 9, 1), date(2020, 9, 30))
    taken = {}
    for n, (flow, period) in enumerate((("FLUSSO_C", JULY), ("FLUSSO_C", AUGUST), ("FLUSSO_MEF", AUGUST),
                                        ("FLUSSO_MEF", september), ("FLUSSO_C_PACC", september)), start=1):
        await take_snapshot(conn, n, flow, "204", *period, instance=0)
        taken[flow, period[0].month] = await _rows(conn, n)
    assert taken == {
        ("FLUSSO_C", 7): [("RX-COND", "C-1", 1)],
        ("FLUSSO_C", 8): [("RX-MIX", "M-1", 1), ("RX-MIX", "M-3", 2), ("RX-OTHER", "O-1", 1)],
        ("FLUSSO_MEF", 8): [("RX-OTHER", "O-1", 1)],
        ("FLUSSO_MEF", 9): [("RX-MIX", "M-1", 1), ("RX-MIX", "M-3", 2), ("RX-MIX", "M-4", 3)],
        ("FLUSSO_C_PACC", 9): [("RX-MIX", "M-4", 1)],
    }


async def test_taking_a_snapshot_again_reuses_it_and_another_period_is_refused(conn: asyncpg.Connection) -> None:
    await store_services(conn, [service("S-1", "RX-1", date(2020, 8, 5))])
    first = await take_snapshot(conn, 7, "FLUSSO_C", "204", *AUGUST, instance=6)
    await store_services(conn, [service("S-2", "RX-2", date(2020, 8, 6))])
    again = await take_snapshot(conn, 7, "FLUSSO_C", "204", *AUGUST, instance=6)
    assert (first.rows, first.reused, again.rows, again.reused) == (1, False, 1, True)
    with pytest.raises(SnapshotConflict, match="snapshot 7 already holds FLUSSO_C"):
        await take_snapshot(conn, 7, "FLUSSO_C", "204", *JULY, instance=6)


async def test_the_snapshot_row_sent_with_the_begin_is_the_one_its_parameters_make(conn: asyncpg.Connection) -> None:
    """The snapshot's row goes as text with the BEGIN when its values are plain (the catalogue's codes are), else by
    parameters: the same row either way, and a number taken already is found on both paths."""
    from services.loader.snapshot import _create_text

    await store_services(conn, [service("S-1", "RX-1", date(2020, 8, 5))])
    plain = ("FLUSSO_C", "204", "2020")
    odd = "2020'); DROP TABLE events; --"  # never a layout version: here it goes by a parameter, unharmed
    assert _create_text(8, 6, FlowType.FLUSSO_C, plain[2], plain[1], *AUGUST, "snapshot_service") is not None
    assert _create_text(9, 6, FlowType.FLUSSO_C, odd, "204", *AUGUST, "snapshot_service") is None
    assert _create_text(9, 6, FlowType.FLUSSO_C, "2020", "20 4", *AUGUST, "snapshot_service") is None
    await take_snapshot(conn, 8, "FLUSSO_C", "204", *AUGUST, instance=6, version="2020")
    await take_snapshot(conn, 9, "FLUSSO_C", "204", *AUGUST, instance=6, version=odd)
    rows = {r["snapshot_id"]: dict(r) for r in await conn.fetch("SELECT * FROM source_snapshot ORDER BY snapshot_id")}
    assert rows[9] == {**rows[8], "snapshot_id": 9, "version": odd, "taken_at": rows[9]["taken_at"]}
    assert rows[8]["taken_at"] <= rows[9]["taken_at"]
    assert rows[8]["version"] == "2020" and rows[8]["rows"] == 1 and rows[8]["period_end"] == AUGUST[1]
    assert await conn.fetchval("SELECT to_regclass('events')") is not None
    for number, version in ((8, "2020"), (9, odd)):  # taken already: reused, on either path
        again = await take_snapshot(conn, number, "FLUSSO_C", "204", *AUGUST, instance=6, version=version)
        assert (again.rows, again.reused) == (1, True)
        with pytest.raises(SnapshotConflict):
            await take_snapshot(conn, number, "FLUSSO_C", "204", *JULY, instance=6, version=version)


class _SettingsOfItsTransaction:
    """The connection take_snapshot is given: notes the transaction's work_mem and synchronous_commit once the
    statements that open its transaction have run, i.e. before the statement that copies the rows is planned."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.seen: tuple[str, str] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def execute(self, query: str, *args: Any) -> Any:
        value = await self._conn.execute(query, *args)
        if self.seen is None:
            row = await self._conn.fetchrow("SELECT current_setting('work_mem'), current_setting('synchronous_commit')")
            self.seen = (row[0], row[1])
        return value


async def test_the_snapshot_is_copied_with_its_own_work_mem_and_commits_without_a_flush_in_its_transaction_only(
        conn: asyncpg.Connection) -> None:
    """The two settings are made when the snapshot's transaction opens (SET LOCAL): were they
    dropped, a large snapshot would be planned and sorted in the default work_mem and its commit would wait for the
    flush, and no other test would notice; were they made for the session, they would outlive the snapshot."""
    await store_services(conn, [service("S-1", "RX-1", date(2020, 8, 5)), service("S-2", "RX-1", date(2020, 8, 7))])
    session = tuple(await conn.fetchrow("SELECT current_setting('work_mem'), current_setting('synchronous_commit')"))
    assert session[0] != WORK_MEM and session[1] == "on", session  # else this test could not tell
    watching = _SettingsOfItsTransaction(conn)
    taken = await take_snapshot(cast(asyncpg.Connection, watching), 3, "FLUSSO_C", "204", *AUGUST, instance=2)
    assert watching.seen == (WORK_MEM, "off")
    assert (taken.rows, taken.reused) == (2, False)
    assert await _rows(conn, 3) == [("RX-1", "S-1", 1), ("RX-1", "S-2", 2)]
    assert await conn.fetchval("SELECT rows FROM source_snapshot WHERE snapshot_id = 3") == 2
    assert tuple(await conn.fetchrow("SELECT current_setting('work_mem'), current_setting('synchronous_commit')")) \
        == session


async def test_a_snapshot_is_consistent_while_another_connection_keeps_inserting(fresh_db: str) -> None:
    setup = await asyncpg.connect(fresh_db)
    writer = await asyncpg.connect(fresh_db)
    try:
        batch = [r for r in generate("204", "2020-08", 60_000, seed=21) if isinstance(r, DeliveredService)]
        for i in range(0, len(batch), 20_000):
            await store_services(setup, batch[i:i + 20_000])
        snapshot_done = asyncio.Event()
        commits_after = 0
        n = 0  # late prescriptions started
        committed = 0  # ... and committed: n runs one ahead while a commit is in flight

        async def keep_inserting() -> None:
            # each late prescription has two services, committed together
            nonlocal commits_after, n, committed
            while commits_after < 5:
                n += 1
                await store_services(writer, [service(f"LATE-{n}-a", f"RX-LATE-{n}", date(2020, 8, 20)),
                                              service(f"LATE-{n}-b", f"RX-LATE-{n}", date(2020, 8, 21))])
                committed += 1
                if snapshot_done.is_set():
                    commits_after += 1

        task = asyncio.create_task(keep_inserting())
        while committed < 3:  # three late prescriptions committed before the snapshot starts
            await asyncio.sleep(0.01)
        stats = await take_snapshot(setup, 1, "FLUSSO_MEF", "204", *AUGUST, instance=0)
        snapshot_done.set()
        await task
        partial = await setup.fetchval(
            "SELECT count(*) FROM (SELECT prescription_id FROM snapshot_service WHERE snapshot_id = 1 "
            "AND prescription_id LIKE 'RX-LATE-%' GROUP BY prescription_id HAVING count(*) <> 2) p")
        late_taken = await setup.fetchval("SELECT count(*) FROM snapshot_service WHERE snapshot_id = 1 "
                                          "AND source_id LIKE 'LATE-%'")
        assert partial == 0
        assert 6 <= late_taken < 2 * n  # the writes committed before it, none of those after
        await take_snapshot(setup, 2, "FLUSSO_MEF", "204", *AUGUST, instance=0)
        everything = await setup.fetchval("SELECT count(*) FROM snapshot_service WHERE snapshot_id = 2")
        assert everything == stats.rows + (2 * n - late_taken)
    finally:
        await setup.close()
        await writer.close()
