"""A flow instance as its history says it is: a pure fold over the lifecycle payloads.

`FlowInstance.replay(history)` reads an instance's events (anything with `id`, `type`, `data` and
`version`, e.g. the event store's StoredEvent) into typed parts: what was asked (type, ente, period,
layout version), the state (contracts/states.py), the load's counts and source snapshot, the files of
the last formatting, and the TS parts of the submission under way. The writers (loader, formatter,
TS gateway) read an instance through it instead of digging in event dicts; the pairing of payload
class and event type is `flows.EVENT_TYPES` / `flows.TYPE_OF`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Protocol
from uuid import UUID

from contracts import flows
from contracts.states import TRANSITIONS, InstanceState, target_of

_REQUEST = flows.TYPE_OF[flows.TsSubmissionRequested]


class EventLike(Protocol):
    @property
    def id(self) -> UUID: ...
    @property
    def type(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def version(self) -> int: ...


@dataclass(frozen=True)
class SubmissionRequest:
    """A TS submission request as the history keeps it: without the sealed box (ts_gateway/handlers.py),
    with the id of the key it was sealed to. Requests recorded before the box left the history carry it."""

    id: UUID
    transmission_date: date
    requested_by: str
    sealed_to_key: str | None = None
    sealed_credentials: str | None = None


@dataclass(frozen=True)
class FlowInstance:
    number: int
    version: int = 0                               # the stream's version: the last event's
    state: InstanceState | None = None
    last_type: str | None = None
    created: flows.LoadRunning | flows.LoadScheduled | None = None
    checked: flows.LoadChecked | None = None       # the last Checked
    failed: flows.LoadFailed | None = None
    files: tuple[flows.FileRef, ...] = ()          # of the last Formatted
    request: SubmissionRequest | None = None       # the TS submission request without an outcome yet
    ts_submitted: dict[int, flows.TsSubmitted] = field(default_factory=dict)            # part -> since `request`
    ts_feedback: dict[int, flows.TsFeedbackReceived] = field(default_factory=dict)      # part -> since `request`

    # --- what was asked ---------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return self.version > 0

    def _spec(self) -> flows.LoadRunning | flows.LoadScheduled:
        if self.created is None:
            raise ValueError(f"instance {self.number} has no load-running or load-scheduled event")
        return self.created

    @property
    def flow_type(self) -> flows.FlowType:
        return self._spec().flow_type

    @property
    def layout_version(self) -> str:
        return self._spec().version

    @property
    def ente(self) -> str:
        return self._spec().ente

    @property
    def period(self) -> flows.Period:
        return self._spec().period

    @property
    def request_id(self) -> UUID:
        return self._spec().request_id

    @property
    def requested_by(self) -> str:
        return self._spec().requested_by

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.checked.counts) if self.checked else {}

    @property
    def source_instance(self) -> int | None:
        return self.checked.source_instance if self.checked else None

    # --- the fold ---------------------------------------------------------------------------------

    @classmethod
    def replay(cls, number: int, history: Iterable[EventLike]) -> FlowInstance:
        instance = cls(number)
        for event in history:
            instance = instance.apply(event)
        return instance

    def apply(self, event: EventLike) -> FlowInstance:
        """This instance after `event` (pure: a new value)."""
        state = target_of(event.type, event.data, self.state) if event.type in TRANSITIONS else self.state
        moved = replace(self, version=event.version, state=state, last_type=event.type)
        if event.type == _REQUEST:
            data = event.data
            return replace(moved, request=SubmissionRequest(
                id=event.id, transmission_date=date.fromisoformat(str(data["transmission_date"])),
                requested_by=str(data["requested_by"]), sealed_to_key=data.get("sealed_to_key"),
                sealed_credentials=data.get("sealed_credentials")), ts_submitted={}, ts_feedback={})
        model = flows.EVENT_TYPES.get(event.type)
        if model is None:
            return moved
        payload = model.model_validate(event.data)
        match payload:
            case flows.LoadRunning() | flows.LoadScheduled():
                return replace(moved, created=payload)
            case flows.LoadChecked():
                return replace(moved, checked=payload)
            case flows.LoadFailed():
                return replace(moved, failed=payload)
            case flows.Formatted():
                return replace(moved, files=tuple(payload.files))
            case flows.TsSubmitted():
                return replace(moved, ts_submitted={**self.ts_submitted, payload.part: payload})
            case flows.TsFeedbackReceived():
                if payload.instance_outcome is not None:  # the request is concluded
                    return replace(moved, request=None, ts_submitted={}, ts_feedback={})
                return replace(moved, ts_feedback={**self.ts_feedback, payload.part: payload})
        return moved
