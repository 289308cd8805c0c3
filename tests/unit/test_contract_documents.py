"""The committed AsyncAPI document and JSON Schemas are exactly what the models generate."""

from __future__ import annotations

import json

from contracts import schemagen
from contracts.topics import all_topics


def test_committed_documents_match_the_models():
    drifted = [str(p.relative_to(schemagen.HERE)) for p, text in schemagen.render().items()
               if not p.exists() or p.read_text() != text]
    assert not drifted, f"regenerate with `uv run python -m contracts.schemagen`: {drifted}"


def test_no_stale_schema_is_left_behind():
    expected = {f"{t.name}.json" for t in all_topics()} | {schemagen.FEEDBACK_LINE_PATH.name}
    assert {p.name for p in schemagen.SCHEMA_DIR.glob("*.json")} == expected


def test_every_topic_has_a_dlq_channel_in_the_asyncapi_document():
    doc = json.loads(schemagen.ASYNCAPI_PATH.read_text())
    addresses = {c["address"] for c in doc["channels"].values()}
    for topic in all_topics():
        assert topic.name in addresses and topic.dlq in addresses
