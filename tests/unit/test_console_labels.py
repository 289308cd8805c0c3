"""What the console's users read instead of the platform's identifiers: every flow type, lifecycle event, count,
onboarding kind and onboarding state the platform can produce has its Italian label, so a new one added without
a label fails here rather than showing a raw identifier to an operator."""

from __future__ import annotations

import re
from pathlib import Path

from contracts.flows import EVENT_TYPES, FlowType
from contracts.onboarding import RequestKind
from contracts.states import Actor
from services.console.auth import Principal
from services.console.instance_pages import _list_rows
from services.console.labels import (
    ACCESS_LABELS,
    ACTOR_LABELS,
    COUNT_LABELS,
    EVENT_LABELS,
    FLOW_TYPE_CHOICES,
    FLOW_TYPE_LABELS,
    ONBOARDING_KIND_LABELS,
    ONBOARDING_STATUS_LABELS,
    chain_break_text,
    event_detail,
)
from services.loader.pipeline import _COUNTED_BY_CHECKS
from services.onboarding import projection


def test_every_flow_type_event_and_count_has_an_italian_label() -> None:
    assert set(FLOW_TYPE_LABELS) == {t.value for t in FlowType}
    assert list(FLOW_TYPE_CHOICES) == [t.value for t in FlowType]  # the form's order, values unchanged
    assert set(EVENT_LABELS) == set(EVENT_TYPES)
    assert {name for names in _COUNTED_BY_CHECKS.values() for name in names} <= set(COUNT_LABELS)


def test_every_service_that_records_an_instance_event_is_named_in_italian_in_its_history() -> None:
    """The history's Autore column (shown: tests/integration/test_console_security.py): the loader, formatter and TS
    gateway by Italian names, a person by user name."""
    assert set(ACTOR_LABELS) == {a.value for a in Actor} - {Actor.OPERATOR.value}


def test_every_kind_of_access_in_the_access_log_has_an_italian_label() -> None:
    console = Path(__file__).resolve().parents[2] / "services" / "console"
    source = "\n".join(p.read_text(encoding="utf-8") for p in console.glob("*.py"))
    kinds = set(re.findall(r'record_access\([^,]+, [^,]+, "([a-z-]+)"', source))
    assert {"file-view", "feedback-download", "onboarding-document-download"} <= kinds  # the scan works
    assert kinds <= set(ACCESS_LABELS), kinds - set(ACCESS_LABELS)


def test_every_onboarding_kind_and_state_has_an_italian_label() -> None:
    assert set(ONBOARDING_KIND_LABELS) == {k.value for k in RequestKind}
    source = Path(projection.__file__).read_text(encoding="utf-8")
    states = set(re.findall(r"status = '([a-z-]+)'", source)) | set(re.findall(r'"status": "([a-z-]+)"', source))
    states |= set(re.findall(r'return "([a-z-]+)"', source))
    assert {"documents-awaited", "incomplete", "non-compliant", "compliant", "complete"} <= states  # the scan works
    assert states <= set(ONBOARDING_STATUS_LABELS), states - set(ONBOARDING_STATUS_LABELS)


def test_the_instance_list_shows_the_flow_types_as_the_flow_manager_names_them() -> None:
    record = ("operator", 1947, "FLUSSO_MEF", "201", None, "02/07/2026 00:30", "01/06/2026", "30/06/2026", "Checked",
              False, False)
    html = str(_list_rows(Principal("aud.1", "auditor"), [record]))  # type: ignore[list-item]
    assert html.startswith("<tr><td>FLUSSO MEF SOGEI</td><td>201</td>")


def test_the_history_says_in_italian_which_part_went_to_ts_and_how_it_ended() -> None:
    assert event_detail("flows.ts-submitted", {"part": 2, "parts": 4, "protocollo": "26120422011800002"}) == (
        "parte 2 di 4, protocollo 26120422011800002")
    assert event_detail("flows.ts-feedback-received", {"part": 1, "parts": 4, "outcome": "confirmed_with_errors",
                                                       "reason": "2 CF sconosciuti"}) == (
        "parte 1 di 4: confermato con errori (2 CF sconosciuti)")
    assert event_detail("flows.load-scheduled", {"scheduled_at": "2026-11-02T05:00:00+00:00"}) == (
        "avvio il 02/11/2026 alle 06:00")  # Rome's time
    assert event_detail("flows.instance-deleted", {"reason": "caricata due volte"}) == "motivo: caricata due volte"
    assert event_detail("flows.format-failed", {"reasons": ["disco pieno", "riprova"]}) == "disco pieno; riprova"
    assert event_detail("flows.load-checked", {"counts": {"services": 1}}) == ""


def test_a_broken_hash_chain_is_said_in_italian_naming_the_event_and_what_no_longer_matches() -> None:
    assert chain_break_text("hash", 3, "ab12", "cd34") == (
        "evento 3: il contenuto dell'evento è stato modificato dopo la registrazione (atteso ab12, trovato cd34)")
    assert chain_break_text("version", 5, "4", "5").startswith("evento 5: la numerazione degli eventi ha un salto")
    assert "evento precedente" in chain_break_text("prev_hash", 2, "ab", "cd")


def test_the_ops_page_writes_counts_and_lag_as_italians_do_and_offsets_as_kafka_does() -> None:
    from types import SimpleNamespace

    from services.console.web import templates

    html = templates.get_template("ops.html").render(
        title="Esercizio", principal=None, menu="", assets=SimpleNamespace(head=""), error=None,
        topics=[{"topic": "flows.load.dlq", "count": 1500, "pending": 1200}],
        groups={"flows-loader": {"partitions": 6, "lag": 12345, "last": None, "state": "senza membri", "members": [],
                                 "mark": "nessuno consuma i messaggi in attesa", "urgent": True}},
        lags=[(SimpleNamespace(group="flows-loader", topic="flows.load", partition=0, committed=100000, end=112345,
                               lag=12345, last_commit=None), None)])
    assert '<td class="text-end">1.500</td>' in html and ">1.200</span>" in html  # dead letters, pending
    assert ">12.345</span>" in html and '<td class="text-end">12.345</td>' in html  # a group's lag, a partition's
    assert '<td class="text-end">100000</td><td class="text-end">112345</td>' in html  # positions, not quantities
    # a group with lag and no member: said, and marked as the table's most urgent row
    assert '<tr class="table-danger"><td>flows-loader</td>' in html
    assert "<strong>nessuno consuma i messaggi in attesa</strong>" in html and "<td>nessuno</td>" in html


def test_every_mark_and_group_state_flows_lag_gives_has_an_italian_label() -> None:
    from services.console.labels import GROUP_MARK_LABELS, GROUP_STATE_LABELS
    from services.runtime import ops

    assert set(GROUP_MARK_LABELS) == {ops.NOBODY_CONSUMING, ops.NO_MEMBER}
    assert {"Stable", "Empty", "PreparingRebalance", "CompletingRebalance", "Dead"} <= set(GROUP_STATE_LABELS)


def test_the_ops_page_counts_the_parked_outbox_rows_and_names_the_oldest_in_italian_time() -> None:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from services.console.web import templates

    def row(n: int, parked_at: datetime) -> dict[str, object]:
        return {"id": n, "key": f"19{n}", "topic": "flows.load-checked", "parked_at": parked_at, "waiting": 1200,
                "parked_reason": "MessageSizeTooLargeError: ... (payload 2000000 bytes)"}

    oldest = datetime(2026, 7, 1, 6, 5, 9, tzinfo=UTC)
    html = " ".join(templates.get_template("ops.html").render(
        title="Esercizio", principal=None, menu="", assets=SimpleNamespace(head=""), error=None, topics=[], groups={},
        lags=[], parked=[row(7, oldest), row(9, datetime(2026, 7, 2, tzinfo=UTC))], oldest_parked=oldest).split())
    assert "<strong>2 eventi fermi</strong>, il più vecchio dal 01/07/2026 08:05:09." in html  # summer: UTC+2
    assert '<td class="text-end">1.200</td>' in html  # the rows waiting behind, counted as Italians write
    assert "<code>flows outbox retry 7</code>" in html and "<code>flows outbox retry 9</code>" in html


def test_an_error_page_leads_back_to_the_instance_or_request_it_came_from() -> None:
    from services.console.web import way_back

    assert way_back("/istanze/1947/invia-ts", 422) == ("/istanze/1947", "Torna all'istanza 1947")
    assert way_back("/istanze/1947/formatta", 409) == ("/istanze/1947", "Torna all'istanza 1947")
    assert way_back("/istanze/1947", 404) == ("/istanze", "Torna all'elenco delle istanze")  # not readable: its list
    assert way_back("/istanze/nuova", 422) == ("/istanze", "Torna all'elenco delle istanze")
    assert way_back("/onboarding/ONB-VESUVIO/verdetto", 422) == ("/onboarding/ONB-VESUVIO",
                                                                 "Torna alla richiesta ONB-VESUVIO")
    assert way_back("/onboarding/ONB-X", 404) == ("/onboarding", "Torna all'elenco delle richieste")
    assert way_back("/esercizio/scarti/flows.x.dlq:0:5/rilancia", 409) == ("/esercizio/scarti",
                                                                          "Torna ai messaggi non elaborabili")
    assert way_back("/utenti/op.201/disabilita", 422) == ("/utenti", "Torna alla gestione degli utenti")
    assert way_back("/nulla", 404) == ("/", "Vai alla pagina iniziale")
    assert way_back("/istanze/1947<script>/x", 404)[0] == "/istanze"  # only digits name an instance


def test_every_flow_says_where_its_files_go_as_the_flow_managers_table_1_does() -> None:
    from services.console.labels import UPLOAD_PLATFORMS, upload_platform

    assert set(UPLOAD_PLATFORMS) == {t.value for t in FlowType}
    assert upload_platform("FLUSSO_C") == "SINFONIA: l'ente vi carica i file scaricati dalla console"
    assert upload_platform("FLUSSO_MEF") == "Sistema TS: l'ente vi carica i file scaricati dalla console"
    assert upload_platform("FLUSSO_ALPI_TA").startswith("AGENAS: l'ente")
    assert upload_platform("FLUSSO_730") == "Sistema TS: lo invia la console (Invia a Sistema TS)"


def test_the_checks_esito_keeps_the_flow_managers_name_for_it() -> None:
    """The manual's button is "Scarica FeedBack" (seeds/000): the file kind says it beside the console's word."""
    from services.console.labels import FILE_KIND_LABELS

    assert FILE_KIND_LABELS["feedback"] == "esito dei controlli (FeedBack)"


def test_every_reason_a_dead_letter_cannot_be_redriven_has_the_pages_italian_words() -> None:
    """The dead letter page says in Italian why a redrive is refused: a word for each cause deadletters raises."""
    import inspect

    from services.console.admin_pages import _NOT_REDRIVABLE
    from services.runtime import deadletters

    raised = {re.findall(r', "([a-z-]+)"\)', call)[0]
              for call in inspect.getsource(deadletters).split("raise NotRedrivable(")[1:]}
    assert raised == {"no-key", "not-json", "corrupt-batch"}
    assert set(_NOT_REDRIVABLE) == raised


def test_every_flow_type_has_an_italian_description() -> None:
    """The Tipi di flusso page's Descrizione: a flow type added without one fails here, not on an empty cell."""
    from services.console.labels import FLOW_TYPE_DESCRIPTIONS

    assert set(FLOW_TYPE_DESCRIPTIONS) == {t.value for t in FlowType}
    for flow_type, text in FLOW_TYPE_DESCRIPTIONS.items():
        assert text[:1].isupper() and text.endswith("."), flow_type
    assert "esclusi i percorsi ambulatoriali complessi" in FLOW_TYPE_DESCRIPTIONS["FLUSSO_C"]
    assert "PACC compresi" in FLOW_TYPE_DESCRIPTIONS["FLUSSO_MEF"]  # services/loader/snapshot.py SELECTIONS


def test_every_file_a_formatting_writes_says_what_it_holds() -> None:
    """One fixed-width text file per record kind of a layout (services/formatter/engine.py), the 730's zips
    (services/formatter/xml730.py): every kind of every layout of the folder, and the 730's, is described; the flow
    types without a layout are those FILES_WITHOUT_LAYOUT names, with the formatter's own kinds."""
    from contracts.ts730 import MAX_ZIP_BYTES
    from services.console.labels import FILE_CONTENTS, FILE_KIND_LABELS, FILES_WITHOUT_LAYOUT
    from services.formatter import xml730
    from services.formatter.engine import file_name
    from services.formatter.layouts import LayoutRegistry
    from services.formatter.xml730_rules import part_file_name

    registry = LayoutRegistry()
    kinds = {kind for flow_type, version in registry.available() for kind in registry.get(flow_type, version).kinds}
    assert {"C1", "C2", "MEF", "ALPI_TA"} <= kinds  # the folder was read
    assert kinds <= set(FILE_CONTENTS), kinds - set(FILE_CONTENTS)
    assert file_name("C1", "150201", "202610", 1947) == "C1_150201_202610_1947.txt"  # a text file, as the page says
    with_layout = {flow_type for flow_type, _ in registry.available()}
    assert set(FILES_WITHOUT_LAYOUT) == {t.value for t in FlowType} - with_layout == {"FLUSSO_730"}
    assert FILES_WITHOUT_LAYOUT["FLUSSO_730"][1] == (xml730.KIND,)
    assert xml730.KIND in FILE_CONTENTS and xml730.KIND in FILE_KIND_LABELS
    assert part_file_name("150", "201", "000123", "2026", 1947, 1).endswith(".zip")
    # the size the page names is the one the formatter splits below
    assert MAX_ZIP_BYTES % 2**20 == 0 and f"al massimo {MAX_ZIP_BYTES // 2**20} MB" in FILE_CONTENTS[xml730.KIND]


def test_every_type_of_layout_field_has_an_italian_name() -> None:
    from services.console.labels import FIELD_TYPE_LABELS
    from services.formatter.layouts import FIELD_TYPES

    assert set(FIELD_TYPE_LABELS) == FIELD_TYPES
