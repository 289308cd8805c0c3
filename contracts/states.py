"""The instance state machine (Tabella 2 of the seed), as pure data and one function.

Each lifecycle event moves an instance from some states to one state, and only certain actors
may cause it: an operator asks, a service decides. `apply_event` is what every projection and
every handler uses to know whether an event is legal here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from contracts import flows
from contracts.flows import TYPE_OF as _T


class InstanceState(StrEnum):
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    CHECKED = "Checked"
    FAILED_LOADING = "Failed loading"
    FORMATTING = "Formatting in progress"
    FORMATTED = "Formatted"
    FORMAT_FAILED = "Format failed"  # the seed is silent; named here
    WAITING_FEEDBACK = "Waiting feedback"
    CONFIRMED = "Confirmed"
    CONFIRMED_WITH_ERRORS = "Confirmed with errors"
    REJECTED = "Rejected"  # the seed is silent; named here
    DELETED = "Deleted"


class Actor(StrEnum):
    OPERATOR = "operator"          # a person at the CLI, or an external system publishing a command
    LOADER = "loader"
    FORMATTER = "formatter"
    TS_GATEWAY = "ts-gateway"


class IllegalTransition(ValueError):
    """An event that the instance's current state, or the actor, does not allow."""


@dataclass(frozen=True)
class Transition:
    event: str
    sources: frozenset[InstanceState | None]   # None = the instance does not exist yet
    target: InstanceState | None                # None = the state does not change
    actors: frozenset[Actor]


S = InstanceState
_ALIVE = frozenset(set(S) - {S.DELETED})
# Work in progress is never deleted under a running service's feet.
_DELETABLE = frozenset(_ALIVE - {S.RUNNING, S.FORMATTING, S.WAITING_FEEDBACK})

TRANSITIONS: dict[str, Transition] = {t.event: t for t in [
    Transition(_T[flows.LoadScheduled], frozenset({None}), S.SCHEDULED, frozenset({Actor.LOADER})),
    Transition(_T[flows.LoadRunning], frozenset({None, S.SCHEDULED}), S.RUNNING, frozenset({Actor.LOADER})),
    Transition(_T[flows.LoadChecked], frozenset({S.RUNNING}), S.CHECKED, frozenset({Actor.LOADER})),
    Transition(_T[flows.LoadFailed], frozenset({S.RUNNING}), S.FAILED_LOADING, frozenset({Actor.LOADER})),
    Transition(_T[flows.FormatRequested], frozenset({S.CHECKED, S.FORMAT_FAILED}), None, frozenset({Actor.OPERATOR})),
    Transition(_T[flows.FormattingStarted], frozenset({S.CHECKED, S.FORMAT_FAILED}), S.FORMATTING,
               frozenset({Actor.FORMATTER})),
    Transition(_T[flows.Formatted], frozenset({S.FORMATTING}), S.FORMATTED, frozenset({Actor.FORMATTER})),
    Transition(_T[flows.FormatFailed], frozenset({S.FORMATTING}), S.FORMAT_FAILED, frozenset({Actor.FORMATTER})),
    Transition(_T[flows.TsSubmissionRequested], frozenset({S.FORMATTED, S.REJECTED}), None,
               frozenset({Actor.OPERATOR})),
    Transition(_T[flows.TsSubmitted], frozenset({S.FORMATTED, S.REJECTED, S.WAITING_FEEDBACK}), S.WAITING_FEEDBACK,
               frozenset({Actor.TS_GATEWAY})),
    # The target depends on the payload (instance_outcome): see target_of.
    # From Rejected too: a resend refused again at intake has no protocollo, so no Waiting feedback.
    Transition(_T[flows.TsFeedbackReceived], frozenset({S.WAITING_FEEDBACK, S.FORMATTED, S.REJECTED}), None,
               frozenset({Actor.TS_GATEWAY})),
    Transition(_T[flows.InstanceDeleted], _DELETABLE, S.DELETED, frozenset({Actor.OPERATOR})),
]}

_TS_OUTCOME = {
    "confirmed": S.CONFIRMED,
    "confirmed_with_errors": S.CONFIRMED_WITH_ERRORS,
    "rejected": S.REJECTED,
}

# Only the 730 is sent by this platform (domain.md section 2).
SENDABLE_FLOW_TYPES = frozenset({"FLUSSO_730"})


def target_of(event_type: str, payload: dict[str, object], current: InstanceState | None) -> InstanceState | None:
    """The state after `event_type`, or raise IllegalTransition naming why."""
    transition = TRANSITIONS.get(event_type)
    if transition is None:
        raise IllegalTransition(f"{event_type} is not an instance lifecycle event")
    if current not in transition.sources:
        allowed = ", ".join(sorted(s.value if s else "(new)" for s in transition.sources))
        raise IllegalTransition(f"{event_type} is not allowed in state {current.value if current else '(new)'}"
                                f" (allowed from: {allowed})")
    if event_type == _T[flows.TsFeedbackReceived]:
        outcome = payload.get("instance_outcome")
        if outcome is None:
            return current if current is not None else None
        return _TS_OUTCOME[str(outcome)]
    return transition.target if transition.target is not None else current


def apply_event(current: InstanceState | None, event_type: str, payload: dict[str, object],
                actor: Actor) -> InstanceState | None:
    """Checks the actor too: an operator cannot declare an instance Checked."""
    transition = TRANSITIONS.get(event_type)
    if transition is not None and actor not in transition.actors:
        raise IllegalTransition(f"{actor.value} may not cause {event_type}")
    return target_of(event_type, payload, current)


def fold(events: list[tuple[str, dict[str, object]]]) -> InstanceState | None:
    """The state after a history of (event type, payload); ignores non-lifecycle events."""
    state: InstanceState | None = None
    for event_type, payload in events:
        if event_type in TRANSITIONS:
            state = target_of(event_type, payload, state)
    return state
