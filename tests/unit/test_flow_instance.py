"""contracts.instance.FlowInstance: the typed instance folded from its lifecycle payloads."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pytest

from contracts import flows
from contracts.instance import FlowInstance
from contracts.states import IllegalTransition, InstanceState

ZIP = flows.FileRef(name="730_1.zip", kind="730-zip", records=3, bytes=10, sha256="a" * 64,
                    media_type="application/zip", part=1)
SPEC: dict[str, Any] = dict(instance=7, request_id=uuid.uuid4(), flow_type="FLUSSO_730", version="2020", ente="201",
                            period=flows.Period(start=date(2026, 1, 1), end=date(2026, 1, 31)), requested_by="op")


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]
    version: int
    id: uuid.UUID = field(default_factory=uuid.uuid4)


def history(*items: flows.Payload | tuple[str, dict[str, Any]]) -> list[Event]:
    events = []
    for version, item in enumerate(items, start=1):
        type_, data = item if isinstance(item, tuple) else (flows.TYPE_OF[type(item)], item.model_dump(mode="json"))
        events.append(Event(type_, data, version))
    return events


def submitted(part: int) -> flows.TsSubmitted:
    return flows.TsSubmitted(instance=7, part=part, parts=2, protocollo="1" * 17, zip_sha256="a" * 64)


def test_a_730_instance_from_schedule_to_waiting_feedback() -> None:
    request = ("flows.ts-submission-requested", {"instance": 7, "transmission_date": "2026-02-10",
                                                 "requested_by": "op", "sealed_to_key": "0" * 16})
    events = history(flows.LoadScheduled(**SPEC, scheduled_at=datetime(2026, 2, 1)), flows.LoadRunning(**SPEC),
                     flows.LoadChecked(instance=7, source_instance=8, counts={"documents": 3}),
                     flows.FormattingStarted(instance=7), flows.Formatted(instance=7, files=[ZIP]), request,
                     submitted(1))
    instance = FlowInstance.replay(7, events)
    assert (instance.version, instance.state) == (7, InstanceState.WAITING_FEEDBACK)
    assert (instance.flow_type, instance.ente, instance.layout_version) == ("FLUSSO_730", "201", "2020")
    assert instance.period.start == date(2026, 1, 1) and instance.request_id == SPEC["request_id"]
    assert (instance.counts, instance.source_instance, instance.files) == ({"documents": 3}, 8, (ZIP,))
    assert instance.request is not None and instance.request.id == events[5].id
    assert instance.request.transmission_date == date(2026, 2, 10) and instance.request.sealed_to_key == "0" * 16
    assert list(instance.ts_submitted) == [1] and instance.ts_feedback == {}


def test_an_instance_outcome_ends_the_request_and_a_new_request_starts_clean() -> None:
    request = ("flows.ts-submission-requested", {"instance": 7, "transmission_date": "2026-02-10",
                                                 "requested_by": "op"})
    outcome = flows.TsFeedbackReceived(instance=7, part=1, parts=1, outcome="rejected", instance_outcome="rejected")
    base = [flows.LoadRunning(**SPEC), flows.LoadChecked(instance=7, source_instance=8, counts={}),
            flows.FormattingStarted(instance=7), flows.Formatted(instance=7, files=[ZIP])]
    ended = FlowInstance.replay(7, history(*base, request, submitted(1), outcome))
    assert ended.request is None and ended.state is InstanceState.REJECTED and ended.ts_submitted == {}
    again = FlowInstance.replay(7, history(*base, request, submitted(1), outcome, request))
    assert again.request is not None and again.ts_submitted == {} and again.state is InstanceState.REJECTED


def test_replay_is_pure_and_an_illegal_history_is_named() -> None:
    events = history(flows.LoadRunning(**SPEC))
    first = FlowInstance.replay(7, events)
    assert FlowInstance.replay(7, events) == first and FlowInstance(7).version == 0 and not FlowInstance(7).exists
    with pytest.raises(IllegalTransition, match=r"flows\.formatted"):
        FlowInstance.replay(7, history(flows.LoadRunning(**SPEC), flows.Formatted(instance=7, files=[ZIP])))
    with pytest.raises(ValueError, match="instance 7 has no load-running"):
        _ = FlowInstance(7).flow_type
