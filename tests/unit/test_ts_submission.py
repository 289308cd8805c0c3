"""The submission rules: stato mapping, combining parts, backoff, file names, crash recovery."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.ts_gateway.submission import (
    PROTOCOLLO,
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
    needs_recovery,
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


def test_backoff_by_default_doubles_from_two_seconds_to_five_minutes() -> None:
    delays = BackoffSchedule().delays()
    assert [next(delays) for _ in range(10)] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]


@pytest.mark.parametrize("kwargs", [{"initial": 0.0}, {"factor": 0.99}, {"initial": 5.0, "cap": 4.99}])
def test_backoff_refuses_no_first_delay_a_shrinking_factor_or_a_cap_below_the_first_delay(
        kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff needs initial > 0, factor >= 1, cap >= initial"):
        BackoffSchedule(**kwargs)


def test_backoff_takes_a_constant_delay_and_a_cap_equal_to_the_first_delay() -> None:
    assert BackoffSchedule(initial=3.0, factor=1.0, cap=10.0).delay(5) == 3.0
    assert BackoffSchedule(initial=5.0, cap=5.0).delay(3) == 5.0


def test_retries_are_numbered_from_one() -> None:
    assert BackoffSchedule(initial=2.0).delay(1) == 2.0
    with pytest.raises(ValueError, match="attempt numbers start at 1, got 0"):
        BackoffSchedule(initial=2.0).delay(0)


def test_the_file_name_carries_the_zip_hash_prefix_and_follows_the_ts_rule() -> None:
    name = file_name_for(1947, 2, SHA)
    assert name == "730_1947_p2_abababababababab.zip"
    assert is_valid_file_name(name) and 6 <= len(name) <= 60


def test_a_file_name_is_6_to_60_basic_latin_characters_ending_in_zip() -> None:
    """ws-asincrono-spec v2.5 4.5 and esito 101: nomeFileAllegato has 6 to 60 basic latin characters, ending in
    .zip; a name TS would refuse must never be sent."""
    assert is_valid_file_name("ab.zip") and is_valid_file_name("a" * 56 + ".zip")  # 6 and 60
    assert not is_valid_file_name("a.zip") and not is_valid_file_name("a" * 57 + ".zip")  # 5 and 61
    assert is_valid_file_name("file 01.zip")  # a space is basic latin
    assert not is_valid_file_name("fileè1.zip") and not is_valid_file_name("file01.txt")


def test_a_protocollo_is_seventeen_digits_no_more_no_less() -> None:
    """ws-asincrono-spec v2.5: "Stringa numerica di 17 cifre"."""
    assert PROTOCOLLO.fullmatch("2" * 17)
    assert not PROTOCOLLO.fullmatch("2" * 16) and not PROTOCOLLO.fullmatch("2" * 18)


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


def test_a_part_refused_at_intake_is_neither_sent_again_nor_recovered_until_reopened() -> None:
    """104 PINCODE ERRATO: rejected with no protocollo. Only a resend request reopens it (ledger.reopen_rejected)."""
    refused = _sending(state=PartState.REJECTED)
    assert not may_send(refused) and not needs_recovery(refused)


def test_a_part_never_sent_needs_no_recovery() -> None:
    pending = SubmissionPart(PartKey(1947, 1, SHA), 1, "730_1947_p1.zip", 3)
    assert may_send(pending) and not needs_recovery(pending)
    with pytest.raises(ValueError, match="nothing to recover"):
        decide_recovery(pending, [], set())


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
    assert decision.reason.endswith(
        "un nuovo invio potrebbe registrare due volte le spese: prima di inviare di nuovo l'istanza, verifichi sul "
        "portale di Sistema TS quale di questi protocolli è di questa istanza e lo comunichi all'assistenza")
    assert "dal 20/01/2026 10:00 " in decision.reason  # Italian time: sent at 09:00 UTC
    # a part whose first attempt has no time recorded: said without it (the format of None raised)
    untimed = SubmissionPart(PartKey(1947, 1, SHA), 1, "730_1947_p1.zip", 3, PartState.SENDING, None, 1, None, None)
    undated = decide_recovery(untimed, [_record("26012010000100001", 1), _record("26012010000100002", 3)], set())
    assert isinstance(undated, AskOperator) and "3 documenti che qui non risultano" in undated.reason


def test_a_send_up_to_five_minutes_before_our_attempt_is_ours_and_not_a_second_more() -> None:
    """TS's clock may be behind ours by up to CLOCK_SKEW (5 minutes): a send TS dates 5 minutes before we recorded
    "sending" can be ours; one second earlier, it was made before our attempt began."""
    def sent(protocollo: str, before: timedelta) -> TsRecord:
        moment = (SENT_AT - before).astimezone(TS_ZONE)
        return TsRecord(protocollo, moment, moment.date(), 3, 1)

    at_the_skew = sent("26012009550000001", timedelta(minutes=5))
    assert decide_recovery(_sending(), [at_the_skew], set()) == Adopt("26012009550000001")
    assert decide_recovery(_sending(), [sent("26012009545900001", timedelta(minutes=5, seconds=1))], set()) == Resend()


def test_day_only_dates_match_from_the_day_of_the_attempt() -> None:
    same_day = TsRecord("26012000000000001", None, date(2026, 1, 20), 3, 2)
    day_before = TsRecord("26011900000000001", None, date(2026, 1, 19), 3, 2)
    assert decide_recovery(_sending(), [same_day, day_before], set()) == Adopt("26012000000000001")


def test_recovery_of_a_part_with_a_protocollo_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to recover"):
        decide_recovery(_sending("26012010000100001", PartState.WAITING_FEEDBACK), [], set())
