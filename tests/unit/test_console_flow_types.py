"""The Tipi di flusso page's data (services/console/instance_pages.py flow_type_rows, deadline_rule): every flow type
the platform handles, its layout versions as the layouts' folder has them and the one a load of the month takes (as a
load takes it), the files a formatting writes, where they go, the deadline rule in words from the rule book."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

from contracts import ts730
from contracts.deadlines import next_working_day
from contracts.flows import FlowType
from services.console.instance_pages import DeadlineRule, deadline_rule, flow_type_rows
from services.console.labels import FLOW_TYPE_DESCRIPTIONS, FLOW_TYPE_LABELS, upload_platform
from services.console.web import _nav_of, way_back
from services.formatter.layouts import DEFAULT_ROOT, DEFAULT_VERSION, LayoutRegistry, version_in_force


def test_one_row_per_flow_type_with_its_name_description_destination_and_the_layouts_versions() -> None:
    today = date(2026, 11, 5)
    rows = {r.flow_type: r for r in flow_type_rows(today)}
    assert list(rows) == [t.value for t in FlowType]
    available = LayoutRegistry().available()
    for flow_type, row in rows.items():
        assert row.name == FLOW_TYPE_LABELS[flow_type]
        assert row.description == FLOW_TYPE_DESCRIPTIONS[flow_type]
        assert row.destination == upload_platform(flow_type)
        assert row.in_force == version_in_force(flow_type, today) and row.in_force in row.versions
        layouts = tuple(v for f, v in available if f == flow_type)
        assert row.with_layouts == bool(layouts)
        if layouts:
            assert row.versions == layouts
    # the 730 has no layout folder: its versions are its XSD's, and its loads take DEFAULT_VERSION
    assert rows["FLUSSO_730"].versions == tuple(sorted(ts730.SCHEMA_FILES))
    assert rows["FLUSSO_730"].in_force == DEFAULT_VERSION
    assert [k for k, _ in rows["FLUSSO_C"].files] == ["C1", "C2"] == [k for k, _ in rows["FLUSSO_C_PACC"].files]
    assert rows["FLUSSO_C"].files_lead == "2 file di testo a larghezza fissa, uno per tipo di record"
    assert [k for k, _ in rows["FLUSSO_MEF"].files] == ["MEF"]
    assert [k for k, _ in rows["FLUSSO_ALPI_TA"].files] == ["ALPI_TA"]
    assert rows["FLUSSO_ALPI_TA"].files_lead == "Un file di testo a larghezza fissa"
    assert [k for k, _ in rows["FLUSSO_730"].files] == ["730 (zip)"]


def test_a_new_layout_year_dropped_in_the_folder_is_listed_and_in_force_from_its_year(tmp_path: Path) -> None:
    """The versions are the folder's, not a copy: a 2026 layout of Flusso C added as data is listed at once, in force
    for a load of a month of 2026, not yet for one of 2025 (version_in_force, as a load takes it)."""
    root = tmp_path / "layouts"
    shutil.copytree(DEFAULT_ROOT, root)
    text = (root / "FLUSSO_C" / "2020.toml").read_text(encoding="utf-8")
    (root / "FLUSSO_C" / "2026.toml").write_text(text.replace('version = "2020"', 'version = "2026"'),
                                                 encoding="utf-8")
    (newer,) = [r for r in flow_type_rows(date(2026, 3, 1), LayoutRegistry(root)) if r.flow_type == "FLUSSO_C"]
    assert (newer.versions, newer.in_force) == (("2020", "2026"), "2026")
    (older,) = [r for r in flow_type_rows(date(2025, 12, 31), LayoutRegistry(root)) if r.flow_type == "FLUSSO_C"]
    assert (older.versions, older.in_force) == (("2020", "2026"), "2020")
    others = {r.flow_type: r.versions for r in flow_type_rows(date(2026, 3, 1), LayoutRegistry(root))}
    assert others["FLUSSO_MEF"] == ("2020",)


def test_a_layout_that_cannot_be_read_is_said_and_the_other_rows_stay(tmp_path: Path) -> None:
    root = tmp_path / "layouts"
    shutil.copytree(DEFAULT_ROOT, root)
    (root / "FLUSSO_MEF" / "2020.toml").write_text("flow_type = [", encoding="utf-8")
    rows = {r.flow_type: r for r in flow_type_rows(date(2026, 11, 5), LayoutRegistry(root))}
    assert rows["FLUSSO_MEF"].files == () and "non leggibile" in rows["FLUSSO_MEF"].files_lead
    assert [k for k, _ in rows["FLUSSO_C"].files] == ["C1", "C2"]


def test_the_deadline_rules_of_the_data_in_words() -> None:
    """The real rule book (contracts/data/deadlines.toml) for 2026 data: the dates are those the Scadenze page shows
    (a due date on a weekend or holiday moved: the 730's 31 January 2027 is a Sunday)."""
    assert deadline_rule("FLUSSO_C", 2026) == DeadlineRule("Mensile: entro il giorno 10 del mese successivo.")
    assert deadline_rule("FLUSSO_MEF", 2026).text == (
        "Mensile, secondo il calendario del 2026: entro il giorno fissato, tra il 10 e il 14 del mese successivo.")
    alpi = deadline_rule("FLUSSO_ALPI_TA", 2026)
    assert alpi.text == "Per i periodi fissati dal calendario del 2026:" and len(alpi.dates) == 4
    assert alpi.dates[0] == "19/01/2026 – 23/01/2026: entro il 27/02/2026"
    assert deadline_rule("FLUSSO_730", 2026) == DeadlineRule("Annuale:", (
        "01/01/2026 – 31/12/2026: entro il 01/02/2027",))
    assert deadline_rule("FLUSSO_730", 2024) == DeadlineRule("Semestrale:", (
        "01/01/2024 – 30/06/2024: entro il 30/09/2024", "01/07/2024 – 31/12/2024: entro il 31/01/2025"))


def test_a_year_without_rules_or_with_rules_that_cannot_be_read_is_said_never_guessed() -> None:
    # a calendar of working days (the page says the dates as due, after a weekend or holiday): the 10th or later of
    # the following month, one month the 21st or later
    calendar = {f"2026-{m:02d}": next_working_day(date(2026 + m // 12, m % 12 + 1, 21 if m == 5 else 10)).isoformat()
                for m in range(1, 13)}
    days = sorted(date.fromisoformat(d).day for d in calendar.values())
    assert days[0] == 10 and days[-1] >= 21
    book: dict[str, Any] = {
        "X": {"years": {"2026": {"kind": "monthly", "day": 31, "months_after": 2}}},
        "CAL": {"years": {"2026": {"kind": "monthly", "calendar": calendar}}},
        "BAD": {"years": {"2026": {"kind": "weekly"}}},
    }
    assert deadline_rule("X", 2026, book).text == (
        "Mensile: entro il giorno 31 (l'ultimo del mese, se è più corto) del 2° mese successivo.")
    assert deadline_rule("CAL", 2026, book).text == (
        f"Mensile, secondo il calendario del 2026: entro il giorno fissato, tra il 10 e il {days[-1]} del mese "
        "successivo.")
    assert deadline_rule("X", 2099, book) == DeadlineRule(
        "Le regole di scadenza per i dati del 2099 mancano: avvisi l'esercizio.", missing=True)
    assert deadline_rule("BAD", 2026, book) == DeadlineRule(
        "Le regole di scadenza per i dati del 2026 non sono leggibili: avvisi l'esercizio.", missing=True)
    # a calendar whose dates are not all in the following month: each period said with its date
    far = {"CAL": {"years": {"2026": {"kind": "monthly", "calendar": {
        **calendar, "2026-03": "2026-05-15"}}}}}
    rule = deadline_rule("CAL", 2026, far)
    assert rule.text == "Mensile, secondo il calendario del 2026:" and len(rule.dates) == 12
    assert "01/03/2026 – 31/03/2026: entro il 15/05/2026" in rule.dates


def test_the_menu_of_every_role_that_lists_instances_leads_to_the_flow_types_after_the_deadlines() -> None:
    for role in ("operator", "ops", "auditor"):
        paths = [path for path, _ in _nav_of(role)]
        assert paths[paths.index("/scadenze") + 1] == "/tipi-di-flusso", role
        assert ("/tipi-di-flusso", "Tipi di flusso") in _nav_of(role)
    for role in ("structure", "desk", "admin"):
        assert "/tipi-di-flusso" not in [path for path, _ in _nav_of(role)], role
    assert way_back("/tipi-di-flusso/FLUSSO_C/1999", 404) == ("/tipi-di-flusso", "Torna ai tipi di flusso")


def test_a_new_730_xsd_year_is_listed_and_in_force_from_its_year(monkeypatch: Any) -> None:
    """The page listed a new 730 XSD year but named "2020" in force for it, as loads took it: both take it now."""
    monkeypatch.setitem(ts730.SCHEMA_FILES, "2027", ts730.SCHEMA_FILES["2020"])
    (row,) = [r for r in flow_type_rows(date(2027, 2, 1)) if r.flow_type == "FLUSSO_730"]
    assert (row.versions, row.in_force) == (("2020", "2027"), "2027")
    (earlier,) = [r for r in flow_type_rows(date(2026, 12, 1)) if r.flow_type == "FLUSSO_730"]
    assert (earlier.versions, earlier.in_force) == (("2020", "2027"), "2020")
