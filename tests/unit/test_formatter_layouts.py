import shutil
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from services.formatter.chunks import ChunkFormatter
from services.formatter.columnar import ProblemLog
from services.formatter.fixedwidth import iter_table
from services.formatter.layouts import DEFAULT_ROOT, LayoutError, LayoutRegistry, load_layout, parse_layout
from tests.unit.test_formatter_support import service, table


def tiny(fields: list[dict], length: int = 5) -> dict:
    return {"flow_type": "TEST", "version": "1", "records": [{"kind": "T", "length": length, "fields": fields}]}


def test_every_shipped_layout_loads_and_validates() -> None:
    shipped = LayoutRegistry().available()
    assert ("FLUSSO_C", "2020") in shipped and ("FLUSSO_C_PACC", "2020") in shipped
    assert ("FLUSSO_MEF", "2020") in shipped and ("FLUSSO_ALPI_TA", "2020") in shipped
    for flow_type, version in shipped:
        layout = load_layout(flow_type, version)
        assert all(sum(f.length for f in r.fields) == r.length for r in layout.records)
    assert [r.length for r in load_layout("FLUSSO_C", "2020").records] == [150, 113]


def test_a_gap_between_fields_is_rejected_naming_the_field() -> None:
    fields = [{"name": "a", "start": 1, "length": 2, "type": "AN", "filler": True},
              {"name": "b", "start": 4, "length": 2, "type": "AN", "filler": True}]
    with pytest.raises(LayoutError, match="field 'b': starts at 4, expected 3"):
        parse_layout(tiny(fields))


def test_fields_not_covering_the_record_length_are_rejected() -> None:
    fields = [{"name": "a", "start": 1, "length": 3, "type": "AN", "filler": True}]
    with pytest.raises(LayoutError, match="cover 3 characters, the record length is 5"):
        parse_layout(tiny(fields))


def test_a_field_needs_exactly_one_source() -> None:
    fields = [{"name": "a", "start": 1, "length": 5, "type": "AN", "column": "x", "constant": "y"}]
    with pytest.raises(LayoutError, match="exactly one of"):
        parse_layout(tiny(fields))


def test_an_unknown_derivation_is_rejected() -> None:
    fields = [{"name": "a", "start": 1, "length": 5, "type": "N", "derive": "magic"}]
    with pytest.raises(LayoutError, match="derive 'magic'"):
        parse_layout(tiny(fields))


def test_a_new_layout_version_is_only_a_data_file(tmp_path: Path) -> None:
    # 2021 variant: the error flags shrink to 5 characters and a 5-character "lot" constant follows
    (tmp_path / "FLUSSO_C").mkdir()
    text = (DEFAULT_ROOT / "FLUSSO_C" / "2020.toml").read_text().replace('version = "2020"', 'version = "2021"')
    text = text.replace(
        '{ name = "error_flags", label = "Codici errore ERR01-ERR10", start = 68, length = 10, type = "AN", '
        'constant = "0000000000", notes = "ERR01..ERR10" },',
        '{ name = "error_flags", label = "Codici errore", start = 68, length = 5, type = "AN", constant = "00000" },\n'
        '  { name = "lot", start = 73, length = 5, type = "AN", constant = "L2021" },')
    assert "L2021" in text
    (tmp_path / "FLUSSO_C" / "2021.toml").write_text(text)
    layout = LayoutRegistry(tmp_path).get("FLUSSO_C", "2021")
    out = ChunkFormatter(layout, ProblemLog()).format(table([service("RX1", 1)]))
    rows = list(iter_table(layout, "C2", out.records["C2"].tobytes().splitlines()))
    assert [(r["lot"], r["error_flags"], r["row_number"]) for r in rows] == [("L2021", "00000", 1),
                                                                            ("L2021", "00000", 99)]
    assert [f.title for f in layout.record("C2").fields][13:16] == ["Codici errore", "lot", "ID"]  # no label: name


def test_every_field_of_every_shipped_layout_has_its_italian_label() -> None:
    """The operators read a file as a table titled by these labels: none may be missing or be the identifier."""
    for flow_type, version in LayoutRegistry().available():
        for record in load_layout(flow_type, version).records:
            unlabelled = [f.name for f in record.fields if f.label is None or f.label == f.name]
            assert unlabelled == [], (flow_type, version, record.kind, unlabelled)
            assert len({f.title for f in record.fields}) == len(record.fields)
    c2 = load_layout("FLUSSO_C", "2020").record("C2")
    assert [c2.field(n).title for n in ("charging_region", "sending_asl", "prescription_number", "row_number",
                                        "service_date")] == ["Regione addebitante", "Azienda inviante",
                                                             "Numero ricetta", "Progressivo riga", "Data erogazione"]


def test_a_field_without_a_label_is_titled_by_its_name() -> None:
    fields = [{"name": "a", "start": 1, "length": 2, "type": "AN", "filler": True},
              {"name": "b", "label": "Campo B", "start": 3, "length": 3, "type": "AN", "filler": True}]
    (record,) = parse_layout(tiny(fields)).records
    assert [(f.label, f.title) for f in record.fields] == [(None, "a"), ("Campo B", "Campo B")]


@pytest.mark.parametrize(("label", "error"), [("", "label '' must be a non-empty text"),
                                              (7, "label 7 must be a non-empty text"),
                                              ("a", "title 'a' repeats another field's")])
def test_a_label_that_cannot_title_a_column_is_rejected_naming_the_field(label: object, error: str) -> None:
    fields = [{"name": "a", "start": 1, "length": 2, "type": "AN", "filler": True},
              {"name": "b", "label": label, "start": 3, "length": 3, "type": "AN", "filler": True}]
    with pytest.raises(LayoutError, match=f"field 'b': {error}"):
        parse_layout(tiny(fields))


def test_a_layout_file_must_be_named_after_its_flow_type_and_version(tmp_path: Path) -> None:
    (tmp_path / "FLUSSO_C").mkdir()
    shutil.copy(DEFAULT_ROOT / "FLUSSO_C" / "2020.toml", tmp_path / "FLUSSO_C" / "2022.toml")
    with pytest.raises(LayoutError, match="declares FLUSSO_C 2020"):
        LayoutRegistry(tmp_path).get("FLUSSO_C", "2022")


def test_pacc_writes_the_closing_date_of_the_pathway_on_every_row() -> None:
    pacc = load_layout("FLUSSO_C_PACC", "2020")
    rows = [service("PACC1", 1, catalogue_coding="c", delivery_date=date(2026, 11, 3)),
            service("PACC1", 2, catalogue_coding="c", delivery_date=date(2026, 11, 24))]
    out = ChunkFormatter(pacc, ProblemLog()).format(table(rows))
    c2 = list(iter_table(pacc, "C2", out.records["C2"].tobytes().splitlines()))
    assert [r["service_date"] for r in c2] == [date(2026, 11, 24), date(2026, 11, 24), None]
    plain = ChunkFormatter(load_layout("FLUSSO_C", "2020"), ProblemLog()).format(table(rows))
    assert [r["service_date"] for r in iter_table(pacc, "C2", plain.records["C2"].tobytes().splitlines())][:2] == [
        date(2026, 11, 3), date(2026, 11, 24)]


def test_pacc_rejects_a_national_catalogue_coding() -> None:
    log = ProblemLog()
    ChunkFormatter(load_layout("FLUSSO_C_PACC", "2020"), log).format(table([service("PACC1", 1)]))
    assert [(e.field, e.code) for e in log.errors] == [("C2.catalogue_coding", "NOT_ALLOWED")]


def test_mef_has_one_record_per_service_with_booking_and_access_fields() -> None:
    mef = load_layout("FLUSSO_MEF", "2020")
    out = ChunkFormatter(mef, ProblemLog()).format(table([service("RX1", 1), service("RX1", 2, access_type="2")]))
    rows = list(iter_table(mef, "MEF", out.records["MEF"].tobytes().splitlines()))
    assert [(r["row_number"], r["access_type"], r["booking_date"], r["first_offered_date"]) for r in rows][:2] == [
        (1, "1", date(2026, 10, 30), date(2026, 11, 2)), (2, "2", date(2026, 10, 30), date(2026, 11, 2))]


def test_mef_closes_each_prescription_with_record_99() -> None:
    """The manual (seeds/000, Figura 7, the ALPI TA and MEF files): records 01..98, one per service, then record 99
    closing the prescription. It repeats the prescription and the patient, blanks the service, and carries the
    prescription's ticket and its net total."""
    mef = load_layout("FLUSSO_MEF", "2020")
    rows = [service("RX1", 1, ticket=5.0, exemption_code="E01"),
            service("RX1", 2, ticket=3.5, quantity=2, exemption_code="E01"),
            service("RX2", 1, tariff=10.0, ticket=0.0, catalogue_code="90.1")]
    out = ChunkFormatter(mef, ProblemLog()).format(table(rows))
    lines = out.records["MEF"].tobytes().splitlines()
    assert {len(line) for line in lines} == {159}
    records = list(iter_table(mef, "MEF", lines))
    assert [(r["prescription_id"], r["row_number"]) for r in records] == [
        ("RX1", 1), ("RX1", 2), ("RX1", 99), ("RX2", 1), ("RX2", 99)]
    detail, closing = records[1], records[2]
    assert (detail["service_code"], detail["quantity"], detail["ticket"], detail["total"]) == (
        "89.7", 2, Decimal("3.50"), Decimal("41.32"))
    # record 99: the prescription and the patient as on its rows, nothing of a service
    same = ("region", "ente", "structure", "prescription_number", "patient_cf", "prescription_date", "prescriber",
            "priority", "exemption_code", "delivery_type", "structure_type")
    assert {f: closing[f] for f in same} == {f: detail[f] for f in same}
    assert [closing[f] for f in ("catalogue_coding", "service_code", "booking_date", "first_offered_date",
                                 "delivery_date", "access_type")] == ["", "", None, None, None, ""]
    assert (closing["quantity"], closing["tariff"]) == (0, Decimal("0.00"))
    # its ticket is the prescription's (5.00 + 3.50); its total the services' (20.66 + 41.32) less that ticket
    assert (closing["ticket"], closing["total"]) == (Decimal("8.50"), Decimal("53.48"))
    assert (records[4]["ticket"], records[4]["total"]) == (Decimal("0.00"), Decimal("10.00"))


def test_alpi_ta_counts_waiting_days_and_flags_the_index_week() -> None:
    alpi = load_layout("FLUSSO_ALPI_TA", "2020")
    booking = dict(source_id="ALPI-7", ente="201", structure_sts11="000123", catalogue_code="89.7",
                   booking_date=date(2026, 4, 7), appointment_date=date(2026, 5, 12), priority="D", index_week=True)
    out = ChunkFormatter(alpi, ProblemLog()).format(table([booking]))
    (row,) = iter_table(alpi, "ALPI_TA", out.records["ALPI_TA"].tobytes().splitlines())
    assert (row["waiting_days"], row["index_week"], row["booking_id"]) == (35, 1, "ALPI-7")


def test_an_appointment_before_its_booking_is_an_error() -> None:
    log = ProblemLog()
    booking = dict(source_id="ALPI-8", ente="201", structure_sts11="000123", catalogue_code="89.7",
                   booking_date=date(2026, 5, 12), appointment_date=date(2026, 5, 1), priority=None, index_week=False)
    ChunkFormatter(load_layout("FLUSSO_ALPI_TA", "2020"), log).format(table([booking]))
    assert [(e.record, e.field, e.code) for e in log.errors] == [
        ("source_id ALPI-8", "ALPI_TA.waiting_days", "NEGATIVE")]


def test_a_load_takes_the_layout_in_force_for_its_period() -> None:
    """A version is a year, in force from that year on: the console and the API took "2020" whatever the period."""
    from services.formatter.layouts import version_in_force

    versions = ["2020", "2027"]
    assert version_in_force("FLUSSO_C", date(2026, 12, 1), versions) == "2020"
    assert version_in_force("FLUSSO_C", date(2027, 1, 1), versions) == "2027"
    assert version_in_force("FLUSSO_C", date(2031, 5, 1), versions) == "2027"
    assert version_in_force("FLUSSO_C", date(2019, 5, 1), versions) == "2020"  # before any: the earliest
    assert version_in_force("FLUSSO_730", date(2026, 5, 1), []) == "2020"  # no layout (XML): the default
    assert version_in_force("FLUSSO_C", date(2026, 5, 1)) == "2020"  # the folder's own: 2020 only, today
    assert version_in_force("FLUSSO_730", date(2026, 5, 1)) == "2020"


def test_a_new_730_xsd_year_is_the_version_a_load_of_that_year_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 730 has no layout: its versions are its XSD's (contracts.ts730.SCHEMA_FILES). A new year registered there
    was listed by the Tipi di flusso page, but a load took "2020" whatever its period, so the new XSD was never used."""
    from contracts import ts730
    from services.formatter.layouts import version_in_force, versions_without_layout

    monkeypatch.setitem(ts730.SCHEMA_FILES, "2027", ts730.SCHEMA_FILES["2020"])
    assert versions_without_layout("FLUSSO_730") == ("2020", "2027")
    assert version_in_force("FLUSSO_730", date(2027, 1, 1)) == "2027"
    assert version_in_force("FLUSSO_730", date(2026, 12, 1)) == "2020"
    assert version_in_force("FLUSSO_730", date(2027, 3, 1), []) == "2027"  # the layouts' folder has none for it
    assert versions_without_layout("FLUSSO_C") == ()


def test_a_layout_year_without_a_catalogue_of_its_own_takes_the_catalogue_in_force(tmp_path: Path) -> None:
    """A load of a new layout year (or 730 XSD year) read catalogue/<year>.csv and failed without one, although the
    nomenclatore had not changed: it takes the latest catalogue not after its year; a new catalogue from its year on."""
    from services.loader.catalogue import DATA_DIR, catalogue_path, load_catalogue

    folder = tmp_path / "catalogue"
    folder.mkdir()
    for year in ("2020", "2024"):
        (folder / f"{year}.csv").write_text("coding;code;description;tariff\nN;89.7;VISITA;20.66\n", encoding="utf-8")
    assert catalogue_path("2020", tmp_path) == folder / "2020.csv"
    assert catalogue_path("2023", tmp_path) == folder / "2020.csv"
    assert catalogue_path("2027", tmp_path) == folder / "2024.csv"
    assert catalogue_path("2019", tmp_path) == folder / "2020.csv"  # before any: the earliest
    assert catalogue_path("v2", tmp_path) == folder / "v2.csv"  # not a year: its own file only
    assert load_catalogue("2027") == load_catalogue("2020")  # the shipped data: one catalogue, 2020
    assert catalogue_path("2027") == DATA_DIR / "catalogue" / "2020.csv"
