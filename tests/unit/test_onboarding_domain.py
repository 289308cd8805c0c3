"""The request as an aggregate: completeness at every change, taken in charge only when all is compliant."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest

from contracts.onboarding import (
    CompletenessChanged,
    DocumentAssessed,
    DocumentReceived,
    RequestComplete,
    RequestKind,
    RequestOpened,
    Spoke,
    SwitchRefused,
    SwitchScheduled,
    TakenInCharge,
)
from services.onboarding import domain
from services.onboarding.domain import OnboardingError, OnboardingRequest
from services.onboarding.findings import Finding
from services.onboarding.requirements import check_metadata, load_requirements
from services.onboarding.switch import SwitchCalendar, SwitchSlot, SwitchWindow, load_patron_days

REQ = load_requirements()
CAL = SwitchCalendar(load_patron_days())
MONDAY_2_MARCH = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SHA = "a" * 64


def opened(kind: RequestKind = RequestKind.SOFTWARE_HOUSE_CHANGE, spokes: list[Spoke] | None = None) -> RequestOpened:
    return RequestOpened(request_id="ONB-VESUVIO", kind=kind, structure_name="Laboratorio Analisi Vesuvio",
                         structure_sts11="150123", municipality_istat="063049", spokes=spokes or [],
                         requirements_version=REQ.version, opened_at=MONDAY_2_MARCH, opened_by="desk:esposito")


def start(command: RequestOpened) -> OnboardingRequest:
    return OnboardingRequest.replay(domain.open_request(command, None, REQ), REQ)


def doc(doc_type: str, n: int = 1, /, **meta: str) -> DocumentReceived:
    return DocumentReceived(request_id="ONB-VESUVIO", document_id=f"{doc_type}-{n}", document_type=doc_type,
                            filename=f"{doc_type}-{n}.pdf", sha256=SHA, size=10, stored_at="sha256/aa/a",
                            metadata=meta, received_at=MONDAY_2_MARCH, received_by="mailbox")


def receive(state: OnboardingRequest, received: DocumentReceived, now: datetime = MONDAY_2_MARCH):
    findings = check_metadata(REQ.document_type(received.document_type), received.metadata) \
        if received.metadata else None
    events = domain.receive_document(state, received, findings, REQ, now, CAL)
    return domain.advance(state, events), events


SW_REQUEST = {"protocol": "2026/88", "letterhead": "yes", "software_house": "Medisoft", "credentials": "basic"}


def test_opening_records_what_is_missing_at_once():
    events = domain.open_request(opened(), None, REQ)
    assert isinstance(events[1], CompletenessChanged)
    assert events[1].summary == ("0 di 3 presenti, mancano: Richiesta formale di cambio Software House, Form di "
                                 "abilitazione degli endpoint per l'ambiente di produzione (Allegato B2), Data e "
                                 "fascia oraria desiderate per lo switch")
    assert events[1].missing == ["formal-request-software-house-change", "endpoint-form-b2", "switch-date-request"]


def test_each_document_changes_the_completeness_summary():
    state = start(opened())
    state, _ = receive(state, doc("formal-request-software-house-change", **SW_REQUEST))
    state, events = receive(state, doc("endpoint-form-b2", filled="no", annex="B2"))
    [summary] = [e for e in events if isinstance(e, CompletenessChanged)]
    assert summary.summary == ("2 di 3 presenti, 1 non conforme: Form di abilitazione degli endpoint per l'ambiente "
                               "di produzione (Allegato B2) (campo filled: il dato dichiarato filled è 'no', deve "
                               "essere sì), manca: Data e fascia oraria desiderate per lo switch")
    assert list(summary.non_compliant) == ["endpoint-form-b2"] and summary.missing == ["switch-date-request"]
    assert (summary.present, summary.compliant) == (2, 1)


def test_a_document_without_metadata_awaits_the_desk_and_blocks_completeness():
    state = start(opened())
    state, _ = receive(state, doc("endpoint-form-b2"))
    assert state.completeness.pending == ["endpoint-form-b2"]
    assert "1 in attesa di valutazione: Form di abilitazione degli endpoint per l'ambiente di produzione " \
           "(Allegato B2)" in state.completeness.summary


def test_the_last_compliant_document_takes_the_request_in_charge_for_4_to_6_weeks_and_schedules_the_switch():
    state = start(opened())
    state, _ = receive(state, doc("formal-request-software-house-change", **SW_REQUEST))
    state, _ = receive(state, doc("endpoint-form-b2", filled="yes", annex="B2"))
    state, events = receive(state, doc("switch-date-request", switch_date="2026-04-07", switch_window="09:00-11:00"))
    kinds = [type(e) for e in events]
    assert kinds[-3:] == [RequestComplete, TakenInCharge, SwitchScheduled]
    taken = events[-2]
    assert (taken.taken_on, taken.expected_completion_from, taken.expected_completion_to) == (
        date(2026, 3, 2), date(2026, 3, 30), date(2026, 4, 13))
    assert events[-1].switch_date == date(2026, 4, 7) and events[-1].warning is None  # 5 weeks, basic


def test_a_desired_switch_on_easter_monday_is_refused_with_the_tuesday_proposed():
    state = start(opened())
    state, _ = receive(state, doc("formal-request-software-house-change", **SW_REQUEST))
    state, _ = receive(state, doc("endpoint-form-b2", filled="yes", annex="B2"))
    state, events = receive(state, doc("switch-date-request", switch_date="2026-04-06", switch_window="09:00-11:00"))
    refused = events[-1]
    assert isinstance(refused, SwitchRefused)
    assert refused.reasons[0] == "lunedì 06/04/2026 è un giorno festivo (Lunedì dell'Angelo)"
    assert (refused.proposed_date, refused.proposed_window_start) == (date(2026, 4, 7), "09:00")
    again = domain.schedule_switch(domain.advance(state, []), SwitchSlot(date(2026, 4, 8),
                                                                         SwitchWindow.parse("14:00-16:00")), None, CAL,
                                   date(2026, 3, 2))
    assert isinstance(again[0], SwitchScheduled)


def test_a_corrected_document_replaces_the_refused_one():
    state = start(opened())
    state, _ = receive(state, doc("endpoint-form-b2", 1, filled="no", annex="B2"))
    state, _ = receive(state, doc("endpoint-form-b2", 2, filled="yes", annex="B2"))
    assert state.completeness.non_compliant == {} and state.completeness.compliant == 1


def test_a_document_the_kind_does_not_require_is_refused_naming_the_field():
    state = start(opened())
    # by the names the structure knows (the kind as the note names it), the ids beside them for the CLI and the desk
    with pytest.raises(OnboardingError, match=re.escape(
            "«Autorizzazione SUAP» non è tra i documenti di una richiesta «Cambio software house» (document_type "
            "'suap-authorisation', tipo software-house-change); richiesti: Richiesta formale di cambio Software "
            "House, ")):
        receive(state, doc("suap-authorisation", protocol="1"))


def test_a_closure_act_must_name_a_spoke_already_on_the_cup():
    state = start(opened(RequestKind.NEW_AGGREGATION, [Spoke(sts11="150456", name="Lab Partenope",
                                                             already_on_cup=True)]))
    state, _ = receive(state, doc("spoke-closure-act", protocol="9", signed="yes", spoke_sts11="150456"))
    assert "spoke-closure-act:150456" not in state.completeness.missing
    with pytest.raises(OnboardingError, match="il dato spoke_sts11 deve indicare uno SPOKE già presente sul CUP"):
        receive(state, doc("spoke-closure-act", 2, protocol="9", signed="yes", spoke_sts11="150789"))


def test_an_aggregation_without_spokes_cannot_be_opened():
    with pytest.raises(OnboardingError, match="richiesta ONB-VESUVIO: spokes è vuoto; un'aggregazione deve indicare"):
        domain.open_request(opened(RequestKind.NEW_AGGREGATION), None, REQ)


def test_the_same_opening_twice_is_a_no_op_and_a_different_one_is_refused():
    state = start(opened())
    assert domain.open_request(opened(), state, REQ) == []
    with pytest.raises(OnboardingError, match=r"richiesta ONB-VESUVIO: già aperta \(come software-house-change\)"):
        domain.open_request(opened(RequestKind.INTEROPERABILITY_CHANGE), state, REQ)


def test_tracciato_findings_are_kept_whole_in_the_event_and_counted_in_the_summary():
    state = start(opened(RequestKind.NEW_AGGREGATION, [Spoke(sts11="150456", name="Lab Partenope")]))
    findings = [Finding("150999 non è l'STS11 dell'HUB 150123", "Prestazioni", n, "IUP_SSA_CODE", f"D{n}")
                for n in (2, 3, 4)]
    events = domain.receive_document(state, doc("tracciato-prestazioni"), findings, REQ, MONDAY_2_MARCH, CAL)
    summary = next(e for e in events if isinstance(e, CompletenessChanged))
    assert len(summary.non_compliant["tracciato-prestazioni"]) == 3
    assert "1 non conforme: Tracciato Prestazioni (foglio Prestazioni, riga 2, campo IUP_SSA_CODE, cella D2: 150999 " \
           "non è l'STS11 dell'HUB 150123; e altri 2 rilievi)" in summary.summary


def test_a_switch_cannot_be_scheduled_before_the_request_is_complete():
    with pytest.raises(OnboardingError, match=r"richiesta ONB-VESUVIO: non ancora completa \(0 di 3 presenti"):
        domain.schedule_switch(start(opened()), SwitchSlot(date(2026, 5, 5), SwitchWindow.parse("09:00-10:00")),
                               "basic", CAL, date(2026, 3, 2))


def test_the_stream_version_counts_every_event_so_the_next_append_expects_it():
    """The handlers append a decision's events at `request.version` (optimistic concurrency): it must be the number of
    events of the stream, the opening included, or every append would conflict or overwrite."""
    state = start(opened())
    assert state.version == 2  # request-opened, completeness-changed
    after, events = receive(state, doc("endpoint-form-b2", filled="yes", annex="B2"))
    assert len(events) == 3 and after.version == 5  # received, assessed, completeness-changed


def test_the_same_document_delivered_twice_is_recorded_once_and_another_under_its_id_is_refused():
    """The mailbox may deliver a message again: the same file under the same id is a no-op. Another file, or the same
    file as another document type, under an id already used is refused naming the id and the file it belongs to."""
    b2 = doc("endpoint-form-b2", filled="yes", annex="B2")
    state, _ = receive(start(opened()), b2)
    assert domain.receive_document(state, b2, None, REQ, MONDAY_2_MARCH, CAL) == []
    for clash in (b2.model_copy(update={"filename": "altro.pdf"}),
                  b2.model_copy(update={"document_type": "switch-date-request"})):
        # an id an outside publisher gave twice: said as such, with both files
        with pytest.raises(OnboardingError, match=r"^richiesta ONB-VESUVIO: documento (altro|endpoint-form-b2-1)\.pdf "
                                                  r"non registrato: il suo identificativo endpoint-form-b2-1 è già "
                                                  r"quello di endpoint-form-b2-1\.pdf; ogni documento ne ha uno suo$"):
            domain.receive_document(state, clash, None, REQ, MONDAY_2_MARCH, CAL)
    # the console's and the CLI's id (the slot and the file's digest): the same file uploaded again under another
    # name, said in the structure's words, not as an id
    ours = b2.model_copy(update={"document_id": f"endpoint-form-b2-{b2.sha256[:10]}"})
    state, _ = receive(start(opened()), ours)
    with pytest.raises(OnboardingError, match=r"^richiesta ONB-VESUVIO: documento altro\.pdf non registrato: lo "
                                              r"stesso file è già stato caricato come endpoint-form-b2-1\.pdf per "
                                              r"«Form di abilitazione degli endpoint[^»]*\(Allegato B2\)»; non serve "
                                              r"caricarlo di nuovo$"):
        domain.receive_document(state, ours.model_copy(update={"filename": "altro.pdf"}), None, REQ, MONDAY_2_MARCH,
                                CAL)


def _verdict(received: DocumentReceived, *problems: str, **update: object):
    verdict = domain.assessment(received, [Finding(p) for p in problems], "desk:esposito", MONDAY_2_MARCH)
    return verdict.model_copy(update=update)


def test_a_desk_verdict_is_refused_for_a_document_never_received_or_of_another_type():
    b2 = doc("endpoint-form-b2")
    state, _ = receive(start(opened()), b2)
    with pytest.raises(OnboardingError, match="il document_id endpoint-form-b2-9 non è mai stato ricevuto"):
        domain.assess_document(state, _verdict(b2, document_id="endpoint-form-b2-9"), REQ, MONDAY_2_MARCH, CAL)
    with pytest.raises(OnboardingError, match="il document_type 'switch-date-request' non è quello ricevuto, "
                                              "'endpoint-form-b2'"):
        domain.assess_document(state, _verdict(b2, document_type="switch-date-request"), REQ, MONDAY_2_MARCH, CAL)


def test_a_non_compliant_verdict_must_say_why_and_a_compliant_one_needs_no_problem():
    b2 = doc("endpoint-form-b2")
    state, _ = receive(start(opened()), b2)
    with pytest.raises(OnboardingError, match="problems è vuoto; un esito di non conformità deve indicarne il motivo"):
        domain.assess_document(state, _verdict(b2, compliant=False), REQ, MONDAY_2_MARCH, CAL)
    events = domain.assess_document(state, _verdict(b2), REQ, MONDAY_2_MARCH, CAL)
    completeness = domain.advance(state, events).completeness
    assert isinstance(events[0], DocumentAssessed) and events[0].compliant
    assert completeness is not None and completeness.compliant == 1


def test_the_same_verdict_twice_is_a_no_op_and_a_changed_one_is_recorded():
    b2 = doc("endpoint-form-b2")
    state, _ = receive(start(opened()), b2)
    refused = _verdict(b2, "il timbro manca")
    state = domain.advance(state, domain.assess_document(state, refused, REQ, MONDAY_2_MARCH, CAL))
    assert domain.assess_document(state, refused, REQ, MONDAY_2_MARCH, CAL) == []
    changed = domain.assess_document(state, _verdict(b2), REQ, MONDAY_2_MARCH, CAL)
    completeness = domain.advance(state, changed).completeness
    assert isinstance(changed[0], DocumentAssessed) and changed[0].compliant
    assert completeness is not None and completeness.non_compliant == {}


def test_a_request_completed_by_the_desk_without_a_declared_date_is_taken_in_charge_without_a_switch():
    """The switch-date document assessed compliant by the desk, with no date or window declared: the request is
    complete and taken in charge; no switch is decided (the desk fixes it with schedule_switch), none is invented."""
    state = start(opened())
    state, _ = receive(state, doc("formal-request-software-house-change", **SW_REQUEST))
    state, _ = receive(state, doc("endpoint-form-b2", filled="yes", annex="B2"))
    undated = doc("switch-date-request")
    state, _ = receive(state, undated)
    events = domain.assess_document(state, _verdict(undated), REQ, MONDAY_2_MARCH, CAL)
    assert [type(e) for e in events][-2:] == [RequestComplete, TakenInCharge]
    state = domain.advance(state, events)
    with pytest.raises(OnboardingError, match=r"^richiesta ONB-VESUVIO: già presa in carico; le valutazioni sono "
                                              r"chiuse$"):
        domain.assess_document(state, _verdict(undated, "data mancante"), REQ, MONDAY_2_MARCH, CAL)


def test_the_handling_time_runs_from_the_day_the_complete_documentation_was_received_not_from_the_verdict():
    """Seed 003: "circa 4-6 settimane decorrenti dalla ricezione della documentazione completa e conforme". The
    documents arrive by Monday 2 March; the desk judges the last one on Monday 16 March: the request was complete
    on 2 March (handling until 30 March .. 13 April), taken in charge on the 16th. The events carry the day, so
    a replay agrees, and a stream recorded before (completed on the verdict's day) replays as it was recorded."""
    history = domain.open_request(opened(), None, REQ)
    state = OnboardingRequest.replay(history, REQ)
    undated = doc("switch-date-request").model_copy(update={"received_at": datetime(2026, 3, 2, 22, 30, tzinfo=UTC)})
    for received in (doc("formal-request-software-house-change", **SW_REQUEST),
                     doc("endpoint-form-b2", filled="yes", annex="B2"), undated):  # the last at 23:30 in Rome
        state, events = receive(state, received)
        history += events
    monday_16 = datetime(2026, 3, 16, 11, 0, tzinfo=UTC)
    events = domain.assess_document(state, _verdict(undated), REQ, monday_16, CAL)
    complete, taken = events[-2:]
    assert isinstance(complete, RequestComplete) and isinstance(taken, TakenInCharge)
    assert complete.completed_on == date(2026, 3, 2) and taken.taken_on == date(2026, 3, 16)
    assert (taken.expected_completion_from, taken.expected_completion_to) == (date(2026, 3, 30), date(2026, 4, 13))
    history += events
    assert OnboardingRequest.replay(history, REQ).complete_on == date(2026, 3, 2)
    recorded_before = [e.model_copy(update={"completed_on": date(2026, 3, 16)}) if isinstance(e, RequestComplete)
                       else e for e in history]
    assert OnboardingRequest.replay(recorded_before, REQ).complete_on == date(2026, 3, 16)


def test_a_corrected_document_received_later_moves_the_completion_day():
    """The latest received day of the documents that count: the corrected form's (9 March, recorded on the 11th from
    the mailbox), not the refused one's, nor the day it was recorded."""
    state = start(opened())
    state, _ = receive(state, doc("formal-request-software-house-change", **SW_REQUEST))
    state, _ = receive(state, doc("endpoint-form-b2", 1, filled="no", annex="B2"))
    state, _ = receive(state, doc("switch-date-request", switch_date="2026-05-05", switch_window="09:00-11:00"))
    fixed = doc("endpoint-form-b2", 2, filled="yes", annex="B2").model_copy(
        update={"received_at": datetime(2026, 3, 9, 9, 0, tzinfo=UTC)})
    _, events = receive(state, fixed, datetime(2026, 3, 11, 9, 0, tzinfo=UTC))
    assert next(e for e in events if isinstance(e, RequestComplete)).completed_on == date(2026, 3, 9)


def test_a_switch_asked_months_after_completion_needs_its_notice_from_the_day_it_is_asked():
    """Complete on 2 March; on Tuesday 1 September the structure asks for the next day: refused, the notice (3 weeks,
    Basic credentials) runs from the day asked, not from a completion long past; a past day is refused too."""
    state = start(opened())
    state, _ = receive(state, doc("formal-request-software-house-change", **SW_REQUEST))
    state, _ = receive(state, doc("endpoint-form-b2", filled="yes", annex="B2"))
    state, _ = receive(state, doc("switch-date-request"))
    state = domain.advance(state, domain.assess_document(state, _verdict(doc("switch-date-request")), REQ,
                                                         MONDAY_2_MARCH, CAL))
    assert state.complete_on == date(2026, 3, 2)
    morning = SwitchWindow.parse("09:00-11:00")
    for day in (date(2026, 9, 2), date(2026, 8, 31)):
        [refused] = domain.schedule_switch(state, SwitchSlot(day, morning), None, CAL, date(2026, 9, 1))
        assert isinstance(refused, SwitchRefused) and refused.proposed_date == date(2026, 9, 22)
        assert refused.reasons[0].endswith("non prima di martedì 22/09/2026"), refused.reasons
    [scheduled] = domain.schedule_switch(state, SwitchSlot(date(2026, 9, 22), morning), None, CAL, date(2026, 9, 1))
    assert isinstance(scheduled, SwitchScheduled)


def test_a_declared_switch_day_gone_by_the_desk_s_late_verdict_is_refused_with_the_next_day_proposed():
    """The documents, received on 2 March, declare Tuesday 24 March (3 weeks and a day); the desk's verdict on the
    endpoint form comes on Wednesday 25 March: the notice ran from 2 March, but the 24th is past."""
    state = start(opened())
    state, _ = receive(state, doc("formal-request-software-house-change", **SW_REQUEST))
    state, _ = receive(state, doc("switch-date-request", switch_date="2026-03-24", switch_window="09:00-11:00"))
    form = doc("endpoint-form-b2")
    state, _ = receive(state, form)
    events = domain.assess_document(state, _verdict(form), REQ, datetime(2026, 3, 25, 10, 0, tzinfo=UTC), CAL)
    refused = events[-1]
    assert isinstance(refused, SwitchRefused) and refused.proposed_date == date(2026, 3, 26)
    assert refused.reasons[0] == ("martedì 24/03/2026 è già passato (oggi è mercoledì 25/03/2026): lo switch si fissa "
                                  "per un giorno futuro, non prima di giovedì 26/03/2026")


def _complete_basic() -> OnboardingRequest:
    """A software-house change complete on 2 March, its formal request declaring Basic credentials; no slot declared."""
    state = start(opened())
    state, _ = receive(state, doc("formal-request-software-house-change", **SW_REQUEST))
    state, _ = receive(state, doc("endpoint-form-b2", filled="yes", annex="B2"))
    undated = doc("switch-date-request")
    state, _ = receive(state, undated)
    return domain.advance(state, domain.assess_document(state, _verdict(undated), REQ, MONDAY_2_MARCH, CAL))


def test_a_switch_asked_with_other_credentials_than_the_formal_request_declares_is_refused_naming_both():
    """Seed 003: the formal protocolled request states the OAuth2.0 option, and the option decides the notice (3 or 4
    weeks): the switch form may not choose another."""
    state, slot = _complete_basic(), SwitchSlot(date(2026, 4, 8), SwitchWindow.parse("09:00-11:00"))
    with pytest.raises(OnboardingError, match=re.escape(
            "richiesta ONB-VESUVIO: «Richiesta formale di cambio Software House» dichiara l'aggiornamento delle sole "
            "credenziali Basic (basic), lo switch è chiesto con nuove credenziali OAuth2.0 (new-oauth2); vale "
            "l'opzione dichiarata: chieda lo switch con quella, oppure, per cambiarla, invii una nuova richiesta "
            "formale protocollata")):
        domain.schedule_switch(state, slot, "new-oauth2", CAL, date(2026, 3, 2))
    for chosen in ("basic", None):
        [scheduled] = domain.schedule_switch(state, slot, chosen, CAL, date(2026, 3, 2))
        assert isinstance(scheduled, SwitchScheduled) and scheduled.credentials == "basic"


def test_the_form_s_credentials_count_only_when_the_request_declares_none():
    """The desk judged the formal request compliant with no fact declared: the switch's own choice decides."""
    state = start(opened())
    undeclared = doc("formal-request-software-house-change")
    for received in (undeclared, doc("endpoint-form-b2", filled="yes", annex="B2"), doc("switch-date-request")):
        state, _ = receive(state, received)
    for pending in (undeclared, doc("switch-date-request")):
        state = domain.advance(state, domain.assess_document(state, _verdict(pending), REQ, MONDAY_2_MARCH, CAL))
    assert state.complete_on is not None and domain.declared_credentials(state) is None
    slot = SwitchSlot(date(2026, 4, 8), SwitchWindow.parse("09:00-11:00"))
    [scheduled] = domain.schedule_switch(state, slot, "new-oauth2", CAL, date(2026, 3, 2))
    assert isinstance(scheduled, SwitchScheduled) and scheduled.credentials == "new-oauth2"
    with pytest.raises(OnboardingError, match="la richiesta non dichiara l'opzione delle credenziali; indichi se"):
        domain.schedule_switch(state, slot, None, CAL, date(2026, 3, 2))


def test_the_credentials_are_the_formal_request_s_not_another_document_s():
    """`credentials_from` names the document that declares them: a `credentials` key on the switch-date document,
    arrived first, is not the request's choice."""
    state = start(opened())
    state, _ = receive(state, doc("switch-date-request", switch_date="2026-04-14", switch_window="09:00-11:00",
                                  credentials="new-oauth2"))
    state, _ = receive(state, doc("endpoint-form-b2", filled="yes", annex="B2"))
    state, events = receive(state, doc("formal-request-software-house-change", **SW_REQUEST))  # basic
    assert domain.declared_credentials(state) == "basic"
    assert isinstance(events[-1], SwitchScheduled) and events[-1].credentials == "basic"


def test_the_credentials_are_those_declared_whatever_order_the_documents_arrive_in():
    """The endpoint form, which declares no credentials, may come before the formal request that does."""
    state = start(opened())
    state, _ = receive(state, doc("endpoint-form-b2", filled="yes", annex="B2"))
    oauth2 = {**SW_REQUEST, "credentials": "new-oauth2"}
    state, _ = receive(state, doc("formal-request-software-house-change", **oauth2))
    state, events = receive(state, doc("switch-date-request", switch_date="2026-04-14", switch_window="09:00-11:00"))
    assert isinstance(events[-1], SwitchScheduled) and events[-1].credentials == "new-oauth2"
    assert state.completeness.summary == "3 di 3 presenti, tutti conformi"


@pytest.mark.parametrize(("now", "day"), [
    (datetime(2026, 12, 31, 23, 30, tzinfo=UTC), "20270101"),  # 00:30 in Rome (UTC+1): already the new year
    (datetime(2027, 6, 30, 22, 15, tzinfo=UTC), "20270701"),  # 00:15 in Rome in summer (UTC+2)
    (datetime(2027, 6, 30, 21, 45, tzinfo=UTC), "20270630"),  # 23:45 in Rome: still that day
])
def test_a_request_id_carries_the_italian_day_not_the_host_s(now: datetime, day: str) -> None:
    from services.onboarding.handlers import new_request_id

    rid = new_request_id(now)
    assert rid.startswith(f"ONB-{day}-") and len(rid) == len(f"ONB-{day}-") + 6, rid
