"""One load's spans, from the CLI command to `flows.formatted`, share one trace id across processes.

Four real processes on the real Kafka and PostgreSQL, each writing its own JSON-lines traces file:
`flows load` (the CLI), the loader service, `flows format` (the CLI again), the formatter service. The
files are read back: the `flows load` root span's trace id must be the trace of every span of the load
and of its format, down to the outbox relay's publishing of `flows.formatted`, and the spans must form
one tree (every parent recorded). The figures are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from contracts import flows
from contracts.envelope import Envelope
from services.formatter import handlers as formatter_handlers
from services.loader import handlers as loader_handlers
from services.runtime import tracing
from services.runtime.db import create_pool
from services.runtime.host import prepare_database
from services.runtime.locks import FORMAT_LOCK
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream
from simulators.cup.generator import SOURCE_FILES, generate
from tests.integration.test_interruptions import LOAD_EVENTS, _Lines, _loader, _running, _store_month
from tests.isolation import REPO, logged_process, scratch_database
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

ENTE, MONTH, START, END = "204", "2020-10", "2020-10-01", "2020-10-31"


def _env(url: str, files: Path, traces: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_") and k != "DATABASE_URL"}
    env.update(DATABASE_URL=url, FLOWS_KAFKA_BOOTSTRAP=KAFKA, FLOWS_FILES_DIR=str(files),
               FLOWS_TRACES_FILE=str(traces), FLOWS_LOG_FORMAT="json", FLOWS_OPERATOR="ops.trace")
    return env


async def _wait_started(log: Path, process: asyncio.subprocess.Process, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while b"service.started" not in (log.read_bytes() if log.exists() else b""):
        assert process.returncode is None, f"{log.name} exited {process.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{log.name}: not started in {timeout} s:\n{log.read_text()[-3000:]}"
        await asyncio.sleep(0.2)


async def _cli(env: dict[str, str], *args: str, timeout: float = 240) -> str:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", *args, env=env, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"flows {' '.join(args)} exited {proc.returncode}:\n{text[-3000:]}"
    return text


async def _publish_sources(prefix_seed: int) -> tuple[str, int]:
    """A month of ente ENTE published as the CUP would (no trace context): (id prefix, services)."""
    generation = generate(ENTE, MONTH, 25, seed=prefix_seed)
    records = list(generation)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        acks = []
        for record in records:
            source_id = str(vars(record)["source_id"])
            topic = f"sources.{SOURCE_FILES[type(record)][0]}"
            acks.append(await producer.send(topic, record.model_dump_json().encode(), key=source_id.encode(),
                                            headers=Envelope.new(topic, "/cup/test", subject=source_id).to_headers()))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return generation.prefix, sum(1 for r in records if SOURCE_FILES[type(r)][0] == "delivered-service")


def _spans(traces: Path) -> list[dict[str, Any]]:
    spans = []
    for path in sorted(traces.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            span = json.loads(line)
            span["file"] = path.name
            spans.append(span)
    return spans


def _trace_id(span: dict[str, Any]) -> str:
    return str(span["context"]["trace_id"])


@pytest.fixture
async def world(stack, tmp_path: Path) -> AsyncIterator[tuple[str, Path, Path]]:  # type: ignore[no-untyped-def]
    """A fresh database; the loader and the formatter as processes of their own, tracing to files."""
    traces, files = tmp_path / "traces", tmp_path / "files"
    suffix = uuid.uuid4().hex[:8]
    async with scratch_database("t_trace") as url, AsyncExitStack() as stack_:
        for name in ("loader", "formatter"):
            log = tmp_path / f"{name}.log"
            process = await stack_.enter_async_context(logged_process(
                log, "-m", "tests.integration.traced_service", name, suffix,
                env=_env(url, files, traces / f"{name}.jsonl")))
            await _wait_started(log, process)
        yield url, traces, files


async def test_a_load_and_its_format_are_one_trace_across_four_processes(world: tuple[str, Path, Path]) -> None:
    url, traces, files = world
    prefix, services = await _publish_sources(random.randrange(10_000, 99_999))
    conn = await asyncpg.connect(url)
    try:
        async with asyncio.timeout(90):  # the loader stored the month's sources
            while await conn.fetchval("SELECT count(*) FROM source_service WHERE starts_with(source_id, $1)",
                                      prefix) < services:
                await asyncio.sleep(0.2)

        loaded = await _cli(_env(url, files, traces / "cli-load.jsonl"),
                            "load", "--type", "FLUSSO_C", "--ente", ENTE, "--from", START, "--to", END)
        found = re.search(r"instance (\d+) created", loaded)
        assert found, loaded
        instance = int(found.group(1))
        assert "Checked" in loaded, loaded
        formatted = await _cli(_env(url, files, traces / "cli-format.jsonl"), "format", str(instance))
        assert "Formatted" in formatted, formatted

        event = await conn.fetchrow("SELECT event_id, metadata->>'traceparent' AS traceparent FROM events "
                                    "WHERE stream_id = $1 AND type = 'flows.formatted'", f"instance-{instance}")
        assert event is not None and event["traceparent"], f"flows.formatted of instance {instance}: {event}"

        # The relay publishes flows.formatted after the append the CLI saw: its span may come a moment later.
        roots = []
        async with asyncio.timeout(30):
            while True:
                spans = _spans(traces)
                roots = [s for s in spans if s["name"] == "flows load" and s["file"] == "cli-load.jsonl"]
                assert len(roots) == 1, [s["name"] for s in spans if s["file"] == "cli-load.jsonl"]
                trace_id = _trace_id(roots[0])
                if any(s["name"] == "outbox publish flows.formatted" and _trace_id(s) == trace_id for s in spans):
                    break
                await asyncio.sleep(0.2)
    finally:
        await conn.close()

    root = roots[0]
    assert root["parent_id"] is None, "`flows load` starts the trace"
    in_trace = [s for s in spans if _trace_id(s) == trace_id]
    names = {(s["file"], s["name"]) for s in in_trace}
    processes = {(s["resource"]["attributes"]["service.name"], s["resource"]["attributes"]["process.pid"])
                 for s in in_trace}
    print(f"\ntrace {trace_id}: {len(in_trace)} spans of {len(spans)} in {len(processes)} processes "
          f"{sorted(processes)}; instance {instance}, {services} services")
    for s in sorted(in_trace, key=lambda s: s["start_time"]):
        print(f"  {s['file']:<16} {s['name']}")

    # The chain, from the CLI command to flows.formatted, every step in the one trace.
    for step in [("cli-load.jsonl", "flows load"), ("cli-load.jsonl", "send flows.load-requested"),
                 ("loader.jsonl", "consume flows.load-requested"),
                 ("cli-format.jsonl", "flows format"), ("cli-format.jsonl", "send flows.format-requested"),
                 ("formatter.jsonl", "consume flows.format-requested")]:
        assert step in names, f"{step} is not in trace {trace_id}: {sorted(names)}"
    assert any(name == "outbox publish flows.formatted" for _, name in names)
    assert any(name == "outbox publish flows.load-checked" for _, name in names), sorted(names)
    # At least three processes (here four: two CLI commands and two services), each with its own pid.
    assert len(processes) >= 3 and len({pid for _, pid in processes}) == len(processes), processes
    assert {name for name, _ in processes} >= {"flows-cli", "loader", "formatter"}, processes
    # One tree: every span's parent is a span of the trace (nothing lost between the processes).
    ids = {s["context"]["span_id"] for s in in_trace}
    orphans = [(s["file"], s["name"]) for s in in_trace if s["parent_id"] is not None and s["parent_id"] not in ids]
    assert not orphans, orphans
    # The event itself carries the trace: its metadata's traceparent is the formatter's span in this trace.
    _version, event_trace, parent, _flags = event["traceparent"].split("-")
    assert f"0x{event_trace}" == trace_id
    consumer = next(s for s in in_trace if s["name"] == "consume flows.format-requested")
    assert f"0x{parent}" == consumer["context"]["span_id"]


async def test_a_load_the_loaders_pass_takes_up_continues_the_trace_of_its_command(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A load recorded Running by its command, whose own run never came (the loader died, or its 2 s pass got to the
    instance first: the commit of Running and the command's run are two steps): the pass takes it up, and every
    event of the load, the outcome too, is in the command's trace. Before, the pass ran it outside any trace, so
    the trace of `flows load` lost the load's outcome (and its relay span: the flake this test was written for)."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    command = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    format_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    asked = {"traceparent": f"00-{format_trace}-00f067aa0ba902b7-01"}
    async with scratch_database("t_trace_pass") as url:
        await _store_month(url, "203", seed=87)
        pool = await create_pool(url, min_size=1, max_size=6)
        try:
            await prepare_database(pool, FLOW_PROJECTIONS)
            deps = _loader(pool, _Lines(), tmp_path / "files", "test-trace-pass")
            with tracing.tracer().start_as_current_span("flows load", context=tracing.extract(command)):
                instance = await _running(deps, "203")  # what the command's handler records before it runs it
            await loader_handlers.run_due(deps)  # the pass takes it up
            loaded = await pool.fetch("SELECT type, metadata->>'traceparent' AS traceparent FROM events "
                                      "WHERE stream_id = $1 ORDER BY version", instance_stream(instance))

            # The same for a format: requested (in a trace of its own: the console's), then taken up by the pass.
            formatter = formatter_handlers.FormatterDeps(pool=pool, store=deps.store, files=deps.files)
            with tracing.tracer().start_as_current_span("console: formatta", context=tracing.extract(asked)):
                async with formatter.instances.working(FORMAT_LOCK, instance) as current:
                    assert current is not None
                    current = await formatter.instances.append(current, flows.FormatRequested(
                        instance=instance, requested_by="test.trace"), actor="test.trace", publish=False)
                    await formatter.instances.append(current, flows.FormattingStarted(instance=instance))
            await formatter_handlers.resume_interrupted(formatter)
            formatted = await pool.fetch("SELECT type, metadata->>'traceparent' AS traceparent FROM events "
                                         "WHERE stream_id = $1 AND version > $2 ORDER BY version",
                                         instance_stream(instance), len(loaded))
        finally:
            await pool.close()

    assert [r["type"] for r in loaded] == LOAD_EVENTS, loaded
    assert all(r["traceparent"] and r["traceparent"].split("-")[1] == trace_id for r in loaded), loaded
    assert [r["type"] for r in formatted] == ["flows.format-requested", "flows.formatting-started",
                                              "flows.formatted"], formatted
    assert all(r["traceparent"] and r["traceparent"].split("-")[1] == format_trace for r in formatted), formatted
