"""OpenTelemetry traces: one trace follows a command from the CLI through the services and the outbox relay.

Propagation. The W3C trace context travels in the CloudEvents Kafka headers as the CloudEvents
distributed-tracing extension: `ce_traceparent` (and `ce_tracestate` when there is one), i.e. the
envelope's extensions `traceparent`/`tracestate`.

- `send_command` (services.runtime.commands) starts a PRODUCER span (a root span, or a child of the
  CLI command's span) and puts its context in the command's headers.
- `consume` (services.runtime.broker) wraps the handling of each message in a CONSUMER span that
  continues the incoming `ce_traceparent`.
- `EventStore.append` stores the current span's context in each appended event's metadata
  (`traceparent`, `tracestate`: part of the hash chain like any metadata) and in its outbox row's
  headers; the outbox relay publishes each row inside a PRODUCER span, child of that context, and
  sends the relay span's context on (so the relay shows in the trace).
- `flows load` runs in a root span; `flows format N` continues the trace of instance N's load (the
  traceparent stored with the instance's first event), so one trace covers a load and its format.

Export (`setup`): to an OTLP/HTTP endpoint when `Settings.otlp_endpoint` is set, and/or to a local
JSON-lines file (`Settings.traces_file`: one span per line, OpenTelemetry's own JSON of a span,
written when the span ends). Neither set: nothing is recorded, but the context is still passed on
(the API's no-op tracer keeps the parent's ids), so a trace is not broken by an untraced process.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.runtime.settings import Settings

TRACER_NAME = "flows"
# The CloudEvents distributed-tracing extension's attributes (ce_ prefixed in Kafka headers).
TRACE_KEYS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()
_configured: TracerProvider | None = None
_lock = threading.Lock()


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one line of JSON (OpenTelemetry's `ReadableSpan.to_json`) to a file.

    One write per span on a file opened for appending: lines of concurrent exporters never interleave.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(span.to_json(indent=None) + "\n" for span in spans)
        try:
            with self._lock, self.path.open("a", encoding="utf-8") as out:
                out.write(text)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def setup(settings: Settings, service: str) -> TracerProvider | None:
    """Installs the process's tracer provider from `settings` (once); None when no exporter is configured."""
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        if not settings.otlp_endpoint and settings.traces_file is None:
            return None
        resource = Resource.create({"service.name": settings.service_name or service,
                                    "process.pid": os.getpid()})
        provider = TracerProvider(resource=resource)
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.otlp_endpoint.rstrip("/")
            if not endpoint.endswith("/v1/traces"):
                endpoint += "/v1/traces"
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        if settings.traces_file is not None:
            # Written as each span ends: a process killed later has still left its finished spans.
            provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(settings.traces_file)))
        trace.set_tracer_provider(provider)
        _configured = provider
        return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def carrier(span_context: Any = None) -> dict[str, str]:
    """{"traceparent": ..., "tracestate": ...} of the current span (or of `span_context`); {} without one."""
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(span_context)) if span_context is not None else None
    out: dict[str, str] = {}
    _PROPAGATOR.inject(out, context=ctx)
    return {k: v for k, v in out.items() if k in TRACE_KEYS and v}


def extract(attributes: Mapping[str, Any] | None) -> otel_context.Context:
    """The context carried by `traceparent`/`tracestate` in `attributes` (envelope extensions, event metadata);
    an empty context (a new root) when they are missing or malformed."""
    found = {k: str(attributes[k]) for k in TRACE_KEYS if attributes and attributes.get(k)}
    return _PROPAGATOR.extract(found, context=otel_context.Context())


async def stored_trace(pool: Any, stream_id: str, event_type: str | None = None) -> dict[str, str]:
    """The trace context stored with the first traced event of `stream_id` (an instance's: its load's, so a later
    step continues the load's trace), or with its latest traced `event_type` event; {} when none was."""
    row = await pool.fetchrow(
        "SELECT metadata->>'traceparent' AS traceparent, metadata->>'tracestate' AS tracestate FROM events "
        "WHERE stream_id = $1 AND metadata ? 'traceparent' AND ($2::text IS NULL OR type = $2) "
        "ORDER BY CASE WHEN $2::text IS NULL THEN version ELSE -version END LIMIT 1", stream_id, event_type)
    return {k: v for k, v in dict(row or {}).items() if v}


@contextlib.asynccontextmanager
async def continued(pool: Any, stream_id: str, name: str, event_type: str | None = None) -> AsyncIterator[None]:
    """A span `name` in the trace stored with `stream_id` (`stored_trace`): work a service's periodic pass takes up
    (a process died, the work was interrupted, the pass got there before the command's own run) stays in the trace
    of the command that asked for it."""
    stored = await stored_trace(pool, stream_id, event_type)
    with tracer().start_as_current_span(name, context=extract(stored)):
        yield


def with_trace(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """`attributes` plus the current span's traceparent/tracestate (those already in `attributes` win)."""
    current = carrier()
    if not current:
        return dict(attributes)
    return {**current, **attributes}


def trace_headers(headers: list[list[str]], span_context: Any) -> list[list[str]]:
    """JSON-friendly [name, value] header pairs with their ce_traceparent/ce_tracestate replaced by `span_context`."""
    names = {f"ce_{k}" for k in TRACE_KEYS}
    kept = [pair for pair in headers if pair[0] not in names]
    return kept + [[f"ce_{k}", v] for k, v in carrier(span_context).items()]
