"""The per-stream hash chain, without a database."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from services.runtime.eventstore import (
    GENESIS_HASH,
    StoredEvent,
    canonical_json,
    event_hash,
    verify_chain,
)

WHEN = datetime(2024, 3, 10, 9, 30, 0, 123456, tzinfo=UTC)


def chain(stream_id: str, payloads: list[dict]) -> list[StoredEvent]:
    events, prev = [], GENESIS_HASH
    for version, data in enumerate(payloads, start=1):
        event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{stream_id}/{version}")
        digest = event_hash(prev, stream_id=stream_id, version=version, event_id=event_id,
                            type="flows.load-checked", data=data, actor="operator-rossi",
                            recorded_at=WHEN, metadata={"correlation_id": "req-1947"})
        events.append(StoredEvent(stream_id=stream_id, version=version, position=version, transaction_id=7,
                                  id=event_id, type="flows.load-checked", data=data, actor="operator-rossi",
                                  metadata={"correlation_id": "req-1947"}, recorded_at=WHEN, prev_hash=prev,
                                  hash=digest))
        prev = digest
    return events


INSTANCE_1947 = chain("instance-1947", [{"rows": 120}, {"rows": 121, "ente": "ASL Napoli 1"}, {"rows": 0}])


# The bytes a hash covers are written out here, never built by canonical_json (the code under test): every chain
# already stored was hashed over exactly these bytes, so a change of the canonical form (an escape, a separator, the
# time's format) must fail here, not only break the chains of a database in production. Known answers, not copies.
FIRST_BODY = (b'{"actor":"operator-rossi","data":{"rows":120},"event_id":"12e0c3b4-cc36-513b-b207-8e5816a320a7",'
              b'"metadata":{"correlation_id":"req-1947"},"recorded_at":"2024-03-10T09:30:00.123456+00:00",'
              b'"stream_id":"instance-1947","type":"flows.load-checked","version":1}')
SECOND_BODY = (b'{"actor":"operator-rossi","data":{"ente":"ASL Napoli 1","rows":121},'
               b'"event_id":"cfd26fe3-10a0-5ca5-a24a-eb75de181b49","metadata":{"correlation_id":"req-1947"},'
               b'"recorded_at":"2024-03-10T09:30:00.123456+00:00","stream_id":"instance-1947",'
               b'"type":"flows.load-checked","version":2}')
INSTANCE_1947_HASHES = ["6fc3a9cf44a9e3f447d3677c0aa60ca5aea1ab551ea63797880e8c8445d5199f",
                        "9705457ccc904c3a5f66b0f2f94eddac72cee32dd0a0db98230a7bc84c31c5c5",
                        "17c76e92bb9be354414ba2e8725311d2087edf92f9759da42cd07126a04e8f1d"]


def test_first_event_chains_from_32_zero_bytes() -> None:
    first = INSTANCE_1947[0]
    assert str(first.id) == "12e0c3b4-cc36-513b-b207-8e5816a320a7"  # uuid5: the body below names it
    assert first.prev_hash == bytes(32)
    assert first.hash == hashlib.sha256(bytes(32) + FIRST_BODY).digest()


def test_awkward_strings_hash_as_the_canonical_json_of_the_whole_record() -> None:
    """Quotes, a backslash, a newline and non-ASCII letters: escaped as JSON escapes them, the letters kept as UTF-8."""
    event_id, stream, actor = uuid.UUID("6f1c2a9e-0000-4000-8000-000000001947"), 'onboarding-"Villa Sorriso"', \
        'operatore "Esposito"'
    data = {"nota": "àèìòù \\ \n €", "pagine": [1, 2.5]}
    body = ('{"actor":"operatore \\"Esposito\\"","data":{"nota":"àèìòù \\\\ \\n €","pagine":[1,2.5]},'
            '"event_id":"6f1c2a9e-0000-4000-8000-000000001947","metadata":{},'
            '"recorded_at":"2024-03-10T09:30:00.123456+00:00","stream_id":"onboarding-\\"Villa Sorriso\\"",'
            '"type":"onboarding.document-received","version":12}').encode()
    record = {"stream_id": stream, "version": 12, "event_id": str(event_id), "type": "onboarding.document-received",
              "data": data, "actor": actor, "recorded_at": WHEN.isoformat(), "metadata": {}}
    assert canonical_json(record) == body  # the canonical JSON of the whole record is these bytes
    got = event_hash(GENESIS_HASH, stream_id=stream, version=12, event_id=event_id,
                     type="onboarding.document-received", data=data, actor=actor, recorded_at=WHEN, metadata={})
    assert got == hashlib.sha256(GENESIS_HASH + body).digest()
    assert got.hex() == "847310cf9093bedc38b5798571017057f510075802018e06c394c371afb95726"


def test_each_event_chains_from_the_previous_hash() -> None:
    """Each hash covers the previous event's: asserted on the hashes event_hash computed (the fixture sets prev_hash
    itself, so comparing prev_hash with the hash before it would only read the fixture back)."""
    first, second, _ = INSTANCE_1947
    assert second.hash == hashlib.sha256(first.hash + SECOND_BODY).digest()
    after_genesis = event_hash(GENESIS_HASH, stream_id=second.stream_id, version=2, event_id=second.id,
                               type=second.type, data=second.data, actor=second.actor, recorded_at=WHEN,
                               metadata=second.metadata)
    assert after_genesis != second.hash  # the same event after another hash: another hash
    assert [e.hash.hex() for e in INSTANCE_1947] == INSTANCE_1947_HASHES


def test_an_untouched_chain_has_no_breaks() -> None:
    assert list(verify_chain(INSTANCE_1947)) == []


def test_editing_an_events_data_breaks_its_hash_only() -> None:
    tampered = [INSTANCE_1947[0], replace(INSTANCE_1947[1], data={"rows": 999, "ente": "ASL Napoli 1"}),
                INSTANCE_1947[2]]
    breaks = list(verify_chain(tampered))
    assert [(b.stream_id, b.version, b.link) for b in breaks] == [("instance-1947", 2, "hash")]
    assert breaks[0].found == INSTANCE_1947[1].hash.hex()


def test_rewriting_a_hash_to_match_edited_data_breaks_the_next_link() -> None:
    edited = replace(INSTANCE_1947[1], actor="intruder")
    forged = replace(edited, hash=event_hash(edited.prev_hash, stream_id=edited.stream_id, version=2,
                                             event_id=edited.id, type=edited.type, data=edited.data,
                                             actor="intruder", recorded_at=WHEN, metadata=edited.metadata))
    breaks = list(verify_chain([INSTANCE_1947[0], forged, INSTANCE_1947[2]]))
    assert [(b.version, b.link) for b in breaks] == [(3, "prev_hash")]
    assert breaks[0].expected == forged.hash.hex()


def test_a_removed_event_shows_as_a_version_gap_and_a_broken_link() -> None:
    breaks = list(verify_chain([INSTANCE_1947[0], INSTANCE_1947[2]]))
    assert (breaks[0].version, breaks[0].link, breaks[0].expected, breaks[0].found) == (3, "version", "2", "3")
    assert [b.link for b in breaks] == ["version", "prev_hash"]


def test_several_streams_each_start_from_genesis() -> None:
    onboarding = chain("onboarding-42", [{"document": "DURC"}, {"document": "visura"}])
    assert list(verify_chain(INSTANCE_1947 + onboarding)) == []


def test_checking_page_by_page_carries_the_previous_event() -> None:
    assert list(verify_chain(INSTANCE_1947[2:], previous=INSTANCE_1947[1])) == []
    assert [b.link for b in verify_chain(INSTANCE_1947[2:])] == ["version", "prev_hash"]


def test_key_order_does_not_change_the_hash() -> None:
    assert canonical_json({"ente": "ASL Salerno", "rows": 3}) == canonical_json({"rows": 3, "ente": "ASL Salerno"})


def test_whole_floats_hash_like_the_integers_jsonb_gives_back() -> None:
    # jsonb returns 1e20 as 100000000000000000000 and 1.0 may come back as 1.
    assert canonical_json({"amount": 1e20}) == canonical_json({"amount": 10**20})
    assert canonical_json({"amount": 1.0}) == canonical_json({"amount": 1})
    assert canonical_json({"ticket": 36.15}) != canonical_json({"ticket": 36.16})


def test_the_same_instant_in_another_time_zone_hashes_the_same() -> None:
    rome = WHEN.astimezone(timezone(timedelta(hours=1)))
    event = INSTANCE_1947[0]
    assert event_hash(GENESIS_HASH, stream_id=event.stream_id, version=1, event_id=event.id, type=event.type,
                      data=event.data, actor=event.actor, recorded_at=rome, metadata=event.metadata) == event.hash


def test_a_value_that_is_not_json_is_refused_naming_the_event_and_field() -> None:
    refusal = r"event 4 \(flows.formatted\) of stream instance-1947: data\.total is a Decimal"
    with pytest.raises(ValueError, match=refusal):
        event_hash(GENESIS_HASH, stream_id="instance-1947", version=4, event_id=uuid.uuid4(),
                   type="flows.formatted", data={"total": Decimal("36.15")}, actor="system",
                   recorded_at=WHEN, metadata={})


def test_nan_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"data\.lines\[1\] is nan"):
        canonical_json({"lines": [1.5, float("nan")]}, where="data")


def test_a_non_string_key_is_refused_naming_where() -> None:
    with pytest.raises(ValueError, match=r"data\.righe has a non-string key 1"):
        canonical_json({"righe": {1: "C2"}}, where="data")
