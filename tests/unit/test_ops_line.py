"""`flows tail`'s line shows the event's time in Italy's time, as `flows show`, `flows instances` and the console do
(README: the few lines that print UTC say so; this one did not, and printed 15:31 for an event the others showed at
16:31)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from contracts.envelope import Envelope
from services.runtime.ops import decode


def _record(when: datetime) -> SimpleNamespace:
    envelope = Envelope.new("flows.load-running", "/flows/loader", subject="1949")
    headers = [(k, v) for k, v in envelope.to_headers() if k != "ce_time"]
    headers.append(("ce_time", when.isoformat().encode()))
    return SimpleNamespace(topic="flows.load-running", partition=0, offset=3, timestamp=int(when.timestamp() * 1000),
                           key=b"1949", value=b'{"instance": 1949}', headers=headers)


def test_a_tail_line_shows_italys_time_in_winter_and_in_summer() -> None:
    assert decode(_record(datetime(2026, 12, 7, 15, 31, 10, tzinfo=UTC))).line().startswith("2026-12-07 16:31:10  ")
    assert decode(_record(datetime(2026, 7, 1, 22, 30, 0, tzinfo=UTC))).line().startswith("2026-07-02 00:30:00  ")
