"""The trace context's way through headers and metadata, the JSON-lines exporter, and OTLP export to a real
HTTP receiver (a child process configured by FLOWS_OTLP_ENDPOINT, as a service would be)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from contracts.envelope import from_kafka_headers
from services.runtime import outbox, tracing
from tests.stack_urls import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tracer(tmp_path: Path) -> Iterator[tuple[trace.Tracer, Path]]:
    """A tracer of a provider of the test's own (the process's global one is left alone), writing a file."""
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(tracing.JsonLinesSpanExporter(path)))
    yield provider.get_tracer("test"), path
    provider.shutdown()


def test_the_current_span_goes_out_as_traceparent_and_comes_back_as_its_parent(tracer) -> None:  # type: ignore[no-untyped-def]
    test_tracer, path = tracer
    assert tracing.carrier() == {}  # no span, nothing to carry
    with test_tracer.start_as_current_span("sender") as sender:
        carried = tracing.carrier()
        assert tracing.with_trace({"causation_id": "c"}) == {**carried, "causation_id": "c"}
        assert tracing.with_trace({"traceparent": "mine"})["traceparent"] == "mine"  # the event's own wins
    ids = sender.get_span_context()
    assert carried["traceparent"] == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags):02x}"
    with test_tracer.start_as_current_span("receiver", context=tracing.extract(carried)) as receiver:
        pass
    assert receiver.get_span_context().trace_id == ids.trace_id
    assert receiver.parent is not None and receiver.parent.span_id == ids.span_id
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(s["name"], s["context"]["trace_id"]) for s in lines] == [("sender", f"0x{ids.trace_id:032x}"),
                                                                     ("receiver", f"0x{ids.trace_id:032x}")]


@pytest.mark.parametrize("bad", ["", "garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "00-abc-def-01"])
def test_a_missing_or_malformed_traceparent_starts_a_new_trace(tracer, bad: str) -> None:  # type: ignore[no-untyped-def]
    test_tracer, _ = tracer
    assert not trace.get_current_span(tracing.extract({"traceparent": bad})).get_span_context().is_valid
    with test_tracer.start_as_current_span("root", context=tracing.extract({"traceparent": bad})) as span:
        pass
    assert span.parent is None and span.get_span_context().is_valid


def test_outbox_headers_carry_the_distributed_tracing_extension(tracer) -> None:  # type: ignore[no-untyped-def]
    test_tracer, _ = tracer
    event_id = uuid.uuid4()
    with test_tracer.start_as_current_span("append"):
        carried = tracing.carrier()
        rows = outbox.headers_json_for_append([(event_id, "flows.formatted")], time=datetime.now(UTC), key="7",
                                              source="/flows/formatter", trace=carried)
    headers = json.loads(rows[0])
    envelope = from_kafka_headers([(name, value.encode()) for name, value in headers])
    assert envelope.extensions["traceparent"] == carried["traceparent"]
    assert envelope.id == str(event_id)
    # Without a trace the headers are what they were.
    plain = json.loads(outbox.headers_json_for_append([(event_id, "flows.formatted")], time=datetime.now(UTC),
                                                      key="7", source="/flows/formatter")[0])
    assert not any(name.startswith("ce_trace") for name, _ in plain)
    # The relay replaces the append's context with its own span's.
    with test_tracer.start_as_current_span("relay") as relay:
        relayed = tracing.trace_headers(headers, relay.get_span_context())
    own = tracing.carrier(relay.get_span_context())["traceparent"]
    assert [v for n, v in relayed if n == "ce_traceparent"] == [own]
    assert len(relayed) == len(headers)


def test_spans_are_exported_over_otlp_http_when_an_endpoint_is_configured() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, str, str]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                for scope in resource_spans.scope_spans:
                    received.extend((self.path, service, span.name) for span in scope.spans)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port(910, 990)), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_")}
        env.update(FLOWS_OTLP_ENDPOINT=f"http://127.0.0.1:{server.server_port}", FLOWS_SERVICE_NAME="otlp-probe")
        code = ("from services.runtime import tracing\nfrom services.runtime.settings import Settings\n"
                "provider = tracing.setup(Settings(), 'x')\n"
                "with tracing.tracer().start_as_current_span('probe-span'): pass\nprovider.shutdown()\n")
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
    finally:
        server.shutdown()
        server.server_close()
    assert received == [("/v1/traces", "otlp-probe", "probe-span")]
