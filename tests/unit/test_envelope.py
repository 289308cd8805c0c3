from __future__ import annotations

import pytest

from contracts.envelope import Envelope, EnvelopeError, from_kafka_headers


def test_envelope_round_trips_through_kafka_headers():
    env = Envelope.new("flows.load-requested", "/cup/campania", subject="1947", correlationid="abc")
    back = from_kafka_headers(env.to_headers())
    assert (back.id, back.type, back.source, back.subject) == (env.id, env.type, env.source, "1947")
    assert back.extensions == {"correlationid": "abc"}
    assert abs((back.time - env.time).total_seconds()) < 0.001


def test_missing_ce_id_is_named():
    headers = [(k, v) for k, v in Envelope.new("x", "/y").to_headers() if k != "ce_id"]
    with pytest.raises(EnvelopeError, match="ce_id"):
        from_kafka_headers(headers)
