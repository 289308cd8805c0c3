"""Tracciati assessed cell by cell: every problem named by sheet, row, column and cell."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.onboarding.requirements import load_requirements
from services.onboarding.tracciati import (
    TracciatoContext,
    assess_table,
    load_layouts,
    pick_table,
    read_tables,
)
from tests.fixtures.onboarding.workbooks import (
    HEADERS,
    HUB,
    PARTENOPE,
    POSILLIPO,
    aggregation_rows,
    csv_bytes,
    workbook,
)

LAYOUTS = load_layouts(load_requirements().tracciati_version)
VESUVIO = TracciatoContext(structure_sts11=HUB, aggregation=True, spokes=(PARTENOPE, POSILLIPO))


def assess(sheet: str, content: bytes, filename: str = "annex-a1.xlsx", context: TracciatoContext = VESUVIO):
    table = pick_table(read_tables(filename, content), LAYOUTS[sheet])
    assert table is not None
    return assess_table(table, LAYOUTS[sheet], context)


def test_the_vesuvio_aggregation_workbook_is_compliant_on_every_sheet():
    content = workbook(aggregation_rows())
    for sheet in LAYOUTS:
        assert assess(sheet, content) == [], sheet


def test_an_xlsx_prestazioni_with_a_wrong_iup_ssa_code_is_rejected_with_the_cell_named():
    rows = aggregation_rows()
    rows["Prestazioni"][1][3] = "150999"  # the Emocromo row, spreadsheet row 3, column D
    [finding] = assess("Prestazioni", workbook(rows))
    assert (finding.sheet, finding.row, finding.column, finding.cell) == ("Prestazioni", 3, "IUP_SSA_CODE", "D3")
    assert finding.message == "150999 non è l'STS11 dell'HUB 150123"
    assert finding.where() == "foglio Prestazioni, riga 3, campo IUP_SSA_CODE, cella D3: " + finding.message


def test_a_spoke_missing_from_the_erogatore_sheet_is_named():
    rows = aggregation_rows()
    rows["Erogatore"] = [r for r in rows["Erogatore"] if r[3] != POSILLIPO]
    [finding] = assess("Erogatore", workbook(rows))
    assert finding.column == "STS11" and finding.message == f"lo SPOKE {POSILLIPO} manca nel tracciato"


def test_the_hub_missing_from_the_strutture_sheet_is_named():
    rows = aggregation_rows()
    rows["Strutture"] = rows["Strutture"][1:]
    assert [f.message for f in assess("Strutture", workbook(rows))] == [f"l'HUB {HUB} manca nel tracciato"]


def test_a_missing_required_column_is_named_on_the_header_row():
    headers = {"Utenze": ["CODICE_FISCALE", "COGNOME", "NOME", "EMAIL", "STS11"]}
    rows = [[r[0], r[1], r[2], r[4], r[5]] for r in aggregation_rows()["Utenze"]]
    [finding] = assess("Utenze", workbook({"Utenze": rows}, headers))
    assert (finding.row, finding.column) == (1, "RUOLO")
    assert finding.message == "la colonna obbligatoria RUOLO manca nell'intestazione"


def test_a_bad_codice_fiscale_and_an_empty_surname_are_two_findings_in_their_cells():
    rows = aggregation_rows()
    rows["Utenze"][0][0] = "SPSGNR75P19F839X"  # wrong check character
    rows["Utenze"][1][1] = ""
    findings = assess("Utenze", workbook(rows))
    assert {(f.cell, f.column, f.message) for f in findings} == {
        ("A2", "CODICE_FISCALE", "'SPSGNR75P19F839X' non è un codice fiscale valido"),
        ("B3", "COGNOME", "campo obbligatorio vuoto")}


def test_an_sts11_of_five_characters_is_refused():
    rows = aggregation_rows()
    rows["Raggruppamenti Unità"][0][2] = "15012"
    [finding] = assess("Raggruppamenti Unità", workbook(rows))
    assert finding.cell == "C2" and finding.message == "'15012' non è un codice STS11 (6 caratteri A-Z 0-9)"


def test_an_istat_code_typed_as_a_number_is_refused_not_padded():
    rows = aggregation_rows()
    rows["Erogatore"][0][5] = 63049  # Excel dropped the leading zero of 063049
    [finding] = assess("Erogatore", workbook(rows))
    assert finding.cell == "F2" and finding.message == ("'63049' non è un codice ISTAT di comune (6 cifre) "
                                                        "(zeri iniziali persi? formattare la cella come testo)")


def test_a_partita_iva_with_a_wrong_check_digit_is_refused():
    rows = aggregation_rows()
    rows["Erogatore"][1][2] = "76543210638"
    [finding] = assess("Erogatore", workbook(rows))
    assert finding.cell == "C3" and finding.message == "'76543210638' non è una partita IVA valida"


def test_other_branches_accept_the_iup_ssa_code_of_any_structure_of_the_entity_and_nothing_else():
    clinic = TracciatoContext(structure_sts11="150300", aggregation=False, other_structures=("150301",))
    rows = [["89.7", "Visita", "CARDIO", "150300"], ["89.7", "Visita", "CARDIO", "150301"],
            ["89.7", "Visita", "CARDIO", HUB]]
    headers = {"Prestazioni": ["CODICE_PRESTAZIONE", "DESCRIZIONE", "CODICE_UNITA", "IUP_SSA_CODE"]}
    rows = [["89.01.1", *r[1:]] for r in rows]
    findings = assess("Prestazioni", workbook({"Prestazioni": rows}, headers), context=clinic)
    assert [(f.row, f.column) for f in findings] == [(4, "IUP_SSA_CODE")]
    assert findings[0].message == (f"{HUB} non è l'STS11 di una struttura dell'Ente che prende in carico la "
                                   "prestazione (150300, 150301)")


def test_a_semicolon_csv_is_read_and_its_rows_are_numbered_like_the_spreadsheet():
    rows = aggregation_rows()["Prestazioni"]
    rows[2][3] = "150999"
    [finding] = assess("Prestazioni", csv_bytes("Prestazioni", rows), filename="Prestazioni.csv")
    assert (finding.row, finding.cell) == (4, "D4")


def test_a_sheet_with_only_a_header_has_no_data_rows():
    [finding] = assess("Agende", workbook({"Agende": []}))
    assert finding.message == "il foglio non contiene righe di dati"


def test_a_pdf_is_not_a_tracciato():
    with pytest.raises(ValueError, match=r"^Prestazioni\.pdf: un tracciato deve essere un file \.xlsx o \.csv, "
                                         r"non \.pdf$"):
        read_tables("Prestazioni.pdf", b"%PDF-1.7")


def test_sheet_names_match_without_accents_or_case():
    rows = aggregation_rows()
    book = workbook({"Unità Eroganti": rows["Unità Eroganti"], "Agende": rows["Agende"]})
    tables = read_tables("a1.xlsx", book)
    renamed = [t.__class__("unita eroganti" if t.sheet == "Unità Eroganti" else t.sheet, t.header, t.rows)
               for t in tables]
    picked = pick_table(renamed, LAYOUTS["Unità Eroganti"])
    assert picked is not None and picked.sheet == "unita eroganti"


def test_a_name_of_the_longest_allowed_length_is_accepted_and_one_character_more_is_not():
    """DENOMINAZIONE holds at most 200 characters: the 200th is in, the 201st out."""
    rows = aggregation_rows()
    rows["Erogatore"][0][1] = "L" * 200
    assert assess("Erogatore", workbook(rows)) == []
    rows["Erogatore"][0][1] = "L" * 201
    [finding] = assess("Erogatore", workbook(rows))
    assert finding.cell == "B2" and finding.message == "'LLLLLLLLLLLLLLLLLLLL'... è lungo 201 caratteri, al massimo 200"


def test_a_user_may_be_registered_under_a_numeric_codice_fiscale_checked_as_a_partita_iva():
    """A codice fiscale of 11 digits is a legal person's, checked with the partita IVA's check digit."""
    rows = aggregation_rows()
    rows["Utenze"][0][0] = "12345670637"
    assert assess("Utenze", workbook(rows)) == []
    rows["Utenze"][0][0] = "12345670638"
    [finding] = assess("Utenze", workbook(rows))
    assert finding.cell == "A2" and finding.message == "'12345670638' non è un codice fiscale numerico valido"
    rows["Utenze"][0][0] = "1234567063X"  # 11 characters, not all digits: a personal code, and a wrong one
    [finding] = assess("Utenze", workbook(rows))
    assert finding.message == "'1234567063X' non è un codice fiscale valido"


def test_the_lost_leading_zeros_hint_is_only_for_a_number_shorter_than_six_digits():
    rows = aggregation_rows()
    rows["Erogatore"][0][5] = "NA"  # the province where the municipality's code goes: no talk of zeros
    [finding] = assess("Erogatore", workbook(rows))
    assert finding.message == "'NA' non è un codice ISTAT di comune (6 cifre)"


def test_a_service_code_without_its_dots_breaks_the_code_format():
    rows = aggregation_rows()
    rows["Prestazioni"][0][0] = "90271"
    [finding] = assess("Prestazioni", workbook(rows))
    assert finding.cell == "A2" and finding.message == (
        "'90271' non è valido: un codice del nomenclatore con i punti: due cifre, un punto e due cifre, per esempio "
        "90.27 o 90.27.1")  # in words: the regular expression told a structure nothing


def test_date_cells_are_read_as_the_day_they_show_and_a_time_after_the_day_is_allowed():
    """Excel stores a date as a date-time at midnight: the cell reads 2026-09-01, as typed. A date-time with an hour
    reads whole and is still a valid DATA_INIZIO_VALIDITA (its first ten characters are the day)."""
    rows = aggregation_rows()
    rows["Agende"][0][2] = datetime(2026, 9, 1)
    (table,) = read_tables("a1.xlsx", workbook({"Agende": rows["Agende"]}))
    assert table.rows[0][2] == "2026-09-01"
    rows["Agende"][0][2] = datetime(2026, 9, 1, 8, 30)
    content = workbook({"Agende": rows["Agende"]})
    (table,) = read_tables("a1.xlsx", content)
    assert table.rows[0][2] == "2026-09-01T08:30:00"
    assert assess("Agende", content) == []


def test_an_italian_csv_with_commas_in_its_descriptions_is_split_on_its_semicolons():
    """Excel's "CSV (separato da ;)": the header decides the separator, whatever commas the descriptions hold."""
    rows = aggregation_rows()["Prestazioni"]
    for row in rows:
        row[1] = f"{row[1]}, dosaggio, siero, plasma, urine"
    assert assess("Prestazioni", csv_bytes("Prestazioni", rows), filename="Prestazioni.csv") == []


def test_a_csv_with_only_its_header_has_no_data_rows():
    content = b"CODICE_AGENDA;CODICE_UNITA;DATA_INIZIO_VALIDITA;DATA_FINE_VALIDITA;IUP_SSA_CODE\n"
    [finding] = assess("Agende", content, filename="Agende.csv")
    assert finding.message == "il foglio non contiene righe di dati"


def test_a_short_csv_row_has_its_missing_cells_empty():
    content = b"CODICE_PRESTAZIONE;DESCRIZIONE;CODICE_UNITA;IUP_SSA_CODE\n90.27.1;Glucosio;PRELIEVI\n"
    [finding] = assess("Prestazioni", content, filename="Prestazioni.csv")
    assert (finding.cell, finding.message) == ("D2", "campo obbligatorio vuoto")


def test_a_lone_table_is_taken_whatever_its_name_and_among_several_only_the_named_one():
    rows = aggregation_rows()
    lone = read_tables("export-gestionale.csv", csv_bytes("Prestazioni", rows["Prestazioni"]))
    assert pick_table(lone, LAYOUTS["Prestazioni"]) is lone[0]
    two = read_tables("a1.xlsx", workbook({"Agende": rows["Agende"], "Utenze": rows["Utenze"]}))
    assert pick_table(two, LAYOUTS["Prestazioni"]) is None


def test_a_structure_sheet_without_its_sts11_column_names_the_column_only():
    """Without the column, "the HUB is missing" would be a guess: the missing column is the one finding."""
    headers = {"Strutture": HEADERS["Strutture"][1:]}
    content = workbook({"Strutture": [r[1:] for r in aggregation_rows()["Strutture"]]}, headers)
    assert [(f.row, f.column, f.message) for f in assess("Strutture", content)] == [
        (1, "STS11", "la colonna obbligatoria STS11 manca nell'intestazione")]


@pytest.mark.parametrize(("sheet", "row", "column", "value", "message"), [
    ("Sedi", 0, 5, "8013", "'8013' non è un CAP (5 cifre)"),
    ("Sedi", 0, 5, "801340", "'801340' non è un CAP (5 cifre)"),
    ("Erogatore", 0, 5, "0630490", "'0630490' non è un codice ISTAT di comune (6 cifre)"),
    ("Raggruppamenti Unità", 0, 2, "1501234", "'1501234' non è un codice STS11 (6 caratteri A-Z 0-9)"),
    ("Raggruppamenti Unità", 0, 2, "15012a", "'15012a' non è un codice STS11 (6 caratteri A-Z 0-9)"),
    ("Utenze", 0, 4, "g.esposito@vesuvio", "'g.esposito@vesuvio' non è un indirizzo e-mail"),
    ("Utenze", 0, 4, "g.esposito@vesuvio .it", "'g.esposito@vesuvio .it' non è un indirizzo e-mail"),
])
def test_codes_have_exactly_their_length_and_an_address_a_domain(sheet: str, row: int, column: int, value: str,
                                                                 message: str) -> None:
    """CAP 5 digits, ISTAT 6, STS11 6 letters or digits as typed (upper case), an e-mail a dotted domain and no
    blanks: one character more or less is a wrong code, not a near one."""
    rows = aggregation_rows()
    rows[sheet][row][column] = value
    [finding] = assess(sheet, workbook(rows))
    assert finding.message == message


def test_a_coded_column_without_its_format_in_words_is_refused_when_the_tracciati_are_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from services.onboarding.requirements import RequirementsError

    (tmp_path / "tracciati-test.toml").write_text(
        '[sheets."Sedi"]\ncolumns = [{ name = "CODICE_SEDE", type = "code", pattern = "^[0-9]{3}$" }]\n')
    with pytest.raises(RequirementsError, match="column CODICE_SEDE: a pattern needs its `format`"):
        load_layouts("test", tmp_path)
