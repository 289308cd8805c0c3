"""The operator's commands on flow instances: load, instances, show, format, files, export,
feedback, delete. They publish commands on Kafka (as any external system may) and read the
read models in PostgreSQL; deletion is appended to the instance's stream directly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from contracts.deadlines import italian_day_start_sql, italian_time
from services.cli.common import UserError, console, database, settings, table

if TYPE_CHECKING:
    # Imported where used: `flows instances`, `files`, `feedback`, `export` read PostgreSQL alone and need neither
    # the event models (contracts.flows, ~0.25 s) nor Kafka, tracing, the event store or rich.progress.
    import asyncpg

    from contracts import flows
    from services.runtime.eventstore import StoredEvent
    from services.runtime.settings import Settings


def final_load() -> set[str]:
    from contracts.states import InstanceState

    return {InstanceState.CHECKED.value, InstanceState.FAILED_LOADING.value}


def final_format() -> set[str]:
    from contracts.states import InstanceState

    return {InstanceState.FORMATTED.value, InstanceState.FORMAT_FAILED.value}


async def _instance_row(pool: asyncpg.Pool, instance: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM instance_list WHERE instance = $1", instance)
    if row is None:
        raise UserError(f"there is no instance {instance}; `flows instances` lists them")
    return row


async def _wait_for_state(pool: asyncpg.Pool, instance: int, finals: set[str], label: str,
                          timeout: float, ts_outcome_after: int | None = None) -> asyncpg.Record:
    """The instance row once its state is one of `finals`. With `ts_outcome_after` (a stream
    version), only once a TS outcome was recorded after it: a resent Rejected instance is already
    in a final state before the new outcome arrives."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from contracts import flows
    from services.runtime.read_models import instance_stream

    deadline = time.monotonic() + timeout
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"{label} instance {instance}", total=None)
        while True:
            row = await pool.fetchrow("SELECT * FROM instance_list WHERE instance = $1", instance)
            if row is not None:
                progress.update(task, description=f"{label} instance {instance}: {row['state']}")
                if row["state"] in finals and (ts_outcome_after is None or await pool.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = $1 AND version > $2 "
                        "AND type = $3 AND data->>'instance_outcome' IS NOT NULL)",
                        instance_stream(instance), ts_outcome_after, flows.TYPE_OF[flows.TsFeedbackReceived])):
                    return row
            if time.monotonic() > deadline:
                # The request is on Kafka, taken when its service runs. Asked again, it names the same version of
                # the history, so its service acknowledges it as a repeat and does nothing twice.
                raise UserError(f"instance {instance} is still {row['state'] if row else 'not created'} after "
                                f"{timeout:.0f} s. The request is recorded and waits for its service, which takes it "
                                "when it runs (is it running? `flows stack status`; its backlog: `flows lag`): "
                                "asking again adds nothing, the service takes a repeat as the same request; follow "
                                f"it with `flows show {instance}`")
            await asyncio.sleep(0.2)


def print_outcome(row: asyncpg.Record) -> None:
    state = row["state"]
    colour = "green" if state in ("Checked", "Formatted", "Confirmed") else "red"
    console.print(f"instance [bold]{row['instance']}[/] ({row['flow_type']} {row['ente']} "
                  f"{row['period_start']}..{row['period_end']}): [{colour}]{state}[/]")
    if row["counts"]:
        console.print("  counts: " + ", ".join(f"{k} {v}" for k, v in row["counts"].items()))
    if row["errors"]:
        console.print(f"  [red]{row['errors']} errors[/]: {row['summary'] or ''}")
    if row["counts"] and not any(row["counts"].values()):
        console.print(f"  [yellow]no source data for ente {row['ente']} in {row['period_start']}.."
                      f"{row['period_end']}: the load is empty (NO_SOURCE_DATA)[/]")
    if row["warnings"]:
        console.print(f"  [yellow]{row['warnings']} warnings[/]: `flows feedback {row['instance']}` lists them")
    if state == "Failed loading":
        console.print(f"  every bad record is in the feedback: `flows feedback {row['instance']}`")
    if row["deleted_by"]:
        console.print(f"  deleted by {row['deleted_by']}: {row['deletion_reason'] or 'no reason given'}")
    if state == "Scheduled" and row["scheduled_at"]:
        console.print(f"  starts at {italian_time(row['scheduled_at'], '%Y-%m-%d %H:%M')} (Italian time)")


def load_request(flow_type: str, ente: str, start: date, end: date, version: str, at: datetime | None,
                 requested_by: str) -> flows.LoadRequested:
    """The load command, as the CLI and the console build it (raises pydantic's ValidationError)."""
    from contracts import flows

    return flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType(flow_type), version=version,
                               ente=ente, period=flows.Period(start=start, end=end), scheduled_at=at,
                               requested_by=requested_by)


async def send_load_request(bootstrap: str, request: flows.LoadRequested) -> None:
    from contracts import flows
    from services.runtime.commands import send_command

    await send_command(bootstrap, flows.TYPE_OF[flows.LoadRequested], request, key=str(request.request_id))


def traced(cfg: Settings) -> None:
    """Traces of a CLI command: to the configured OTLP endpoint or file, else to the local stack's
    <state>/traces/flows-cli.jsonl (beside the services' files)."""
    from services.runtime import tracing

    if not cfg.otlp_endpoint and cfg.traces_file is None:
        from deploy import localstack

        cfg = cfg.model_copy(update={"traces_file": localstack.state_dir() / "traces" / "flows-cli.jsonl"})
    tracing.setup(cfg, "flows-cli")


async def load(flow_type: str, ente: str, start: date, end: date, version: str, at: datetime | None,
               wait: bool, requested_by: str, timeout: float = 600) -> int:
    """`flows load`: a new trace (its root span) that the load request carries to the loader."""
    from services.runtime import tracing

    cfg = settings()
    traced(cfg)
    with tracing.tracer().start_as_current_span(
            "flows load", attributes={"flows.flow_type": flow_type, "flows.ente": ente,
                                      "flows.period": f"{start}..{end}", "enduser.id": requested_by}) as span:
        instance = await _load(cfg, flow_type, ente, start, end, version, at, wait, requested_by, timeout)
        span.set_attribute("flows.instance", instance)
        return instance


async def _load(cfg: Settings, flow_type: str, ente: str, start: date, end: date, version: str,
                at: datetime | None, wait: bool, requested_by: str, timeout: float) -> int:
    from services.loader.catalogue import unknown_ente_reason

    request = load_request(flow_type, ente, start, end, version, at, requested_by)
    if (unknown := unknown_ente_reason(ente)) is not None:
        raise UserError(unknown)
    async with database(cfg) as pool:
        await send_load_request(cfg.kafka_bootstrap, request)
        deadline = time.monotonic() + 60
        instance = None
        while instance is None:
            instance = await pool.fetchval("SELECT instance FROM instance_list WHERE request_id = $1",
                                           request.request_id)
            if instance is None:
                if time.monotonic() > deadline:
                    raise UserError(f"the load request {request.request_id} was sent but no loader took it in "
                                    "60 s: is the loader running? (`flows stack status`)")
                await asyncio.sleep(0.1)
        console.print(f"instance [bold]{instance}[/] created for {flow_type} {ente} {start}..{end}")
        if wait and at is None:
            print_outcome(await _wait_for_state(pool, int(instance), final_load(), "loading", timeout))
        return int(instance)


async def send_format_request(bootstrap: str, pool: asyncpg.Pool, row: asyncpg.Record, requested_by: str) -> None:
    """The format command for the instance of `row` (its instance_list row), if its state allows it. It names
    the version of the history read now: asked again before the first is taken, the formatter knows it repeats."""
    from contracts import flows
    from contracts.states import IllegalTransition, InstanceState, target_of
    from services.runtime.commands import send_command

    instance = int(row["instance"])
    try:
        target_of(flows.TYPE_OF[flows.FormattingStarted], {}, InstanceState(row["state"]))
    except IllegalTransition as exc:
        raise UserError(f"instance {instance} is {row['state']}: it cannot be formatted "
                        "(only Checked or Format failed instances can)") from exc
    await send_command(bootstrap, flows.TYPE_OF[flows.FormatRequested],
                       flows.FormatRequested(instance=instance, requested_by=requested_by,
                                             seen_version=await stream_version(pool, instance)), key=str(instance))


async def stream_version(pool: asyncpg.Pool, instance: int) -> int:
    """The version of the instance's history now: its last event's (0 before the first)."""
    from services.runtime.read_models import instance_stream

    return int(await pool.fetchval("SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1",
                                   instance_stream(instance)))


async def instance_trace(pool: asyncpg.Pool, instance: int) -> dict[str, str]:
    """The trace context stored with the instance's first traced event (its load): {} when none was."""
    from services.runtime import tracing
    from services.runtime.read_models import instance_stream

    return await tracing.stored_trace(pool, instance_stream(instance))


async def format_instance(instance: int, wait: bool, requested_by: str, timeout: float = 600) -> None:
    """`flows format N`: continues the trace of instance N's load (a new trace when the load had none)."""
    from services.runtime import tracing

    cfg = settings()
    traced(cfg)
    async with database(cfg) as pool:
        with tracing.tracer().start_as_current_span(
                "flows format", context=tracing.extract(await instance_trace(pool, instance)),
                attributes={"flows.instance": instance, "enduser.id": requested_by}):
            await _format(pool, cfg, instance, wait, requested_by, timeout)


async def _format(pool: asyncpg.Pool, cfg: Settings, instance: int, wait: bool, requested_by: str,
                  timeout: float) -> None:
    from contracts.states import InstanceState

    await send_format_request(cfg.kafka_bootstrap, pool, await _instance_row(pool, instance), requested_by)
    if wait:
        await _wait_for_state(pool, instance, {InstanceState.FORMATTING.value, *final_format()}, "formatting", 60)
        done = await _wait_for_state(pool, instance, final_format(), "formatting", timeout)
        print_outcome(done)
        if done["state"] == InstanceState.FORMATTED.value:
            await list_files(instance)
        elif done["summary"]:
            console.print(f"  [red]{done['summary']}[/]")


async def list_instances(flow_type: str | None, created_from: date | None, state: str | None) -> None:
    async with database() as pool:
        rows = await pool.fetch(
            f"""SELECT * FROM instance_list
               WHERE ($1::text IS NULL OR flow_type = $1)
                 AND ($2::date IS NULL OR created_at >= {italian_day_start_sql('$2::date')})
                 AND ($3::text IS NULL OR lower(state) = lower($3))
               ORDER BY instance DESC""", flow_type, created_from, state)
    console.print(table(
        "Istanze di flusso",
        ["NAME", "ENTE", "ISTANZA FLUSSO", "ISTANZA FONTE", "DATA CREAZIONE", "INIZIO RIF.", "FINE RIF.", "STATO"],
        [(r["flow_type"], r["ente"], r["instance"], r["source_instance"],
          italian_time(r["created_at"], "%d/%m/%Y %H:%M"), r["period_start"].strftime("%d/%m/%Y"),
          r["period_end"].strftime("%d/%m/%Y"), r["state"]) for r in rows]))
    if not rows:
        console.print("no instance matches; `flows load` creates one")


async def show(instance: int) -> None:
    from services.runtime.eventstore import EventStore
    from services.runtime.read_models import instance_stream

    async with database() as pool:
        row = await _instance_row(pool, instance)
        store = EventStore(pool, source="/flows/cli")
        history = await store.read_stream(instance_stream(instance))
    print_outcome(row)
    console.print(table(f"History of instance {instance}", ["#", "time", "event", "actor", "details"],
                        [(e.version, italian_time(e.recorded_at, "%Y-%m-%d %H:%M:%S.%f")[:-3], e.type, _who(e),
                          _details(e.data)) for e in history]))


def _who(event: StoredEvent) -> str:
    """The actor, and the replica of the service that wrote the event when it recorded one (metadata
    `replica`, `flows stack up --replicas N`): `loader (loader-2)`."""
    replica = event.metadata.get("replica")
    return f"{event.actor} ({replica})" if replica else event.actor


def _details(data: dict) -> str:
    keep = {k: v for k, v in data.items()
            if k in ("source_instance", "counts", "errors", "warnings", "summary", "reasons", "protocollo", "stato",
                     "outcome", "instance_outcome", "reason", "part", "parts")}
    if "files" in data:
        keep["files"] = [f["name"] for f in data["files"]]
    return ", ".join(f"{k}={v}" for k, v in keep.items())


async def _files(pool: asyncpg.Pool, instance: int) -> list[asyncpg.Record]:
    await _instance_row(pool, instance)
    return await pool.fetch("SELECT * FROM instance_files WHERE instance = $1 ORDER BY kind = 'feedback', name",
                            instance)


async def list_files(instance: int) -> None:
    from services.runtime.filestore import FileStore

    cfg = settings()
    async with database(cfg) as pool:
        rows = await _files(pool, instance)
    console.print(table(f"Files of instance {instance}", ["name", "kind", "records", "bytes", "sha256", "path"],
                        [(r["name"], r["kind"], r["records"], r["bytes"], r["sha256"][:16] + "...",
                          FileStore(cfg.files_dir).path(r["sha256"])) for r in rows]))


async def view_file(instance: int, name: str, limit: int, offset: int) -> None:
    """`flows files N --view NAME`: a file's records, recorded in the access log first (services/cli/personal.py)."""
    from services.cli.fileview import file_rows
    from services.cli.personal import command_line, record_read
    from services.runtime.filestore import FileStore

    cfg = settings()
    async with database(cfg) as pool:
        rows = {r["name"]: r for r in await _files(pool, instance)}
        created = await pool.fetchrow("SELECT flow_type, version, ente FROM instance_list WHERE instance = $1",
                                      instance)
        if name not in rows:
            raise UserError(f"instance {instance} has no file {name!r}; it has: {', '.join(rows) or 'none'}")
        r = rows[name]
        path = FileStore(cfg.files_dir).path(r["sha256"])
        # read first (a file that is no table, an offset past its end: refused, nothing shown, nothing recorded)
        title, columns, records = file_rows(path, r["kind"], created["flow_type"], created["version"], limit, offset)
        await record_read(pool, command_line("files", instance, view=name, limit=limit, offset=offset or None),
                          "file-view", instance, ente=created["ente"], file=name)
    console.print(table(title, columns, records))


async def export(instance: int, out: Path) -> None:
    from services.cli.personal import command_line, record_read
    from services.runtime.filestore import FileStore

    # A folder that cannot be one is said naming --out: the OSError reached user_errors, which read it as
    # "cannot reach the platform ... Is it running?", with the platform up.
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: give a folder (created when missing)")
    cfg = settings()
    async with database(cfg) as pool:
        rows = await _files(pool, instance)
        if not rows:
            raise UserError(f"instance {instance} has no files yet")
        # every file of the instance leaves the platform: recorded before the first byte is written
        await record_read(pool, command_line("export", instance, out=out), "files-export", instance,
                          ente=await pool.fetchval("SELECT ente FROM instance_list WHERE instance = $1", instance),
                          file=", ".join(r["name"] for r in rows), out=str(out.absolute()))
    store = FileStore(cfg.files_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for r in rows:
            target = out / r["name"]
            with store.open(r["sha256"]) as src, target.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            console.print(f"wrote {target} ({r['bytes']} bytes)")
    except OSError as exc:
        if exc.filename is None or not str(exc.filename).startswith(str(out)):
            raise  # the file store's side, not the folder given
        raise UserError(f"--out {out}: cannot write {exc.filename} ({exc.strerror})") from exc


async def feedback(instance: int, out: Path | None, limit: int) -> None:
    from services.cli.personal import command_line, record_read
    from services.runtime.esiti import esiti, esiti_csv
    from services.runtime.filestore import FileStore

    cfg = settings()
    async with database(cfg) as pool:
        row = await _instance_row(pool, instance)
        files = await esiti(pool, instance)  # the console's feedback pages list the same, in the same order
        if not files:
            console.print(f"instance {instance} ({row['state']}) has no feedback: nothing was wrong")
            return
        # its lines name records, fields and codici fiscali: recorded before any is shown or written
        await record_read(pool, command_line("feedback", instance, out=out, limit=limit if out is None else None),
                          "feedback-download" if out is not None else "feedback-view", instance, ente=row["ente"],
                          file=", ".join(f["name"] for f in files), out=str(out.absolute()) if out else None)
    store = FileStore(cfg.files_dir)
    if out is not None:
        # One file with every esito (each written over the one before kept only the last): services/runtime/esiti.py
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as dst:
            for chunk in esiti_csv([(f["name"], store.path(f["sha256"])) for f in files]):
                dst.write(chunk)
        names = ", ".join(f["name"] for f in files)
        console.print(f"wrote {out} ({names})" if len(files) == 1 else
                      f"wrote {out}: {len(files)} esiti ({names}), each line led by its esito")
        return
    for f in files:
        with store.open(f["sha256"]) as src:
            lines = src.read().decode("utf-8", errors="replace").splitlines()
        header, body = lines[0].split(";"), [ln.split(";", len(lines[0].split(";")) - 1) for ln in lines[1:]]
        console.print(table(f"{f['name']}: {len(body)} problems", header, body[:limit]))
        if len(body) > limit:
            console.print(f"... {len(body) - limit} more: `flows feedback {instance} --out FILE` writes them all")


async def delete(instance: int, deleted_by: str, reason: str | None) -> None:
    async with database() as pool:
        await append_deletion(pool, await _instance_row(pool, instance), deleted_by, reason)
    console.print(f"instance {instance} marked deleted; its history is kept (`flows show {instance}`)")


async def append_deletion(pool: asyncpg.Pool, row: asyncpg.Record, deleted_by: str, reason: str | None,
                          source: str = "/flows/cli") -> None:
    """Appends the deletion of the instance of `row` (its instance_list row), if its state allows it."""
    from contracts import flows
    from contracts.states import IllegalTransition, InstanceState, target_of
    from services.runtime.eventstore import ConcurrencyError, EventStore, NewEvent
    from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream

    instance = int(row["instance"])
    store = EventStore(pool, source=source, projections=FLOW_PROJECTIONS)
    try:
        target_of(flows.TYPE_OF[flows.InstanceDeleted], {}, InstanceState(row["state"]))
    except IllegalTransition as exc:
        raise UserError(f"instance {instance} is {row['state']}: it cannot be deleted now ({exc})") from exc
    version = await store.stream_version(instance_stream(instance))
    event = flows.InstanceDeleted(instance=instance, deleted_by=deleted_by, reason=reason)
    try:
        await store.append(instance_stream(instance), [NewEvent(flows.TYPE_OF[flows.InstanceDeleted],
                                                                event.model_dump(mode="json"), actor=deleted_by)],
                           expected_version=version, key=str(instance))
    except ConcurrencyError as exc:
        raise UserError(f"instance {instance} changed while deleting it; look at `flows show {instance}` "
                        "and try again") from exc
