"""CloudEvents 1.0 envelope in Kafka binary mode.

The payload travels as the JSON body; the event's attributes travel as `ce_*` headers
(CloudEvents Kafka protocol binding, binary content mode). `ce_id` is the idempotency key that
every consumer records; the Kafka key is the aggregate id (instance number, request id), so one
aggregate's events keep their order inside one partition.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type")


class EnvelopeError(ValueError):
    """A message whose headers are not a valid CloudEvents binary-mode envelope."""


@dataclass(frozen=True)
class Envelope:
    """The CloudEvents attributes of one message (the body is the payload)."""

    id: str
    type: str
    source: str
    subject: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    dataschema: str | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls, type: str, source: str, subject: str | None = None, **extensions: str) -> Envelope:
        return cls(id=str(uuid.uuid4()), type=type, source=source, subject=subject, extensions=extensions)

    def to_headers(self) -> list[tuple[str, bytes]]:
        return to_kafka_headers(id=self.id, type=self.type, source=self.source, time=self.time,
                                subject=self.subject, dataschema=self.dataschema, extra=self.extensions)


def ce_time(time: datetime) -> str:
    """The ce_time header of `time`: RFC 3339 in UTC, with a Z."""
    return time.astimezone(UTC).isoformat().replace("+00:00", "Z")


def to_kafka_headers(*, id: str, type: str, source: str, time: datetime, subject: str | None = None,
                     dataschema: str | None = None,
                     extra: Mapping[str, str] | None = None) -> list[tuple[str, bytes]]:
    headers = {
        "ce_specversion": SPEC_VERSION,
        "ce_id": str(id),
        "ce_source": source,
        "ce_type": type,
        "ce_time": ce_time(time),
        "content-type": CONTENT_TYPE,
    }
    if subject is not None:
        headers["ce_subject"] = subject
    if dataschema is not None:
        headers["ce_dataschema"] = dataschema
    for name, value in (extra or {}).items():
        headers[f"ce_{name}"] = value
    return [(k, v.encode()) for k, v in headers.items()]


def from_kafka_headers(headers: Iterable[tuple[str, bytes | str]] | Mapping[str, bytes | str]) -> Envelope:
    """Reads the envelope back; raises EnvelopeError naming the missing or bad attribute."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return envelope_from_text({k: (v.decode() if isinstance(v, bytes) else v) for k, v in items})


_KNOWN = frozenset({"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "ce_dataschema"})


def check_envelope_text(raw: dict[str, str]) -> datetime:
    """The checks `envelope_from_text` makes (the same EnvelopeError), without building the envelope: its time.

    Volume intake checks millions of envelopes and reads one attribute of each (ce_id)."""
    if not all(map(raw.get, REQUIRED)):
        missing = [h for h in REQUIRED if not raw.get(h)]
        raise EnvelopeError(f"missing CloudEvents header(s): {', '.join(missing)}")
    if raw["ce_specversion"] != SPEC_VERSION:
        raise EnvelopeError(f"ce_specversion {raw['ce_specversion']!r} is not {SPEC_VERSION}")
    stamp = raw.get("ce_time")
    if not stamp:
        return datetime.now(UTC)
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError as exc:
        raise EnvelopeError(f"ce_time {stamp!r} is not RFC 3339") from exc


def envelope_from_text(raw: dict[str, str], time: datetime | None = None) -> Envelope:
    """`from_kafka_headers` of headers already decoded (name -> text; the last of a repeated name).

    `time`: what `check_envelope_text` returned for these headers (they are not checked again)."""
    if time is None:
        time = check_envelope_text(raw)
    ext = {k[3:]: v for k, v in raw.items() if k.startswith("ce_") and k not in _KNOWN}
    return Envelope(id=raw["ce_id"], type=raw["ce_type"], source=raw["ce_source"], subject=raw.get("ce_subject"),
                    time=time, dataschema=raw.get("ce_dataschema"), extensions=ext)
