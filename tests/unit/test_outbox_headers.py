"""The outbox headers of an append, serialised once per append: the same pairs as the envelope builds per event."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from services.runtime import outbox


def test_each_event_gets_the_envelopes_headers_with_its_own_id_and_type() -> None:
    at = datetime(2026, 11, 2, 6, 0, 1, 123456, tzinfo=UTC)
    events = [(uuid.uuid4(), "flows.load-checked"), (uuid.uuid4(), "flows.formatted"), (uuid.uuid4(), "tipo.è\"x")]
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "k=v"}
    for given in (None, trace):
        rows = outbox.headers_json_for_append(events, time=at, key="19\"47", source="/flows/loader", trace=given)
        for (event_id, kind), row in zip(events, rows, strict=True):
            expected = outbox.cloudevent_headers(event_id=event_id, type=kind, time=at, key="19\"47",
                                                 source="/flows/loader")
            expected += [[f"ce_{name}", value] for name, value in (given or {}).items()]
            assert sorted(map(tuple, json.loads(row))) == sorted(map(tuple, expected))
            assert json.loads(row)[:2] == [["ce_id", str(event_id)], ["ce_type", kind]]


def test_appends_of_one_aggregate_share_the_envelope_but_each_carries_its_own_time_and_trace() -> None:
    first, later = datetime(2026, 11, 2, 6, 0, 1, 5, tzinfo=UTC), datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    event_id = uuid.uuid4()
    rows = [outbox.headers_json_for_append([(event_id, "flows.formatted")], time=at, key="0001-01-01T00:00:00Z",
                                           source="/flows/formatter", trace=trace)[0]
            for at, trace in ((first, None), (later, {"traceparent": "00-aa-bb-01"}), (first, None))]
    headers = [dict(json.loads(row)) for row in rows]
    assert [h["ce_time"] for h in headers] == ["2026-11-02T06:00:01.000005Z", "2026-12-31T23:59:59Z",
                                               "2026-11-02T06:00:01.000005Z"]
    assert [h.get("ce_traceparent") for h in headers] == [None, "00-aa-bb-01", None]
    assert all(h["ce_subject"] == "0001-01-01T00:00:00Z" and h["ce_source"] == "/flows/formatter" for h in headers)
    assert rows[0] == rows[2]


def test_the_shared_headers_are_byte_for_byte_the_envelopes_json_for_any_key() -> None:
    # The outbox row stores this text and the relay sends it: the envelope is built once per source and each
    # append writes its key into it, which must give the very bytes json.dumps gives of the whole envelope.
    at = datetime(2026, 11, 2, 6, 0, 1, 123456, tzinfo=UTC)
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "k=v,\"q\""}
    keys = ["1947", "19\"47", "a\\b", "è ü 日本 🙂", "tab\there\nnewline\x01", "", "key-mark-8f0c2d6a", "]", "\", \""]
    for source in ("/flows/loader", "/flows/è\"x"):
        for key in keys:
            for given in (None, trace):
                envelope = outbox.cloudevent_headers(event_id=uuid.uuid4(), type="t", time=at, key=key, source=source)
                pairs = [pair for pair in envelope if pair[0] not in ("ce_id", "ce_type")]
                pairs += [[f"ce_{name}", value] for name, value in (given or {}).items()]
                expected = json.dumps(pairs, ensure_ascii=False)[1:]
                assert outbox.headers_tail(time=at, key=key, source=source, trace=given) == expected
