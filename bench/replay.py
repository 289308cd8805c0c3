"""Rebuilding every read model from the log against a raw SELECT of the same events, measured in one run.

    uv run python bench/replay.py [--events 1000000] [--rounds 2]

On a fresh database of the local stack's PostgreSQL (dropped at the end): every migration and read model
installed, then N events COPYed into `events` in the shape the services write them (not timed): instance
streams with the lifecycle mix of a region (60% Flusso C loaded + formatted with two files, 25% 730 up to
the TS feedback with its receipt, 15% failed loads with their feedback, 1 in 50 then deleted) and 2% of
the events in onboarding request streams; real payloads (the contracts' models), real hash chains,
recorded_at one second apart. Then, alternating `--rounds` times so that load from elsewhere hits both:
  raw      a plain asyncpg connection (no JSON codecs: jsonb stays text), one repeatable-read transaction,
           a server-side cursor over every column of `events` in global order, fetched 10,000 rows at a time
  rebuild  what `flows replay` does to the read models (services.runtime.projections.rebuild): every event
           in global order into fresh tables of every projection (instance list, files, onboarding
           dashboard) in a scratch schema, in one repeatable-read transaction, rolled back after (each
           rebuilder reads only its events and the values it folds, the instance list's as COPY text:
           services/runtime/projections.py)
  --event-by-event: also the rebuild as it was before the in-memory rebuilders (every event applied with its
           own statements), once, for comparison (slow: about 10x the rebuild)
Prints events/s of each and the ratio rebuild/raw (aim, issue 14: >= 0.5x at 1,000,000 events).
PostgreSQL: $DATABASE_URL, else 127.0.0.1:$FLOWS_PG_PORT (default 15432).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts import flows, onboarding
from services.runtime.db import canonical_text, create_database, create_pool, drop_database
from services.runtime.eventstore import GENESIS_HASH, _chained
from services.runtime.host import prepare_database
from services.runtime.projections import rebuild

SERVER_URL = (os.environ.get("DATABASE_URL")
              or f"postgresql://postgres@127.0.0.1:{os.environ.get('FLOWS_PG_PORT', '15432')}/flows")
COLUMNS = ("stream_id, version, position, transaction_id, event_id, type, data, actor, metadata, recorded_at, "
           "prev_hash, hash")
START = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD = flows.Period(start=date(2025, 12, 1), end=date(2025, 12, 31))


def _sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _ref(name: str, kind: str, n: int, **extra: Any) -> flows.FileRef:
    return flows.FileRef(name=name, kind=kind, records=1000 + n % 977, bytes=150_000 + n, sha256=_sha(n), **extra)


def instance_history(n: int) -> list[flows.Payload]:
    """The lifecycle of instance n (the mix in the module docstring)."""
    shape = n % 20
    flow = flows.FlowType.FLUSSO_730 if 12 <= shape < 17 else flows.FlowType.FLUSSO_C
    running = flows.LoadRunning(instance=n, request_id=uuid.UUID(int=n), flow_type=flow, version="2020",
                                ente=("201", "202", "203", "204", "205", "206", "207")[n % 7], period=PERIOD,
                                requested_by="op.rossi")
    counts = {"services": 20_000 + n % 5000, "prescriptions": 7000 + n % 900, "patients": 5000 + n % 700}
    if shape >= 17:  # Failed loading
        history: list[flows.Payload] = [running, flows.LoadFailed(
            instance=n, source_instance=n + 1, errors=3, warnings=1,
            summary="3 errors in 2 records: 2 x CF_CHECK_CHAR, 1 x UNKNOWN_SERVICE_CODE",
            feedback=_ref(f"feedback_{n}.csv", "feedback", n, media_type="text/csv"))]
        if n % 50 == 19:
            history.append(flows.InstanceDeleted(instance=n, deleted_by="op.rossi", reason="loaded twice"))
        return history
    history = [running, flows.LoadChecked(instance=n, source_instance=n + 1, counts=counts, warnings=n % 3),
               flows.FormatRequested(instance=n, requested_by="op.rossi"), flows.FormattingStarted(instance=n)]
    if flow is flows.FlowType.FLUSSO_C:
        history.append(flows.Formatted(instance=n, files=[_ref(f"C1_150201_202512_{n}.txt", "C1", n),
                                                          _ref(f"C2_150201_202512_{n}.txt", "C2", n + 1)]))
        return history
    history += [
        flows.Formatted(instance=n, files=[_ref(f"730_{n}_1.zip", "730-zip", n, part=1)]),
        flows.TsSubmitted(instance=n, part=1, parts=1, protocollo=f"{n:017d}", zip_sha256=_sha(-n)),
        flows.TsFeedbackReceived(instance=n, part=1, parts=1, protocollo=f"{n:017d}", outcome="confirmed",
                                 receipt_file=_ref(f"receipt_{n}.pdf", "ts-receipt", n, media_type="application/pdf"),
                                 instance_outcome="confirmed")]
    return history


def request_history(n: int) -> list[onboarding.Payload]:
    rid = f"req-{n:06d}"
    opened = onboarding.RequestOpened(
        request_id=rid, kind=onboarding.RequestKind(list(onboarding.RequestKind)[n % len(onboarding.RequestKind)]),
        structure_name=f"Laboratorio {n}", structure_sts11=f"{n % 999999:06d}", municipality_istat="063049",
        requirements_version="2026", opened_at=START, opened_by="desk:esposito")
    changed = onboarding.CompletenessChanged(request_id=rid, required=5, present=3, compliant=2,
                                             missing=["tracciato-prestazioni"], pending=["contratto"],
                                             non_compliant={}, summary="3 of 5 present")
    return [opened, changed, changed]


def streams(events: int) -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """(stream id, [(type, data)]) until `events` events: instance streams, and every 50th event onboarding."""
    made = instance = request = 0
    while made < events:
        if made // 50 > request:  # ~2% of the events
            request += 1
            history = [(onboarding.TYPE_OF[type(p)], p.model_dump(mode="json")) for p in request_history(request)]
            stream = f"onboarding-req-{request:06d}"
        else:
            instance += 1
            history = [(flows.TYPE_OF[type(p)], p.model_dump(mode="json")) for p in instance_history(instance)]
            stream = f"instance-{instance}"
        history = history[:events - made]
        made += len(history)
        yield stream, history


def rows(events: int) -> Iterator[tuple[Any, ...]]:
    """The events table's rows (position and transaction id from their defaults), hash-chained."""
    at = START
    for stream, history in streams(events):
        prev = GENESIS_HASH
        for version, (kind, data) in enumerate(history, start=1):
            at += timedelta(seconds=1)
            event_id = uuid.uuid4()
            data_json = canonical_text(data)
            digest = _chained(prev, stream_id=stream, version=version, event_id=event_id, type=kind,
                              data_json=data_json, actor="loader", recorded_at=at, metadata_json="{}")
            yield stream, version, event_id, kind, data_json, "loader", "{}", at, prev, digest
            prev = digest


async def fill(url: str, events: int) -> float:
    conn = await asyncpg.connect(url)  # no codecs: jsonb goes in as the canonical text
    started = time.perf_counter()
    try:
        chunk: list[tuple[Any, ...]] = []
        columns = ["stream_id", "version", "event_id", "type", "data", "actor", "metadata", "recorded_at",
                   "prev_hash", "hash"]
        for row in rows(events):
            chunk.append(row)
            if len(chunk) == 50_000:
                await conn.copy_records_to_table("events", records=chunk, columns=columns)
                chunk = []
        if chunk:
            await conn.copy_records_to_table("events", records=chunk, columns=columns)
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def raw_select(url: str) -> tuple[float, int]:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        count = 0
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(f"SELECT {COLUMNS} FROM events ORDER BY transaction_id, position")
            while batch := await cursor.fetch(10_000):
                count += len(batch)
        return time.perf_counter() - started, count
    finally:
        await conn.close()


async def rebuild_all(pool: asyncpg.Pool, bulk: bool = True) -> tuple[float, int, int]:
    from services.cli.replay import all_projections

    async with pool.acquire() as conn:
        started = time.perf_counter()
        tx = conn.transaction(isolation="repeatable_read")
        await tx.start()
        try:
            replayed = await rebuild(conn, all_projections(), "bench_rebuilt", bulk=bulk)
            elapsed = time.perf_counter() - started
            instances = await conn.fetchval("SELECT count(*) FROM bench_rebuilt.instance_list")
        finally:
            await tx.rollback()
    return elapsed, replayed, int(instances)


async def main(events: int, rounds: int, event_by_event: bool) -> int:
    from services.cli.replay import all_projections

    url = await create_database(SERVER_URL, "bench_replay", migrated=False)  # prepare_database migrates
    try:
        pool = await create_pool(url, min_size=1, max_size=2)
        await prepare_database(pool, all_projections())
        fill_s = await fill(url, events)
        print(f"{events:,} events COPYed with their hash chains in {fill_s:.1f} s (not timed)", flush=True)
        raw_s = rebuild_s = 0.0
        for _ in range(rounds):
            seconds, count = await raw_select(url)
            raw_s += seconds
            seconds, replayed, instances = await rebuild_all(pool)
            rebuild_s += seconds
            if count != events or replayed != events:
                raise RuntimeError(f"raw read {count}, rebuild replayed {replayed}: both must be {events}")
        one_by_one_s = (await rebuild_all(pool, bulk=False))[0] if event_by_event else None
        await pool.close()
    finally:
        await drop_database(SERVER_URL, url)
    raw_rate, rebuild_rate = events * rounds / raw_s, events * rounds / rebuild_s
    ratio = rebuild_rate / raw_rate
    print(f"{'pass':<52}{'s/round':>9}{'events/s':>12}")
    print(f"{'raw SELECT (plain asyncpg cursor, jsonb as text)':<52}{raw_s / rounds:>9.2f}{raw_rate:>12,.0f}")
    print(f"{'rebuild every read model (' + str(instances) + ' instances)':<52}{rebuild_s / rounds:>9.2f}"
          f"{rebuild_rate:>12,.0f}")
    if one_by_one_s is not None:
        label = "rebuild event by event (before the rebuilders)"
        print(f"{label:<52}{one_by_one_s:>9.2f}{events / one_by_one_s:>12,.0f}"
              f"   ratio {raw_s / rounds / one_by_one_s:.3f}x")
    print(f"ratio rebuild/raw: {ratio:.2f}x (aim >= 0.5x: {'met' if ratio >= 0.5 else 'MISSED'})")
    print(json.dumps({"events": events, "rounds": rounds, "raw_s": round(raw_s / rounds, 3),
                      "rebuild_s": round(rebuild_s / rounds, 3), "ratio": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--event-by-event", action="store_true", help="also time the rebuild without rebuilders")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.events, args.rounds, args.event_by_event)))
