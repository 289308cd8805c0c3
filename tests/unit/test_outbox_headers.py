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
