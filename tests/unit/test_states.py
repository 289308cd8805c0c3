"""The instance state machine: the legal paths of Tabella 2 and who may walk them."""

from __future__ import annotations

import pytest

from contracts.states import Actor, IllegalTransition, InstanceState, apply_event, fold, target_of

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
