"""Generates the published documents: one JSON Schema per topic payload and an AsyncAPI 3.0 document.

An external regional system builds its producer from these files alone (the e2e test does), so
they are committed and `tests/unit/test_contract_documents.py` fails when they drift from the
models. Regenerate with `uv run python -m contracts.schemagen`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from contracts.envelope import CONTENT_TYPE, SPEC_VERSION
from contracts.feedback import FeedbackLine
from contracts.topics import Topic, all_topics

HERE = Path(__file__).parent
SCHEMA_DIR = HERE / "schemas"
ASYNCAPI_PATH = HERE / "asyncapi.json"

CLOUDEVENTS_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents 1.0, Kafka protocol binding, binary content mode: attributes as headers, "
                   "payload as the JSON body. ce_id is the idempotency key.",
    "required": ["ce_specversion", "ce_id", "ce_source", "ce_type"],
    "properties": {
        "ce_specversion": {"const": SPEC_VERSION},
        "ce_id": {"type": "string", "description": "Unique id of the event; consumers deduplicate on it."},
        "ce_source": {"type": "string", "examples": ["/cup/campania", "/flows/loader"]},
        "ce_type": {"type": "string", "description": "Equal to the topic name."},
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_subject": {"type": "string", "description": "The aggregate id (= the Kafka key)."},
        "content-type": {"const": CONTENT_TYPE},
    },
}


def payload_schema(topic: Topic) -> dict[str, Any]:
    schema = topic.payload.model_json_schema(mode="validation")
    schema["$id"] = f"https://flows.regione.example/schemas/{topic.name}.json"
    schema["title"] = topic.payload.__name__
    schema.setdefault("description", topic.description)
    schema["x-topic"] = topic.name
    schema["x-key"] = topic.key
    return schema


# documents that are not topic payloads: file formats the platform hands out
FEEDBACK_LINE_PATH = SCHEMA_DIR / "feedback-line.json"


def feedback_line_schema() -> dict[str, Any]:
    schema = FeedbackLine.model_json_schema(mode="validation")
    schema["$id"] = "https://flows.regione.example/schemas/feedback-line.json"
    schema["x-file-kind"] = "feedback"
    return schema


def asyncapi(topics: list[Topic]) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic in topics:
        cid = topic.name.replace(".", "_").replace("-", "_")
        messages[cid] = {
            "name": topic.payload.__name__,
            "title": topic.name,
            "summary": topic.description,
            "contentType": CONTENT_TYPE,
            "headers": CLOUDEVENTS_HEADERS,
            "payload": {"$ref": f"schemas/{topic.name}.json"},
            "bindings": {"kafka": {"key": {"type": "string", "description": f"the {topic.key}"}}},
        }
        for name in (topic.name, topic.dlq):
            is_dlq = name.endswith(".dlq")
            ch = cid + ("_dlq" if is_dlq else "")
            channels[ch] = {
                "address": name,
                "description": ("Dead letters of " + topic.name + ": original body and headers plus "
                                "dlq_reason, dlq_original_topic/partition/offset, dlq_attempts.")
                if is_dlq else topic.description,
                "messages": {cid: {"$ref": f"#/components/messages/{cid}"}},
            }
        operations[f"publish_{cid}"] = {
            "action": "send", "channel": {"$ref": f"#/channels/{cid}"},
            "summary": f"published by {', '.join(topic.producers)}",
        }
        if topic.consumers:
            operations[f"consume_{cid}"] = {
                "action": "receive", "channel": {"$ref": f"#/channels/{cid}"},
                "summary": f"consumed by {', '.join(topic.consumers)}",
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Regional health-information flows",
            "version": "1.0.0",
            "description": "Events and commands of the flow platform. Key = aggregate id; one topic per "
                           "event type; each topic has a .dlq twin.",
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {"local": {"host": "127.0.0.1:19092", "protocol": "kafka",
                              "description": "the local stack (flows stack up)"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render() -> dict[Path, str]:
    """Every published document, path -> text, as they should be on disk."""
    topics = all_topics()
    out = {SCHEMA_DIR / f"{t.name}.json": _dump(payload_schema(t)) for t in topics}
    out[FEEDBACK_LINE_PATH] = _dump(feedback_line_schema())
    out[ASYNCAPI_PATH] = _dump(asyncapi(topics))
    return out


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write() -> list[Path]:
    SCHEMA_DIR.mkdir(exist_ok=True)
    docs = render()
    for stale in set(SCHEMA_DIR.glob("*.json")) - set(docs):
        stale.unlink()
    for path, text in docs.items():
        path.write_text(text)
    return list(docs)


if __name__ == "__main__":
    written = write()
    sys.stdout.write(f"wrote {len(written)} documents under {HERE}\n")
