from datetime import date

import pytest

from services.formatter.chunks import ChunkFormatter
from services.formatter.columnar import ProblemLog
from services.formatter.fixedwidth import (
    FieldValueError,
    format_amount,
    format_an,
    format_date,
    format_n,
    parse_record,
    transliterate,
)
from services.formatter.layouts import load_layout
from tests.unit.test_formatter_support import service, table

FLUSSO_C = load_layout("FLUSSO_C", "2020")


def lines(records) -> list[str]:
    return records.tobytes().decode("ascii").splitlines()


def test_an_is_left_aligned_space_padded_and_upper_case() -> None:
    assert format_an("Rossi", 8) == ("ROSSI   ", False)


def test_n_is_right_aligned_and_zero_padded() -> None:
    assert format_n(7, 3) == "007"


def test_amounts_have_a_comma_and_two_decimals_in_8_and_7_characters() -> None:
    assert format_amount(12361, 8) == "00123,61"
    assert format_amount(12361, 7) == "0123,61"
    assert format_amount(0, 7) == "0000,00"


def test_dates_are_ddmmyyyy_and_blank_when_missing() -> None:
    assert format_date(date(2026, 11, 3)) == "03112026"
    assert format_date(None) == "        "


def test_accented_vowels_become_the_vowel_and_an_apostrophe() -> None:
    assert transliterate("Nicolò Pàtanè") == "Nicolo' Pa'tane'"
    assert format_an("Nicolò", 8) == ("NICOLO' ", False)
    assert transliterate("Çiğdem Muñoz") == "Cigdem Munoz"


def test_a_value_longer_than_its_field_is_an_error_never_cut() -> None:
    with pytest.raises(FieldValueError) as err:
        format_an("X" * 17, 16)
    assert err.value.code == "TOO_LONG"


def test_an_amount_too_big_for_its_field_is_an_error() -> None:
    with pytest.raises(FieldValueError):
        format_amount(100_000_00, 7)


def test_engine_reports_a_too_long_prescriber_naming_record_and_field() -> None:
    log = ProblemLog()
    ChunkFormatter(FLUSSO_C, log).format(table([service("RX1", 1, prescriber_code="DOTT-GENNARO-ESPO")]))
    assert log.error_count == 1
    problem = log.errors[0]
    assert problem.field == "C1.prescriber"
    assert problem.code == "TOO_LONG"
    assert problem.record == "source_id CUP-RX1-1 (prescription_id RX1 riga 01)"
    assert problem.message == "'DOTT-GENNARO-ESPO' ha 17 caratteri, il campo ne contiene 16"  # for the operators


def test_engine_cuts_a_long_surname_and_warns() -> None:
    surname = "De Las Mercedes Y Borbon-Dos Sicilie"  # 36 characters
    log = ProblemLog()
    out = ChunkFormatter(FLUSSO_C, log).format(table([service("RX1", 1, patient_surname=surname)]))
    assert log.error_count == 0
    assert {w.code for w in log.warnings} == {"TRUNCATED"}
    assert parse_record(FLUSSO_C, "C1", lines(out.records["C1"])[0])["surname"] == surname.upper()[:30]


def test_engine_transliterates_names_like_the_scalar_rule() -> None:
    out = ChunkFormatter(FLUSSO_C, ProblemLog()).format(table([service("RX1", 1, patient_name="Nicolò")]))
    assert parse_record(FLUSSO_C, "C1", lines(out.records["C1"])[0])["name"] == "NICOLO'"


def test_latin_letters_unicode_does_not_decompose_are_written_as_read_on_both_paths() -> None:
    names = {"Łukasz": "LUKASZ", "Đoković": "DOKOVIC", "Yıldırım": "YILDIRIM", "Œuvray": "OEUVRAY", "Þóra": "THO'RA"}
    for name, written in names.items():
        log = ProblemLog()
        out = ChunkFormatter(FLUSSO_C, log).format(table([service("RX1", 1, patient_name=name)]))
        assert log.error_count == 0, (name, log.errors)
        assert parse_record(FLUSSO_C, "C1", lines(out.records["C1"])[0])["name"] == written
        assert format_an(name, 20)[0].rstrip() == written


def test_a_character_without_transliteration_is_an_error() -> None:
    log = ProblemLog()
    ChunkFormatter(FLUSSO_C, log).format(table([service("RX1", 1, patient_name="Анна")]))
    assert {(e.field, e.code) for e in log.errors} == {("C1.name", "CHARSET")}


def test_a_character_that_transliterates_to_a_backslash_is_an_error_in_a_chunk_without_one() -> None:
    """The writer tells the engine when a chunk's raw bytes hold no control and no backslash (no_controls), and the
    engine then skips that check: U+FF3C FULLWIDTH REVERSE SOLIDUS is no backslash in the raw bytes, but NFKD makes
    it one. It was written into the file as `\\`; format_an refuses it, and so must the engine."""
    log = ProblemLog()
    ChunkFormatter(FLUSSO_C, log).format(table([service("RX1", 1, prescriber_code="MED\uff3c01")]), no_controls=True)
    assert {(e.field, e.code) for e in log.errors} == {("C1.prescriber", "CHARSET")}


def test_a_control_character_is_an_error() -> None:
    log = ProblemLog()
    ChunkFormatter(FLUSSO_C, log).format(table([service("RX1", 1, patient_surname="ROS\tSI")]))
    assert {(e.field, e.code) for e in log.errors} == {("C1.surname", "CHARSET")}


def test_engine_output_agrees_with_the_scalar_rules_field_by_field() -> None:
    row = service("RX7", 2, tariff=123.61, quantity=3, catalogue_coding="c", discipline=None,
                  patient_residence_asl=None, patient_sex="F", patient_birth_date=date(1931, 2, 28))
    out = ChunkFormatter(FLUSSO_C, ProblemLog()).format(table([row]))
    c1, c2 = lines(out.records["C1"])[0], lines(out.records["C2"])[0]
    assert c1[28:58] == format_an(row["patient_surname"], 30)[0]
    assert c1[110] == "2"
    assert c1[111:119] == format_date(row["patient_birth_date"])
    assert c1[125:128] == "   "
    assert c1[128:130] == format_n(2, 2)
    assert c2[38] == "c"  # regional coding letter keeps its lower case
    assert c2[46:49] == format_n(3, 3)
    assert c2[58:66] == format_amount(3 * 12361, 8)
    assert c2[51:58] == format_amount(0, 7)  # ticket is zero on rows 01..98


# One name in the two Unicode forms a system may send: NFC (`Ò`, one code point, as most do) and NFD (`O` then a
# combining grave U+0300, as macOS and some keyboards do). The formatter writes them alike: NFC first.
NFC_NFD = [("NICOLÒ", "NICOLO\u0300"), ("Pàtanè", "Pa\u0300tane\u0300"), ("Müller", "Mu\u0308ller"),
           ("Çelik", "C\u0327elik"), ("Ǿrsted", "Ø\u0301rsted")]


@pytest.mark.parametrize(("nfc", "nfd"), NFC_NFD)
def test_a_name_in_either_unicode_form_is_written_the_same_on_both_paths(nfc: str, nfd: str) -> None:
    import unicodedata

    assert unicodedata.normalize("NFC", nfd) == nfc != nfd
    assert transliterate(nfd) == transliterate(nfc)
    assert format_an(nfd, 20) == format_an(nfc, 20)
    written = []
    for name in (nfc, nfd):
        log = ProblemLog()
        out = ChunkFormatter(FLUSSO_C, log).format(table([service("RX1", 1, patient_surname=name)]))
        assert log.error_count == 0, (name, log.errors)
        written.append(lines(out.records["C1"])[0])
    assert written[0] == written[1]
    assert parse_record(FLUSSO_C, "C1", written[0])["surname"] == format_an(nfc, 30)[0].rstrip()


def test_a_stray_combining_mark_that_composes_with_nothing_is_dropped_as_before() -> None:
    """No letter `X` with a grave exists: NFC keeps `X` + U+0300, and the mark is dropped, as it was before NFC. A
    second grave after `O` composes with nothing either (the first one made `Ò`): `O'`, where it was `O`."""
    assert transliterate("X\u0300") == "X" and transliterate("\u0300A") == "A"
    assert transliterate("O\u0300\u0300") == "O'"


def test_letters_of_the_table_under_an_accent_are_written_as_the_letter() -> None:
    """`Ǿ` (Ø with an acute) and `Ǽ` (Æ with an acute) decompose to Ø and Æ, which the table writes O and AE: they
    were CHARSET (NFKD left Ø and Æ as they are). NFC makes `Ø` + U+0301 into `Ǿ`, so without this a name the
    formatter wrote as `O` would have become unwritable."""
    assert transliterate("Ǿ") == transliterate("Ø\u0301") == "O"
    assert transliterate("ǽ") == "ae" and transliterate("Ǣ") == "AE"


def test_the_characters_nfc_may_change_in_context_are_the_marks_and_the_second_halves_of_compositions() -> None:
    """What the compiled kernels leave to the engine (services.formatter.fastpath): a combining mark, the Bengali
    vowel sign that composes with the one before it though it combines with nothing (U+09BE), a Hangul vowel; not a
    letter, nor an accented one already composed."""
    import unicodedata

    from services.formatter.fixedwidth import composes_in_context

    assert all(composes_in_context(c) for c in ("\u0300", "\u0301", "\u0327", "\u09be", "\u1161"))
    assert not any(composes_in_context(c) for c in ("A", "Ò", "\u00d8", "\u0418", " "))
    assert unicodedata.combining("\u09be") == 0 and unicodedata.normalize("NFC", "\u09c7\u09be") == "\u09cb"
