"""The vectorised codice fiscale check agrees with python-codicefiscale, omocodia included."""

from __future__ import annotations

import random
from datetime import date, timedelta

from codicefiscale import codicefiscale as reference

from services.loader.codice_fiscale import check_codici_fiscali
from simulators.cup.generator import FEMALE_NAMES, MALE_NAMES, MUNICIPALITIES, SURNAMES, codice_fiscale

ROSSI_MARIO = "RSSMRA80A01F839W"  # the textbook example: Mario Rossi, born in Napoli on 1 January 1980


def _people(n: int, seed: int = 1947) -> list[tuple[str, str, date]]:
    rng = random.Random(seed)
    people = []
    for _ in range(n):
        sex = rng.choice("MF")
        birth = date(1920, 1, 1) + timedelta(days=rng.randrange(36000))
        name = rng.choice(MALE_NAMES if sex == "M" else FEMALE_NAMES)
        cf = codice_fiscale(rng.choice(SURNAMES), name, sex, birth, rng.choice(MUNICIPALITIES)[1],
                            omocode_digits=rng.choice((0, 0, 0, 1, 2, 3, 7)))
        people.append((cf, sex, birth))
    return people


def test_mario_rossi_born_in_napoli_is_valid() -> None:
    assert reference.is_valid(ROSSI_MARIO)
    assert check_codici_fiscali([ROSSI_MARIO], ["M"], [date(1980, 1, 1)]) == []


def test_two_thousand_generated_codes_are_valid_for_both_implementations() -> None:
    people = _people(2000)
    codes = [p[0] for p in people]
    assert all(reference.is_valid(c) for c in codes)
    assert check_codici_fiscali(codes, [p[1] for p in people], [p[2] for p in people]) == []


def test_every_omocode_variant_is_accepted_and_decodes_to_the_same_person() -> None:
    variants = reference.decode(ROSSI_MARIO)["omocodes"]
    assert len(variants) == 128
    assert check_codici_fiscali(variants, ["M"] * 128, [date(1980, 1, 1)] * 128) == []
    decoded = reference.decode(variants[-1])
    assert decoded["birthdate"].date() == date(1980, 1, 1) and decoded["gender"] == "M"


def test_a_wrong_check_character_is_caught_by_both() -> None:
    people = _people(500, seed=1948)
    wrong = [c[:15] + chr((ord(c[15]) - 65 + 7) % 26 + 65) for c, _, _ in people]
    assert not any(reference.is_valid(c) for c in wrong)
    findings = check_codici_fiscali(wrong)
    assert [f.index for f in findings] == list(range(500))
    assert {f.code for f in findings} == {"CF_CHECK_CHAR"}


def test_single_character_typos_valid_for_the_reference_are_valid_here() -> None:
    rng = random.Random(99)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    typos = []
    for cf, _, _ in _people(1500, seed=1951):
        pos = rng.randrange(16)
        typos.append(cf[:pos] + rng.choice(alphabet) + cf[pos + 1:])
    bad_here = {f.index for f in check_codici_fiscali(typos) if f.code in ("CF_FORMAT", "CF_CHECK_CHAR")}
    for i, code in enumerate(typos):
        if reference.is_valid(code):
            assert i not in bad_here, code
    # the reference also rejects impossible dates and unknown places: it can only be stricter
    assert len(bad_here) > 1000


def test_birth_date_and_sex_must_match_the_code() -> None:
    findings = check_codici_fiscali([ROSSI_MARIO, ROSSI_MARIO, ROSSI_MARIO], ["M", "F", "M"],
                                    [date(1980, 1, 1), date(1980, 1, 1), date(1880, 1, 2)])
    assert [(f.index, f.code) for f in findings] == [(1, "CF_SEX_MISMATCH"), (2, "CF_BIRTH_MISMATCH")]


def test_women_have_forty_added_to_the_day() -> None:
    maria = codice_fiscale("ESPOSITO", "MARIA", "F", date(1975, 3, 12), "H703")
    assert maria[9:11] == "52"
    assert check_codici_fiscali([maria], ["F"], [date(1975, 3, 12)]) == []


def test_short_lower_case_and_misplaced_codes_are_format_errors() -> None:
    findings = check_codici_fiscali(["RSSMRA80A01F839", ROSSI_MARIO.lower(), "RSSMRA80Z01F839W", "RSSMRÀ80A01F839W"])
    assert [(f.index, f.code) for f in findings] == [(0, "CF_FORMAT"), (1, "CF_FORMAT"), (2, "CF_FORMAT"),
                                                      (3, "CF_FORMAT")]


def test_stp_codes_of_foreigners_are_not_codici_fiscali_and_pass() -> None:
    assert check_codici_fiscali(["STP1500000000123"], ["M"], [date(1990, 5, 5)]) == []


def test_each_finding_tells_the_operator_in_italian_what_is_wrong_and_what_was_expected() -> None:
    """The message lands in the feedback the operators read: Italian, naming the code, the wrong value and the
    expected one (the code CF_* stays an identifier)."""
    wrong_check = ROSSI_MARIO[:15] + "X"
    findings = check_codici_fiscali([wrong_check, "RSSMRA80A01F839", "RSSMRA80Z01F839W", ROSSI_MARIO, ROSSI_MARIO],
                                    ["M", "M", "M", "F", "M"],
                                    [date(1980, 1, 1)] * 4 + [date(1980, 1, 2)])
    assert [(f.code, f.message) for f in findings] == [
        ("CF_CHECK_CHAR", "il carattere di controllo del codice fiscale RSSMRA80A01F839X dovrebbe essere W, non X"),
        ("CF_FORMAT", "il codice fiscale 'RSSMRA80A01F839' non è di 16 caratteri ASCII"),
        ("CF_FORMAT", "il codice fiscale RSSMRA80Z01F839W non è formalmente corretto (lettere, cifre, mese o giorno "
                      "in posizioni sbagliate)"),
        ("CF_SEX_MISMATCH", "il codice fiscale RSSMRA80A01F839W non corrisponde al sesso F"),
        ("CF_BIRTH_MISMATCH", "il codice fiscale RSSMRA80A01F839W non corrisponde alla data di nascita 02/01/1980"),
    ]
