"""The submission rules: stato mapping, combining parts, backoff, file names, crash recovery."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.ts_gateway.submission import (
    TS_ZONE,
    Adopt,
    AskOperator,
    BackoffSchedule,
    IllegalTransition,
    PartKey,
    PartState,
    Resend,
    SubmissionPart,
    TsRecord,
    check_transition,
    decide_recovery,
    file_name_for,
    instance_outcome,
    is_valid_file_name,
    may_send,
    parse_data_invio,
    state_for_stato,
)

SHA = "ab" * 32
OK, ERR, REJ = PartState.CONFIRMED, PartState.CONFIRMED_WITH_ERRORS, PartState.REJECTED


@pytest.mark.parametrize(
    ("stato", "state"),
    [(0, None), (1, None), (2, OK), (3, ERR), (5, REJ), (9, REJ)],
)
def test_each_esito_stato_leads_to_its_part_state(stato: int, state: PartState | None) -> None:
    assert state_for_stato(stato) is state


def test_an_unknown_stato_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="stato 4"):
        state_for_stato(4)


def test_an_instance_is_confirmed_only_when_every_part_is() -> None:
    assert instance_outcome([OK, OK, OK]) is OK
    assert instance_outcome([OK, PartState.WAITING_FEEDBACK]) is None
    assert instance_outcome([OK, PartState.SENDING]) is None


def test_one_rejected_part_rejects_the_instance_even_beside_errors() -> None:
    assert instance_outcome([OK, ERR, REJ]) is REJ


def test_a_part_with_errors_makes_the_instance_confirmed_with_errors() -> None:
    assert instance_outcome([OK, ERR, OK]) is ERR


def test_an_instance_without_parts_is_refused() -> None:
    with pytest.raises(ValueError):
        instance_outcome([])


def test_backoff_doubles_from_two_seconds_and_stops_at_the_cap() -> None:
    schedule = BackoffSchedule(initial=2.0, factor=2.0, cap=60.0)
    delays = schedule.delays()
    assert [next(delays) for _ in range(7)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_backoff_can_be_fast_for_tests() -> None:
    assert BackoffSchedule(initial=0.01, cap=0.04).delay(10) == 0.04


def test_backoff_refuses_a_cap_below_the_first_delay() -> None:
    with pytest.raises(ValueError):
        BackoffSchedule(initial=5, cap=1)


def test_the_file_name_carries_the_zip_hash_prefix_and_follows_the_ts_rule() -> None:
    name = file_name_for(1947, 2, SHA)
    assert name == "730_1947_p2_abababababababab.zip"
    assert is_valid_file_name(name) and 6 <= len(name) <= 60


def test_a_file_name_needs_a_real_sha256() -> None:
    with pytest.raises(ValueError, match="1947/1"):
        file_name_for(1947, 1, "not-a-hash")


def test_a_final_state_never_moves_again() -> None:
    key = PartKey(1947, 1, SHA)
    with pytest.raises(IllegalTransition, match="instance 1947 part 1"):
        check_transition(key, PartState.CONFIRMED, PartState.SENDING)
    with pytest.raises(IllegalTransition):
        check_transition(key, PartState.WAITING_FEEDBACK, PartState.SENDING)


def test_only_parts_without_protocollo_may_be_sent() -> None:
    part = SubmissionPart(PartKey(1947, 1, SHA), 1, "730_1947_p1.zip", 3)
    assert may_send(part)
    assert not may_send(_sending(protocollo="26112205400300001", state=PartState.WAITING_FEEDBACK))


def test_ts_send_dates_are_read_as_italian_local_time() -> None:
    moment, day = parse_data_invio("25-12-2016 22:24:20")
    assert moment == datetime(2016, 12, 25, 21, 24, 20, tzinfo=UTC)
    assert day == date(2016, 12, 25)
    assert parse_data_invio("25-12-2016") == (None, date(2016, 12, 25))


# ---- recovery ---------------------------------------------------------------------------------

SENT_AT = datetime(2026, 1, 20, 9, 0, tzinfo=UTC)


def _sending(protocollo: str | None = None, state: PartState = PartState.SENDING) -> SubmissionPart:
    return SubmissionPart(PartKey(1947, 1, SHA), 1, "730_1947_p1.zip", 3, state, protocollo, 1, None, SENT_AT)


def _record(protocollo: str, minutes_after: int, documents: int = 3) -> TsRecord:
    moment = (SENT_AT + timedelta(minutes=minutes_after)).astimezone(TS_ZONE)
    return TsRecord(protocollo, moment, moment.date(), documents, 1)


def test_a_send_ts_never_saw_is_resent() -> None:
    assert decide_recovery(_sending(), [], set()) == Resend()


def test_the_one_unknown_send_after_our_attempt_is_adopted() -> None:
    records = [_record("26012010000100001", 1), _record("26012009000000002", -60)]
    assert decide_recovery(_sending(), records, set()) == Adopt("26012010000100001")


def test_sends_already_recorded_or_with_other_counts_are_not_ours() -> None:
    records = [_record("26012010000100001", 1), _record("26012010000100002", 2, documents=40)]
    assert decide_recovery(_sending(), records, {"26012010000100001"}) == Resend()


def test_two_candidate_sends_go_to_an_operator_instead_of_a_resend() -> None:
    decision = decide_recovery(_sending(), [_record("26012010000100001", 1), _record("26012010000100002", 3)], set())
    assert isinstance(decision, AskOperator)
    assert "26012010000100001" in decision.reason and "26012010000100002" in decision.reason
    # the operators read it: Italian, saying what they must decide
    assert decision.reason.startswith("istanza 1947 parte 1: Sistema TS elenca 2 invii con ")
    assert decision.reason.endswith("un operatore deve indicare quale è il nostro")


def test_day_only_dates_match_from_the_day_of_the_attempt() -> None:
    same_day = TsRecord("26012000000000001", None, date(2026, 1, 20), 3, 2)
    day_before = TsRecord("26011900000000001", None, date(2026, 1, 19), 3, 2)
    assert decide_recovery(_sending(), [same_day, day_before], set()) == Adopt("26012000000000001")


def test_recovery_of_a_part_with_a_protocollo_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to recover"):
        decide_recovery(_sending("26012010000100001", PartState.WAITING_FEEDBACK), [], set())
