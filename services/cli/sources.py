"""`flows sources generate|import`: source data as the CUP would publish it, or a CSV backfill."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from rich.progress import Progress

from contracts.envelope import Envelope
from services.cli.common import UserError, console, database, settings, table
from services.loader.intake import KINDS
from services.loader.intake import import_csv as import_rows

if TYPE_CHECKING:  # the CUP simulator is a development tool: imported by the commands that use it, so the
    # production image (which does not ship simulators/) still runs every other command
    from simulators.cup.generator import Generation


async def publish(generation: Generation, bootstrap: str) -> dict[str, int]:
    """Publishes every record on its `sources.<kind>` topic, key = source_id, as the CUP would."""
    from simulators.cup.generator import SOURCE_FILES

    counts: dict[str, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                                linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        pending = []
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("publishing source records", total=None)
            for record in generation:
                source_id = str(vars(record)["source_id"])  # every source record has one
                kind = SOURCE_FILES[type(record)][0]
                topic = f"sources.{kind}"
                headers = Envelope.new(topic, "/cup/campania", subject=source_id).to_headers()
                pending.append(await producer.send(topic, record.model_dump_json().encode(),
                                                   key=source_id.encode(), headers=headers))
                counts[kind] = counts.get(kind, 0) + 1
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
                    progress.update(task, completed=sum(counts.values()))
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return counts


async def wait_stored(prefix: str, expected: int, timeout: float = 300) -> None:
    """Waits until the loader has stored `expected` delivered services whose source_id starts with
    `prefix` (intake is asynchronous: published is not yet stored)."""
    deadline = time.monotonic() + timeout
    async with database() as pool:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("loader storing source records", total=expected)
            while True:
                stored = await pool.fetchval("SELECT count(*) FROM source_service WHERE starts_with(source_id, $1)",
                                             prefix)
                progress.update(task, completed=stored)
                if stored >= expected:
                    return
                if time.monotonic() > deadline:
                    raise UserError(f"only {stored} of {expected} services stored after {timeout:.0f} s: "
                                    "is the loader running? (`flows stack status`)")
                await asyncio.sleep(0.3)


async def generate(ente: str, month: str, services: int, bad: int, seed: int, out: Path | None) -> Generation:
    from simulators.cup.generator import generate as generate_records
    from simulators.cup.generator import write_csv

    generation = generate_records(ente, month, services, seed, bad)
    if out is not None:
        paths = write_csv(out, generation)
        console.print(table(f"source CSVs for {ente} {month}", ["kind", "file"], paths.items()))
    else:
        counts = await publish(generation, settings().kafka_bootstrap)
        console.print(table(f"published for ente {ente}, {month}", ["topic", "records"],
                            [(f"sources.{k}", v) for k, v in counts.items()]))
        # Intake is asynchronous: a load started before the loader stored everything would snapshot less.
        await wait_stored(generation.prefix, counts.get("delivered-service", 0))
        console.print("the loader has stored every delivered service")
    if generation.planted:
        console.print(table("planted bad records", ["record key", "code", "field"],
                            [(p.record_key, p.code, p.field) for p in generation.planted]))
    return generation


async def import_csv(path: Path, kind: str) -> None:
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    if not path.exists():
        raise UserError(f"no such file: {path}")
    async with database() as pool, pool.acquire() as conn:
        result = await import_rows(conn, kind, path)
    console.print(f"{path}: {result.intake.stored} stored, {result.intake.duplicates} duplicates, "
                  f"{result.intake.corrected} corrected, {len(result.rejections)} rejected")
    if result.rejections:
        console.print(table("rejected rows", ["record", "field", "message"],
                            [(r.record, r.field, r.message) for r in result.rejections[:50]]))
