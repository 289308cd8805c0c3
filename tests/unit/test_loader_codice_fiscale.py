"""The vectorised codice fiscale check agrees with python-codicefiscale, omocodia included."""

from __future__ import annotations

import random
import string
from datetime import date, timedelta

from codicefiscale import codicefiscale as reference

from services.loader.codice_fiscale import check_character, check_codici_fiscali
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


def test_eni_codes_pass_too_but_only_with_thirteen_digits() -> None:
    """ENI (European citizens not registered with the SSN) codes are the STP's kind: prefix and 13 digits. With a
    letter among the digits it is no such code, and is judged as a codice fiscale."""
    assert check_codici_fiscali(["ENI1500000000123"], ["F"], [date(1990, 5, 5)]) == []
    assert [f.code for f in check_codici_fiscali(["STPA500000000123", "STP15000000001A3"])] == ["CF_FORMAT"] * 2


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


def _with(position: int, char: str, code: str = ROSSI_MARIO) -> str:
    """`code` with `char` at `position` (0-based) and the check character the reference computes for it."""
    first15 = code[:position] + char + code[position + 1:15]
    return first15 + reference.encode_cin(first15)


def test_the_check_character_follows_the_official_tables_for_every_letter_and_digit() -> None:
    """DM 23/12/1976: a character counts one value at an odd position (1st, 3rd ...) and another at an even one.
    Every letter and every digit is put at an odd and at an even position; the check character the reference
    computes must be the one accepted here (generated people rarely have a J, a K or an O at an odd position)."""
    codes = [_with(position, char) for position, alphabet in ((0, string.ascii_uppercase), (1, string.ascii_uppercase),
                                                              (6, string.digits), (7, string.digits))
             for char in alphabet]
    assert check_codici_fiscali(codes) == []
    assert [check_character(code[:15]) for code in codes] == [code[15] for code in codes]


def test_a_digit_where_a_letter_goes_or_a_letter_where_a_digit_goes_is_a_format_error() -> None:
    """Letters at positions 1-6 (surname, name), 9 (month), 12 (birthplace) and 16 (check character); digits, or
    the omocodia letters LMNPQRSTUV, at 7-8 (year), 10-11 (day) and 13-15 (birthplace). Each code has the check
    character of its first 15, so only its form is wrong."""
    codes = ([_with(position, "1") for position in (0, 1, 2, 3, 4, 5, 8, 11)]
             + [_with(position, "A") for position in (6, 7, 9, 10, 12, 13, 14)] + [ROSSI_MARIO[:15] + "1"])
    findings = check_codici_fiscali(codes)
    assert [(f.index, f.code) for f in findings] == [(i, "CF_FORMAT") for i in range(len(codes))]


def test_one_code_alone_is_checked_too() -> None:
    """A load whose snapshot has a single patient checks a single code."""
    assert [f.code for f in check_codici_fiscali([ROSSI_MARIO[:15] + "X"])] == ["CF_CHECK_CHAR"]


def test_every_month_letter_and_every_omocodia_letter_decodes_to_the_birth_date() -> None:
    """The month letters ABCDEHLMPRST, and the letters LMNPQRSTUV standing for 0-9 in an omocode, read as the
    reference reads them: one person born in each month, and every omocode of three people whose digits hold 0-9."""
    births = [date(1990, month, 10) for month in range(1, 13)]
    codes = [reference.encode("BIANCHI", "LUCA", "M", b.isoformat(), "Napoli") for b in births]
    assert check_codici_fiscali(codes, ["M"] * 12, births) == []
    for code, sex, birth in (("RSSMRA80A01F839W", "M", date(1980, 1, 1)), ("SPSMRA67T45F839E", "F", date(1967, 12, 5)),
                             ("RSSNNA32S69H703U", "F", date(1932, 11, 29))):
        variants = reference.decode(code)["omocodes"]
        assert check_codici_fiscali(variants, [sex] * len(variants), [birth] * len(variants)) == [], code


def test_the_day_is_01_to_31_for_men_and_41_to_71_for_women_and_nothing_in_between() -> None:
    """Day of birth, plus 40 for women: 01-31 and 41-71 are days, 00, 32-40 and 72 on are not."""
    days = ["01", "31", "41", "71", "00", "32", "40", "72"]
    codes = [_with(9, day[0], _with(10, day[1])) for day in days]
    findings = check_codici_fiscali(codes)
    assert [(f.index, f.code) for f in findings] == [(4, "CF_FORMAT"), (5, "CF_FORMAT"), (6, "CF_FORMAT"),
                                                      (7, "CF_FORMAT")]
