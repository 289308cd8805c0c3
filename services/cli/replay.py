"""`flows replay`: read streams back, verify every hash chain, rebuild the read models in a scratch
schema and compare them with the live ones. Exit code 2 when anything differs.

It first prepares the database as a service does at start-up (migrations, the read models' live tables), so it
also works where only the migrations ran. `--chains-only` verifies the chains and the signed checkpoint without the
rebuild: it only reads, so it also runs on a read-only replica (an auditor's), where the rebuild is refused."""

from __future__ import annotations

import asyncpg

from services.cli.common import UserError, console, database, table
from services.runtime.eventstore import EventStore
from services.runtime.projections import Projection, rebuild_and_diff
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream


def all_projections() -> list[Projection]:
    """Every read model of the database, the one list: the CLI installs (`flows stack up`) and replays
    them all; each service installs only its own."""
    from services.onboarding import facade as onboarding

    return [*FLOW_PROJECTIONS, *onboarding.projections()]


READ_ONLY = ("this database is read-only (a standby, or a read-only user): rebuilding the read models writes a "
             "scratch schema, which it refuses. Give --chains-only to verify the hash chains and the latest signed "
             "checkpoint here, or run the rebuild against the primary")


async def replay(instance: int | None, verify: bool, chains_only: bool = False) -> bool:
    """`chains_only`: verify the hash chains and the checkpoint, no rebuild: it only reads, so it runs where an
    auditor may be given no more than a read-only replica."""
    ok = True
    verify = verify or chains_only
    async with database() as pool:
        if not chains_only:  # --chains-only never writes, not even the start-up preparation
            if await pool.fetchval("SELECT current_setting('transaction_read_only') = 'on'"):
                raise UserError(READ_ONLY)
            await _prepare(pool)
        store = EventStore(pool, source="/flows/cli")
        streams = [instance_stream(instance)] if instance is not None else await store.list_streams()
        events = 0
        for stream in streams:
            history = await store.read_stream(stream)
            if not history:
                # Bad input, said as every command says it (exit 1), not a replay that found a difference (exit 2).
                # The log, not instance_list, decides: the read model is what a replay may be rebuilding.
                raise UserError(f"there is no instance {instance}; `flows instances` lists them")
            events += len(history)
        console.print(f"replayed {len(streams)} stream(s), {events} events")
        if verify:
            breaks = (await store.verify_stream(streams[0])) if instance is not None else await store.verify_all()
            if breaks:
                ok = False
                console.print(table("[red]hash chain broken[/]", ["where"], [(str(b),) for b in breaks]))
            else:
                console.print("[green]every hash chain verifies[/]")
            ok = await _against_checkpoint(pool, streams if instance is not None else None) and ok
        if chains_only:
            console.print("the read models were not rebuilt (--chains-only)")
            return ok
        report = await rebuild_and_diff(pool, all_projections())
        if report.differences:
            ok = False
            console.print(table("[red]read models differ from the log[/]", ["difference"],
                                [(str(d),) for d in report.differences[:200]]))
        else:
            console.print(f"[green]read models rebuilt from {report.events_replayed} events equal the live ones[/]")
    return ok


async def _prepare(pool: asyncpg.Pool) -> None:
    """The schema and every read model's live tables, as the services create them at start-up (the same function,
    host.prepare_database; idempotent): a database where only the migrations ran (no service started yet, events
    appended by `flows users` or the access log) is replayed and compared like any other, its live tables empty.
    Not called on a read-only database (a standby's schema is the primary's; the rebuild could not run there)."""
    from services.runtime.host import prepare_database

    await prepare_database(pool, all_projections())


async def _against_checkpoint(pool: asyncpg.Pool, streams: list[str] | None) -> bool:
    """Every stream re-hashed from its rows and compared with the latest signed checkpoint."""
    from services.cli.audit import check_latest

    sequence, problems = await check_latest(pool, streams)
    if sequence is None:
        console.print("[yellow]no signed checkpoint yet (`flows audit checkpoint`): a stream rewritten with "
                      "recomputed hashes would go unnoticed[/]")
        return True
    if problems:
        console.print(table(f"[red]streams differ from signed checkpoint {sequence}[/]", ["where"],
                            [(p,) for p in problems]))
        return False
    console.print(f"[green]every stream matches signed checkpoint {sequence}[/]")
    return True
