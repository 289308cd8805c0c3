"""Deadline coverage (services/runtime/coverage.py), the rule behind `flows deadlines`, the console's Scadenze page
and the uncovered-days alert, on a real PostgreSQL: every (entity, deadline) pair against a plain Python reading
of the same instances, over a random mix of flow types, entities, periods and states."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from contracts.deadlines import Deadline, covering_states
from contracts.flows import FlowType
from contracts.sources import DeliveredService
from contracts.states import InstanceState
from services.loader.catalogue import known_enti
from services.loader.intake import store_services
from services.runtime.coverage import coverage
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS
from simulators.cup.generator import generate

pytestmark = pytest.mark.integration

ENTI = ["201", "202", "203"]
DEADLINES = [
    Deadline("FLUSSO_C", date(2026, 10, 1), date(2026, 10, 31), date(2026, 11, 10)),
    Deadline("FLUSSO_MEF", date(2026, 10, 1), date(2026, 10, 31), date(2026, 11, 10)),
    Deadline("FLUSSO_ALPI_TA", date(2026, 10, 12), date(2026, 10, 16), date(2026, 11, 30)),
    Deadline("FLUSSO_730", date(2026, 1, 1), date(2026, 6, 30), date(2026, 7, 31)),
    Deadline("FLUSSO_C", date(2026, 9, 1), date(2026, 9, 30), date(2026, 10, 12)),
]
PERIODS = [(date(2026, 10, 1), date(2026, 10, 31)), (date(2026, 10, 1), date(2026, 10, 15)),
           (date(2026, 9, 1), date(2026, 10, 31)), (date(2026, 10, 12), date(2026, 10, 16)),
           (date(2026, 1, 1), date(2026, 6, 30)), (date(2026, 1, 1), date(2026, 12, 31)),
           (date(2026, 9, 1), date(2026, 9, 30)), (date(2026, 10, 2), date(2026, 10, 31)),
           (date(2026, 10, 16), date(2026, 10, 31)), (date(2026, 10, 1), date(2026, 10, 11)),  # parts of a month,
           (date(2026, 1, 1), date(2026, 3, 31)), (date(2026, 4, 1), date(2026, 6, 30)),  # of a half year
           (date(2026, 5, 1), date(2026, 5, 31))]


def expected(rows: list[dict], ente: str, d: Deadline) -> int | None:
    """The rule in plain words: the instances of the deadline's flow type and entity whose state covers it hold,
    together, every day of the deadline's period; the latest of those that hold any of its days is named."""
    found = [r for r in rows if r["flow_type"] == d.flow_type and r["ente"] == ente
             and r["state"] in covering_states(d.flow_type)
             and r["period_start"] <= d.period_end and r["period_end"] >= d.period_start]
    days = {r["period_start"] + timedelta(days=k) for r in found
            for k in range((r["period_end"] - r["period_start"]).days + 1)}
    wanted = {d.period_start + timedelta(days=k) for k in range((d.period_end - d.period_start).days + 1)}
    return max((r["instance"] for r in found), default=None) if wanted <= days else None


async def test_coverage_agrees_with_the_rule_for_every_entity_and_deadline(pool) -> None:
    await prepare_database(pool, FLOW_PROJECTIONS)
    rng = random.Random(20261205)
    states = [s.value for s in InstanceState]
    rows = []
    for instance in range(1, 401):
        start, end = rng.choice(PERIODS)
        rows.append({"instance": instance, "flow_type": rng.choice(list(FlowType)).value, "ente": rng.choice(ENTI),
                     "period_start": start, "period_end": end, "state": rng.choice(states)})
    # an entity whose October and first half year came in parts only
    formatted, sent = covering_states("FLUSSO_C")[0], covering_states("FLUSSO_730")[0]
    parts = [("FLUSSO_C", PERIODS[1], formatted), ("FLUSSO_C", PERIODS[8], formatted),
             ("FLUSSO_730", PERIODS[10], sent), ("FLUSSO_730", PERIODS[11], sent)]
    rows += [{"instance": 401 + k, "flow_type": flow, "ente": "204", "period_start": start, "period_end": end,
              "state": state} for k, (flow, (start, end), state) in enumerate(parts)]
    entes = [*ENTI, "204"]
    now = datetime(2026, 11, 1, tzinfo=UTC)
    await pool.executemany(
        "INSERT INTO instance_list (instance, flow_type, version, ente, created_at, period_start, period_end, state, "
        "state_since, requested_by, last_event, events) VALUES ($1, $2, '2020', $3, $4, $5, $6, $7, $4, 'op', "
        "'flows.load-running', 1)",
        [(r["instance"], r["flow_type"], r["ente"], now, r["period_start"], r["period_end"], r["state"])
         for r in rows])

    got = await coverage(pool, DEADLINES, None, entes)
    want = [(e, d, expected(rows, e, d)) for e in entes for d in DEADLINES]
    assert got == want
    # the mix is not trivial: some pairs are covered, some are not, and the 730's and the others' rules both bite
    assert {c is None for _, _, c in want} == {True, False}
    assert any(c is not None for _, d, c in want if d.flow_type == "FLUSSO_730")
    # one entity, as `flows deadlines --ente` asks
    assert await coverage(pool, DEADLINES, "202") == [w for w in want if w[0] == "202"]
    # parts that together hold a deadline's period cover it
    assert [c for e, _, c in want if e == "204"] == [402, None, None, 404, None]


async def test_a_yearly_730_sent_month_by_month_is_covered_once_every_month_is_in(pool) -> None:
    """The seed's 730 instances are monthly (01/10/2020 - 31/10/2020), the deadline yearly: an entity that sent every
    month was shown late, for want of one instance of the whole year."""
    await prepare_database(pool, FLOW_PROJECTIONS)
    yearly = Deadline("FLUSSO_730", date(2026, 1, 1), date(2026, 12, 31), date(2027, 1, 31))
    sent = covering_states("FLUSSO_730")[0]
    months = [(date(2026, m, 1), (date(2026, m + 1, 1) if m < 12 else date(2027, 1, 1)) - timedelta(days=1))
              for m in range(1, 13)]
    now = datetime(2027, 1, 10, tzinfo=UTC)

    async def add(instance: int, period: tuple[date, date], state: str, ente: str = "201") -> None:
        await pool.execute(
            "INSERT INTO instance_list (instance, flow_type, version, ente, created_at, period_start, period_end, "
            "state, state_since, requested_by, last_event, events) VALUES ($1, 'FLUSSO_730', '2020', $2, $3, $4, $5, "
            "$6, $3, 'op', 'flows.ts-submission-requested', 1)", instance, ente, now, *period, state)

    for n, period in enumerate(months[:11], start=1):
        await add(n, period, sent)
    await add(12, months[11], "Formatted")  # December not yet with TS
    assert await coverage(pool, [yearly], "201") == [("201", yearly, None)]
    await add(13, months[11], sent)
    assert await coverage(pool, [yearly], "201") == [("201", yearly, 13)]
    # another entity's December does not fill this one's
    for n, period in enumerate(months[:11], start=21):
        await add(n, period, sent, ente="202")
    await add(40, months[11], sent, ente="203")
    assert await coverage(pool, [yearly], "202") == [("202", yearly, None)]


async def test_every_entity_with_data_or_in_the_catalogue_is_listed_in_order(pool) -> None:
    await prepare_database(pool, FLOW_PROJECTIONS)
    # source data only (no instance) for an entity outside the catalogue, and for one of the catalogue
    services = [s for s in generate("201", "2026-10", 3, seed=1) if isinstance(s, DeliveredService)]
    outside = [s.model_copy(update={"ente": "299", "source_id": f"CUP-299-{uuid.uuid4().hex[:8]}"})
               for s in services[:2]]
    async with pool.acquire() as conn:
        await store_services(conn, [*services, *outside])
    # an instance only, for another entity outside the catalogue
    await pool.execute(
        "INSERT INTO instance_list (instance, flow_type, version, ente, created_at, period_start, period_end, state, "
        "state_since, requested_by, last_event, events) VALUES (5, 'FLUSSO_C', '2020', '298', $1, $2, $3, "
        "'Formatted', $1, 'op', 'flows.format-completed', 3)",
        datetime(2026, 11, 1, tzinfo=UTC), date(2026, 10, 1), date(2026, 10, 31))
    deadline = DEADLINES[0]
    got = await coverage(pool, [deadline, DEADLINES[1]], None)
    entes = sorted(known_enti() | {"298", "299"})
    assert [e for e, _, _ in got] == [e for e in entes for _ in range(2)]
    assert [d for _, d, _ in got] == [deadline, DEADLINES[1]] * len(entes)
    assert [(e, c) for e, d, c in got if c is not None] == [("298", 5)]
    assert await coverage(pool, [], None) == []


async def test_the_entities_with_source_data_are_read_without_scanning_every_row(pool) -> None:
    """The ops metrics ask for them at every refresh, and source_service is the largest table: its plan must
    probe the (ente, delivery_date) index once per entity, not read all the rows."""
    from services.runtime import coverage as module

    await prepare_database(pool, FLOW_PROJECTIONS)
    services = [s for s in generate("201", "2026-10", 300, seed=3) if isinstance(s, DeliveredService)]
    async with pool.acquire() as conn:
        await store_services(conn, services)
        await conn.execute("ANALYZE source_service")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + module._ENTI_WITH_DATA))
    assert "Seq Scan on source_service" not in plan, plan
    source_rows_read = [float(line.split("rows=")[1].split()[0]) for line in plan.splitlines()
                        if "source_service" in line and "rows=" in line]
    assert source_rows_read and max(source_rows_read) <= 1, plan
