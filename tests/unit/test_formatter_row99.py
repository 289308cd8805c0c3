from datetime import date

from services.formatter.chunks import ChunkFormatter
from services.formatter.columnar import ProblemLog
from services.formatter.fixedwidth import iter_table
from services.formatter.layouts import load_layout
from services.formatter.rules import net_total_cents, row_total_cents, ticket_position
from tests.unit.test_formatter_support import service, table

FLUSSO_C = load_layout("FLUSSO_C", "2020")


def c2_rows(rows: list[dict]) -> list[dict]:
    out = ChunkFormatter(FLUSSO_C, ProblemLog()).format(table(rows))
    return list(iter_table(FLUSSO_C, "C2", out.records["C2"].tobytes().splitlines()))


def test_row_99_total_is_never_negative() -> None:
    assert net_total_cents([100], ticket_cents=3615) == 0
    closing = c2_rows([service("RX1", 1, tariff=1.00, ticket=36.15)])[-1]
    assert closing["row_number"] == 99
    assert str(closing["total"]) == "0.00"
    assert str(closing["ticket"]) == "36.15"


def test_row_99_total_is_the_sum_of_rows_minus_the_ticket() -> None:
    assert net_total_cents([row_total_cents(1, 2066), row_total_cents(2, 310)], ticket_cents=1500) == 1186
    rows = c2_rows([service("RX1", 1, tariff=20.66, ticket=10.00),
                    service("RX1", 2, tariff=3.10, quantity=2, ticket=5.00)])
    assert [str(r["total"]) for r in rows] == ["20.66", "6.20", "11.86"]
    assert [str(r["ticket"]) for r in rows] == ["0.00", "0.00", "15.00"]


def test_row_99_carries_delivery_type_priority_and_exemption_and_rows_do_not() -> None:
    rows = c2_rows([service("RX1", 1, exemption_code="E01", priority="U"), service("RX1", 2, exemption_code="E01",
                                                                                     priority="U")])
    assert [(r["delivery_type"], r["priority"], r["exemption_code"]) for r in rows] == [
        ("", "", ""), ("", "", ""), ("S", "U", "E01")]
    assert rows[-1]["service_date"] is None and rows[-1]["service_code"] == "" and rows[-1]["quantity"] == 0
    assert {r["ticket_position"] for r in rows} == {ticket_position("E01")} == {"01"}


def test_every_prescription_ends_with_row_99() -> None:
    rows = c2_rows([service("RX1", 1), service("RX1", 2), service("RX2", 1), service("RX3", 1), service("RX3", 2),
                    service("RX3", 3)])
    assert [(r["id"], r["row_number"]) for r in rows] == [
        ("RX1", 1), ("RX1", 2), ("RX1", 99), ("RX2", 1), ("RX2", 99), ("RX3", 1), ("RX3", 2), ("RX3", 3), ("RX3", 99)]


def test_more_than_98_services_in_one_prescription_is_an_error() -> None:
    log = ProblemLog()
    ChunkFormatter(FLUSSO_C, log).format(table([service("BIG", i) for i in range(1, 100)]))
    assert {e.code for e in log.errors} == {"TOO_MANY_ROWS", "BAD_ROW_NUMBER"}
    assert [e.message for e in log.errors if e.record == "prescription_id BIG"] == [
        "99 prestazioni: al massimo 98 per prescription_id"]


def test_a_repeated_row_number_is_an_error() -> None:
    log = ProblemLog()
    ChunkFormatter(FLUSSO_C, log).format(table([service("RX1", 1), service("RX1", 1, source_id="CUP-DUP")]))
    assert [(e.code, e.record, e.message) for e in log.errors] == [
        ("BAD_ROW_NUMBER", "source_id CUP-DUP (prescription_id RX1 riga 01)",
         "il progressivo riga 1 si ripete o torna indietro nel suo gruppo")]


def test_c1_personal_data_repeats_on_row_99() -> None:
    rows = [service("RX1", 1, patient_birth_date=date(1950, 5, 17))]
    out = ChunkFormatter(FLUSSO_C, ProblemLog()).format(table(rows))
    c1 = list(iter_table(FLUSSO_C, "C1", out.records["C1"].tobytes().splitlines()))
    assert [(r["row_number"], r["surname"], r["birth_date"]) for r in c1] == [
        (1, "ESPOSITO", date(1950, 5, 17)), (99, "ESPOSITO", date(1950, 5, 17))]
