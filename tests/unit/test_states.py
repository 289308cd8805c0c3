"""The instance state machine: the legal paths of Tabella 2 and who may walk them."""

from __future__ import annotations

import pytest

from contracts.states import TRANSITIONS, Actor, IllegalTransition, InstanceState, apply_event, fold, target_of

S = InstanceState


def test_happy_path_of_a_730_ends_confirmed():
    history: list[tuple[str, dict[str, object]]] = [
        ("flows.load-running", {}), ("flows.load-checked", {}), ("flows.format-requested", {}),
        ("flows.formatting-started", {}), ("flows.formatted", {}), ("flows.ts-submission-requested", {}),
        ("flows.ts-submitted", {}), ("flows.ts-feedback-received", {"instance_outcome": None}),
        ("flows.ts-feedback-received", {"instance_outcome": "confirmed"}),
    ]
    assert fold(history) is S.CONFIRMED


def test_a_failed_load_cannot_be_formatted():
    with pytest.raises(IllegalTransition, match="not allowed in state Failed loading"):
        target_of("flows.formatting-started", {}, S.FAILED_LOADING)


def test_an_operator_cannot_declare_an_instance_checked():
    with pytest.raises(IllegalTransition, match=r"operator may not cause flows\.load-checked"):
        apply_event(S.RUNNING, "flows.load-checked", {}, Actor.OPERATOR)
    # the loader may: a check that refused every actor would pass the refusal alone
    assert apply_event(S.RUNNING, "flows.load-checked", {}, Actor.LOADER) is S.CHECKED
    assert apply_event(S.CHECKED, "flows.format-requested", {}, Actor.OPERATOR) is S.CHECKED


def test_a_running_instance_cannot_be_deleted_but_a_checked_one_can():
    with pytest.raises(IllegalTransition):
        target_of("flows.instance-deleted", {}, S.RUNNING)
    assert target_of("flows.instance-deleted", {}, S.CHECKED) is S.DELETED


def test_a_deleted_instance_stays_deleted():
    with pytest.raises(IllegalTransition):
        target_of("flows.format-requested", {}, S.DELETED)


def test_format_failure_can_be_retried():
    assert target_of("flows.formatting-started", {}, S.FORMAT_FAILED) is S.FORMATTING


def test_ts_outcomes_map_to_their_states():
    for outcome, state in [("confirmed", S.CONFIRMED), ("confirmed_with_errors", S.CONFIRMED_WITH_ERRORS),
                           ("rejected", S.REJECTED)]:
        assert target_of("flows.ts-feedback-received", {"instance_outcome": outcome}, S.WAITING_FEEDBACK) is state


# Tabella 2 as the operators and the services live it, written out: from each state (None: the instance does not
# exist yet), the lifecycle events that may happen and the state each leads to. Every pair not listed is illegal.
# Work in progress (Running, Formatting in progress, Waiting feedback) is never deleted under a service's feet; a
# Deleted instance takes no event at all. A TS feedback without an instance outcome leaves the state as it is.
DELETE = "flows.instance-deleted"
LEGAL: dict[InstanceState | None, dict[str, InstanceState]] = {
    None: {"flows.load-scheduled": S.SCHEDULED, "flows.load-running": S.RUNNING},
    S.SCHEDULED: {"flows.load-running": S.RUNNING, DELETE: S.DELETED},
    S.RUNNING: {"flows.load-checked": S.CHECKED, "flows.load-failed": S.FAILED_LOADING},
    S.CHECKED: {"flows.format-requested": S.CHECKED, "flows.formatting-started": S.FORMATTING, DELETE: S.DELETED},
    S.FAILED_LOADING: {DELETE: S.DELETED},
    S.FORMATTING: {"flows.formatted": S.FORMATTED, "flows.format-failed": S.FORMAT_FAILED},
    S.FORMAT_FAILED: {"flows.format-requested": S.FORMAT_FAILED, "flows.formatting-started": S.FORMATTING,
                      DELETE: S.DELETED},
    S.FORMATTED: {"flows.ts-submission-requested": S.FORMATTED, "flows.ts-submitted": S.WAITING_FEEDBACK,
                  "flows.ts-feedback-received": S.FORMATTED,  # a send refused at intake: no protocollo
                  DELETE: S.DELETED},
    S.WAITING_FEEDBACK: {"flows.ts-submitted": S.WAITING_FEEDBACK,  # the next part of a many-part 730
                         "flows.ts-feedback-received": S.WAITING_FEEDBACK},
    S.CONFIRMED: {DELETE: S.DELETED},
    S.CONFIRMED_WITH_ERRORS: {DELETE: S.DELETED},
    S.REJECTED: {"flows.ts-submission-requested": S.REJECTED, "flows.ts-submitted": S.WAITING_FEEDBACK,
                 "flows.ts-feedback-received": S.REJECTED,  # a resend refused again at intake
                 DELETE: S.DELETED},
    S.DELETED: {},
}
# Who may cause each event: an operator asks, a service decides.
CAUSED_BY = {
    "flows.load-scheduled": Actor.LOADER, "flows.load-running": Actor.LOADER, "flows.load-checked": Actor.LOADER,
    "flows.load-failed": Actor.LOADER, "flows.format-requested": Actor.OPERATOR,
    "flows.formatting-started": Actor.FORMATTER, "flows.formatted": Actor.FORMATTER,
    "flows.format-failed": Actor.FORMATTER, "flows.ts-submission-requested": Actor.OPERATOR,
    "flows.ts-submitted": Actor.TS_GATEWAY, "flows.ts-feedback-received": Actor.TS_GATEWAY, DELETE: Actor.OPERATOR,
}
NO_OUTCOME: dict[str, object] = {"instance_outcome": None}


def test_the_lifecycle_events_are_those_of_the_table():
    assert set(TRANSITIONS) == set(CAUSED_BY) == {event for moves in LEGAL.values() for event in moves}


@pytest.mark.parametrize("state", list(LEGAL), ids=lambda s: s.value if s else "new")
def test_from_each_state_exactly_the_moves_of_tabella_2_are_legal(state: InstanceState | None):
    for event, actor in CAUSED_BY.items():
        if event in LEGAL[state]:
            assert apply_event(state, event, NO_OUTCOME, actor) is LEGAL[state][event], event
        else:
            with pytest.raises(IllegalTransition, match="is not allowed in state"):
                apply_event(state, event, NO_OUTCOME, actor)


@pytest.mark.parametrize("event", list(CAUSED_BY))
def test_each_event_is_caused_by_its_one_actor_only(event: str):
    source = next(state for state, moves in LEGAL.items() if event in moves)
    for actor in Actor:
        if actor is CAUSED_BY[event]:
            assert apply_event(source, event, NO_OUTCOME, actor) is LEGAL[source][event]
        else:
            with pytest.raises(IllegalTransition, match=f"{actor.value} may not cause"):
                apply_event(source, event, NO_OUTCOME, actor)


@pytest.mark.parametrize("state", [S.FORMATTED, S.WAITING_FEEDBACK, S.REJECTED])
def test_a_ts_outcome_moves_the_instance_from_wherever_a_feedback_may_come(state: InstanceState):
    for outcome, target in [("confirmed", S.CONFIRMED), ("confirmed_with_errors", S.CONFIRMED_WITH_ERRORS),
                            ("rejected", S.REJECTED)]:
        assert target_of("flows.ts-feedback-received", {"instance_outcome": outcome}, state) is target
