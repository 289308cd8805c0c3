"""The documents each kind requires, as versioned data, conditional ones included."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.onboarding.requirements import (
    _RULES,
    DATA_DIR,
    RequirementsError,
    available_versions,
    check_metadata,
    load_requirements,
)

REQ = load_requirements()
EIGHT_TRACCIATI = ["tracciato-erogatore", "tracciato-strutture", "tracciato-sedi", "tracciato-raggruppamenti-unita",
                   "tracciato-unita-eroganti", "tracciato-prestazioni", "tracciato-agende", "tracciato-utenze"]


def test_the_latest_version_is_the_note_of_may_2026():
    assert available_versions()[-1] == REQ.version == "2026-05"


def test_a_new_note_is_the_one_new_requests_get_and_the_old_one_stays_loadable(tmp_path: Path):
    """A request is judged by the note it was opened with; one opened today gets the latest note."""
    current = (DATA_DIR / "requirements-2026-05.toml").read_text(encoding="utf-8")
    (tmp_path / "requirements-2026-05.toml").write_text(current, encoding="utf-8")
    newer = current.replace('version = "2026-05"', 'version = "2027-01"')
    (tmp_path / "requirements-2027-01.toml").write_text(newer, encoding="utf-8")
    assert load_requirements(data_dir=tmp_path).version == "2027-01"
    assert load_requirements("2026-05", data_dir=tmp_path).version == "2026-05"


def test_a_new_aggregation_without_spokes_on_the_cup_needs_eight_tracciati_and_four_acts():
    assert REQ.slots_for("new-aggregation", []) == [*EIGHT_TRACCIATI, "accreditation-resolution",
                                                    "suap-authorisation", "spoke-reconfiguration-act",
                                                    "formal-request-aggregation"]


def test_each_spoke_already_on_the_cup_adds_its_own_closure_act():
    slots = REQ.slots_for("new-aggregation", ["150789", "150456"])
    assert [s for s in slots if s.startswith("spoke-closure-act")] == ["spoke-closure-act:150456",
                                                                       "spoke-closure-act:150789"]


def test_a_registry_change_needs_only_three_tracciati():
    slots = REQ.slots_for("aggregator-registry-change", [])
    assert [s for s in slots if s.startswith("tracciato")] == EIGHT_TRACCIATI[:3]


def test_a_new_acquisition_needs_the_b1_endpoint_form_and_no_suap():
    slots = REQ.slots_for("new-acquisition", [])
    assert "endpoint-form-b1" in slots and "suap-authorisation" not in slots and len(slots) == 11


def test_switch_kinds_need_their_forms():
    assert REQ.slots_for("software-house-change", []) == ["formal-request-software-house-change",
                                                          "endpoint-form-b2", "switch-date-request"]
    assert REQ.slots_for("interoperability-change", []) == ["formal-request-interoperability-change",
                                                            "endpoint-form-c"]


def test_a_formal_request_must_name_the_software_house():
    doc = REQ.document_type("formal-request-aggregation")
    findings = check_metadata(doc, {"protocol": "2026/77", "signed": "yes"})
    assert [f.column for f in findings] == ["software_house"]
    assert check_metadata(doc, {"protocol": "2026/77", "signed": "sì", "software_house": "Medisoft"}) == []


def test_a_software_house_change_must_state_the_oauth2_option():
    doc = REQ.document_type("formal-request-software-house-change")
    base = {"protocol": "2026/78", "letterhead": "yes", "software_house": "Medisoft"}
    [missing] = check_metadata(doc, base)
    assert missing.column == "credentials" and missing.message == (
        "il dato dichiarato credentials manca (uno tra basic, new-oauth2)")
    [wrong] = check_metadata(doc, {**base, "credentials": "maybe"})
    assert wrong.message == "il dato dichiarato credentials è 'maybe', deve essere uno tra basic, new-oauth2"
    assert check_metadata(doc, {**base, "credentials": "new-oauth2"}) == []


def test_an_unsigned_act_is_named():
    doc = REQ.document_type("spoke-reconfiguration-act")
    [finding] = check_metadata(doc, {"protocol": "2026/79", "signed": "no"})
    assert finding.column == "signed" and finding.message == (
        "il dato dichiarato signed è 'no', deve essere sì")


@pytest.mark.parametrize("rule", sorted(_RULES))
@pytest.mark.parametrize("value", [None, "", "   "])
def test_every_rule_says_a_missing_or_blank_value_is_missing(rule: str, value: str | None) -> None:
    """A key not declared at all, declared empty or only blanks: "manca", never a complaint about its form."""
    found = _RULES[rule](value, "basic|new-oauth2")
    assert found is not None and found.startswith("manca"), found


@pytest.mark.parametrize(("value", "verdict"), [
    ("150456", None), ("15a45b", None),  # letters are read in upper case
    ("15045", "non un codice STS11 (6 caratteri)"), ("1504567", "non un codice STS11 (6 caratteri)"),
    ("150-45", "non un codice STS11 (6 caratteri)"),
])
def test_a_declared_sts11_is_six_letters_or_digits(value: str, verdict: str | None) -> None:
    found = _RULES["sts11"](value, "")
    assert found == verdict if verdict is None else (found is not None and verdict in found), found


def test_a_sheet_is_matched_to_its_tracciato_without_case_or_accents():
    assert REQ.tracciato_type_for_sheet("Unità Eroganti") == "tracciato-unita-eroganti"
    assert REQ.tracciato_type_for_sheet("  unita   EROGANTI ") == "tracciato-unita-eroganti"
    assert REQ.tracciato_type_for_sheet("Foglio1") is None  # and a document type without a sheet matches none


def test_the_per_spoke_slot_comes_from_the_metadata():
    assert REQ.slot_of("spoke-closure-act", {"spoke_sts11": "150456"}) == "spoke-closure-act:150456"
    assert REQ.slot_of("tracciato-agende", {"spoke_sts11": "150456"}) == "tracciato-agende"


def test_a_per_spoke_slot_gives_back_its_type_and_the_spoke_it_is_for():
    """What the console's document select sends: the slot, which names the SPOKE (the inverse of slot_of)."""
    assert REQ.slot_document("spoke-closure-act:150456") == ("spoke-closure-act", {"spoke_sts11": "150456"})
    assert REQ.slot_of(*REQ.slot_document("spoke-closure-act:150456")) == "spoke-closure-act:150456"
    assert REQ.slot_document("suap-authorisation") == ("suap-authorisation", {})
    with pytest.raises(RequirementsError, match="'suap-authorisation:150456' non è un documento da indicare per "
                                                "SPOKE"):
        REQ.slot_document("suap-authorisation:150456")


def test_an_unknown_version_or_document_type_is_an_explicit_error():
    with pytest.raises(RequirementsError, match="2019"):
        load_requirements("2019")
    with pytest.raises(RequirementsError, match="requisiti 2026-05: tipo di documento 'fax' sconosciuto"):
        REQ.document_type("fax")


@pytest.mark.parametrize(("value", "verdict"), [
    ("09:00-11:00", None),
    ("9-11", "non una fascia oraria OO:MM-OO:MM"),
    ("25:00-26:00", "le ore vanno da 00 a 23"),  # the shape of a window, not one: the switch could not take it
    ("11:00-09:00", "deve finire dopo il suo inizio"),
    ("10:00-10:00", "deve finire dopo il suo inizio"),
    ("", "manca"),
    ("23:00-23:59", None),  # the last hour of the day is an hour
    ("9:00-11:00", "non una fascia oraria OO:MM-OO:MM"),  # two digits for the hour
    ("09:60-10:00", "non una fascia oraria OO:MM-OO:MM"),  # minutes go from 00 to 59 ...
    ("09:00-10:60", "non una fascia oraria OO:MM-OO:MM"),  # ... at either end
    ("24:00-23:00", "le ore vanno da 00 a 23"),  # the start is checked ...
    ("09:00-24:00", "le ore vanno da 00 a 23"),  # ... and the end
])
def test_a_declared_window_must_be_a_real_window_of_one_day(value: str, verdict: str | None) -> None:
    found = _RULES["window"](value, "")
    assert found == verdict if verdict is None else (found is not None and verdict in found), found
