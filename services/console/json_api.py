"""The JSON API under /api (OpenAPI at /openapi.json): the same guard and rules as the pages, for regional
systems that prefer HTTP to Kafka; a machine client authenticates with an API key bound to its enti."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import asyncpg
import pydantic
import structlog
from fastapi import HTTPException, Response
from fastapi.responses import FileResponse, JSONResponse

from contracts.flows import FlowType
from services.cli.instances import load_request, send_load_request
from services.console.access import (
    LIST_INSTANCES,
    READ_INSTANCE,
    REQUEST_LOAD,
    record_access,
)
from services.console.instance_pages import (
    all_esiti_response,
    attachment_headers,
    feedback_files,
    instance_file,
    parse_search,
    search_instances,
)
from services.console.web import PAGE_SIZE, Ctx, api, console_of, route
from services.formatter.layouts import version_in_force
from services.loader.load_rules import period_not_over

log = structlog.get_logger("console")

# ---------------------------------------------------------------- JSON API
def _instance_json(row: asyncpg.Record) -> dict[str, Any]:
    """An instance as the API gives it: values, no sentences of ours. `summary` is the text of the instance's last
    outcome as its producer wrote it (a failed load's '3 errori in 2 record', a format failure's reasons, Sistema
    TS's reason), or null; a deletion is `deleted_by` and `deletion_reason` (null when none was given), null
    while the instance is not deleted."""
    return {"instance": row["instance"], "flow_type": row["flow_type"], "version": row["version"],
            "ente": row["ente"], "source_instance": row["source_instance"], "created_at": row["created_at"].isoformat(),
            "period_start": row["period_start"].isoformat(), "period_end": row["period_end"].isoformat(),
            "state": row["state"], "counts": row["counts"], "errors": row["errors"], "warnings": row["warnings"],
            "summary": row["summary"], "deleted_by": row["deleted_by"], "deletion_reason": row["deletion_reason"]}


@route(api, "GET", "/istanze", LIST_INSTANCES, "api")
async def api_instances(ctx: Ctx, tipo: str | None = None, ente: str | None = None, dal: str | None = None,
                        al: str | None = None, stato: str | None = None, prima: int | None = None) -> Response:
    """Search instances, newest first; `prima` is the keyset cursor (the last instance of the previous page)."""
    request = ctx.request
    q, errors = parse_search(request.query_params)
    if errors:
        return JSONResponse({"detail": errors}, status_code=422)
    rows = await search_instances(console_of(request).pool, ctx.principal, q, PAGE_SIZE + 1)
    more, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
    return JSONResponse({"items": [_instance_json(r) for r in rows],
                         "next": rows[-1]["instance"] if more else None})


@route(api, "GET", "/istanze/{instance}", READ_INSTANCE, "api")
async def api_instance(ctx: Ctx, instance: int) -> Response:
    request = ctx.request
    assert ctx.row is not None
    files = await console_of(request).pool.fetch(
        "SELECT name, kind, records, bytes, sha256 FROM instance_files WHERE instance = $1 ORDER BY name", instance)
    return JSONResponse({**_instance_json(ctx.row), "files": [dict(f) for f in files]})


class LoadRequestBody(pydantic.BaseModel):
    """A load request of a machine client: one of its enti, a reference period, optionally a start time."""

    flow_type: FlowType
    ente: str = pydantic.Field(examples=["201"])
    period_start: date
    period_end: date
    scheduled_at: datetime | None = None


@route(api, "POST", "/caricamenti", REQUEST_LOAD, "api", status_code=202)
async def api_request_load(ctx: Ctx, body: LoadRequestBody) -> Response:
    """Request a load; answers the request id (the instance appears in /api/istanze when the loader takes it)."""
    problems = {}
    if body.ente not in ctx.principal.enti:
        problems["ente"] = f"ente {body.ente!r} is not one of this client's enti"
    if body.period_end < body.period_start:
        problems["period_end"] = f"period_end {body.period_end} is before period_start {body.period_start}"
    # the loader's own rule, asked first so the client is told at once (the loader would dead-letter the command)
    elif (not_over := period_not_over(body.period_end, body.scheduled_at)) is not None:
        problems["period_end"] = f"period_end {body.period_end}: {not_over.reason()}"
    if problems:
        return JSONResponse({"detail": problems}, status_code=422)
    try:
        command = load_request(body.flow_type.value, body.ente, body.period_start, body.period_end,
                               version_in_force(body.flow_type.value, body.period_start),
                               body.scheduled_at, ctx.principal.name)
    except pydantic.ValidationError as exc:
        return JSONResponse({"detail": {".".join(map(str, e["loc"])): e["msg"] for e in exc.errors()}},
                            status_code=422)
    await send_load_request(console_of(ctx.request).settings.kafka_bootstrap, command)
    return JSONResponse({"request_id": str(command.request_id)}, status_code=202)


@route(api, "GET", "/istanze/{instance}/feedback", READ_INSTANCE, "api")
async def api_feedback(ctx: Ctx, instance: int) -> Response:
    """The feedback CSV of an instance, every esito (recorded in the access log: it names codici fiscali). One esito
    (the load's feedback) is its file as is; several (a 730's load feedback and Sistema TS's errors of each part)
    come in turn, each after its own header, every line led by a column `esito` naming its file."""
    files = await feedback_files(ctx)
    if not files:
        raise HTTPException(404)
    console = console_of(ctx.request)
    await record_access(console.store, ctx.principal, "feedback-download", instance, ctx.address,
                        {"file": ", ".join(f["name"] for f in files), "via": "api"})
    return all_esiti_response(console, instance, files)


@route(api, "GET", "/istanze/{instance}/file/{name}", READ_INSTANCE, "api")
async def api_file(ctx: Ctx, instance: int, name: str) -> Response:
    """One file of an instance (recorded in the access log)."""
    f = await instance_file(ctx, name)
    console = console_of(ctx.request)
    await record_access(console.store, ctx.principal, "file-download", instance, ctx.address,
                        {"file": name, "via": "api"})
    return FileResponse(console.files.path(f["sha256"]), media_type=f["media_type"], headers=attachment_headers(name))


