"""Which `flows` commands read personal data, and how their reads are named in the access log
(services/cli/personal.py): every topic of the registry decided, the tail's filters, the command kept."""

from __future__ import annotations

from pathlib import Path

from contracts.sources import SOURCE_MODELS
from contracts.topics import all_topics
from services.cli.personal import PERSONAL_TOPICS, READS, command_line, tail_reads_personal_data
from services.console.access import access_detail
from services.console.labels import ACCESS_LABELS, CHANNEL_LABELS
from services.runtime.ops import business_topics

CLI = Path(__file__).resolve().parents[2] / "services" / "cli"


def test_every_topic_carrying_a_patients_data_is_personal_and_the_others_are_named_as_not() -> None:
    """A topic whose payload has a patient's field (a new source kind) must be in PERSONAL_TOPICS, else `flows tail`
    of it would go unrecorded; and PERSONAL_TOPICS names only topics of the registry."""
    with_patients = {t.name for t in all_topics()
                     if any(f.startswith("patient_") for f in getattr(t.payload, "model_fields", {}))}
    assert with_patients == {f"sources.{kind}" for kind in SOURCE_MODELS}  # the scan works: each carries patient_cf
    assert with_patients <= PERSONAL_TOPICS
    assert PERSONAL_TOPICS <= {t.name for t in all_topics()}
    assert "sources.record-rejected" in PERSONAL_TOPICS  # its errors quote the refused values


def test_a_tail_reads_personal_data_when_a_source_topic_a_dlq_or_an_unknown_topic_can_show() -> None:
    every = business_topics()
    assert set(tail_reads_personal_data(every, None, None)) == PERSONAL_TOPICS
    assert tail_reads_personal_data(every, None, "sources.delivered") == ["sources.delivered-service"]
    # --instance: a source record has no instance, so none is shown; --type flows.: none of their types
    assert tail_reads_personal_data(every, 1947, None) == []
    assert tail_reads_personal_data(every, None, "flows.load") == []
    assert tail_reads_personal_data(["flows.load-checked", "audit.checkpoint", "sources.stored"], None, None) == []
    # a dead letter is a message as it was sent, of any type; a topic the registry does not know, anything
    assert tail_reads_personal_data(["flows.load-checked.dlq"], 1947, "flows.") == ["flows.load-checked.dlq"]
    assert tail_reads_personal_data(["cup.prenotazioni"], 1947, "x") == ["cup.prenotazioni"]


def test_the_command_is_kept_as_typed_without_the_options_left_out() -> None:
    assert command_line("tail", "sources.delivered-service", instance=None, ente="201", type=None,
                        from_beginning=True, since=None, json=False, limit=5) == (
        "flows tail sources.delivered-service --ente 201 --from-beginning --limit 5")
    assert command_line("feedback", 1947, out=Path("/tmp/esiti del mese.csv")) == (
        "flows feedback 1947 --out '/tmp/esiti del mese.csv'")
    assert command_line("dlq", "list", pending=False) == "flows dlq list"


def test_a_reads_detail_names_what_was_read_and_the_command() -> None:
    assert access_detail({"file": "C1_150201_202610_1947.txt", "ente": "201", "command": "flows files 1947 --view "
                          "C1_150201_202610_1947.txt"}) == (
        "C1_150201_202610_1947.txt; ente 201; flows files 1947 --view C1_150201_202610_1947.txt")
    assert access_detail({"dead_letter": "sources.delivered-service.dlq:0:3", "topic": "sources.delivered-service",
                          "via": None}) == "sources.delivered-service.dlq:0:3; topic sources.delivered-service"
    assert access_detail({"file": "C2.txt", "via": "api"}) == "C2.txt; via api"


def test_every_kind_of_read_a_command_records_has_an_italian_label_and_is_used() -> None:
    """The auditor's page shows a read by its Italian name (ACCESS_LABELS), a command's as well as a page's; record_read
    refuses a kind not in READS, and each of READS is recorded by some command."""
    assert set(READS) <= set(ACCESS_LABELS), set(READS) - set(ACCESS_LABELS)
    source = "\n".join(p.read_text(encoding="utf-8") for p in CLI.glob("*.py") if p.name != "personal.py")
    assert {kind for kind in READS if f'"{kind}"' in source} == set(READS)
    assert set(CHANNEL_LABELS) == {"console", "cli"}
