"""Before a 730 goes to Sistema TS, the operator is told which of its documents TS already has from another instance
(services.ts_gateway.overlap): on the console's send page, and by `flows send-730`."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from contracts import flows
from contracts.deadlines import italian_today
from services.runtime.kafkaread import assign, observer
from services.ts_gateway.overlap import SentAlready, sent_already
from services.ts_gateway.payment_year import last_day_for, payment_years
from services.ts_gateway.sealing import PUBLIC_KEY_FILE, Credentials, ensure_gateway_keypair, seal
from tests.console_support import RunningConsole, csrf_of
from tests.stack_urls import KAFKA

AUGUST, AUTUMN, JANUARY = ("2026-08-01", "2026-08-31"), ("2026-08-01", "2026-12-31"), ("2027-01-01", "2027-01-31")
PROTOCOLLO_A, PROTOCOLLO_A2 = "26091012000000001", "26091012000000002"


async def payment_documents(pool: Any, snapshot: int, ente: str, numbers: list[str], paid: date | None = None) -> None:
    """The payment documents `numbers` in `snapshot` (issuer, day and device the same: the number tells them
    apart), as the loader's snapshot of a 730 holds them, issued and paid on `paid`: by default today in Italy, a
    day Sistema TS takes them on (services.ts_gateway.payment_year), so that no test of something else is warned of
    their year whenever it runs."""
    paid = paid or italian_today()
    await pool.executemany(
        "INSERT INTO snapshot_payment_document (snapshot_id, source_id, revision, schema_version, ente, "
        "structure_sts11, issuer_vat, issue_date, device, document_number, payment_date, traced_payment, "
        "document_kind, patient_cf, patient_objection, items) "
        "VALUES ($1, $2, 1, 1, $3, '000123', '03213213210', $4, 1, $5, $4, true, 'F', NULL, false, $6)",
        [(snapshot, f"CUP-{snapshot}-{n}", ente, paid, n, json.dumps([{"spending_type": "SR"}]))
         for n in numbers])


async def ledger_part(pool: Any, instance: int, part: int, state: str, protocollo: str | None) -> None:
    """The gateway's ledger row of a part of `instance` TS answered (state, protocollo as TS gave it)."""
    await pool.execute(
        "INSERT INTO ts_submission_part (instance, part, zip_sha256, parts, file_name, documents, state, protocollo) "
        "VALUES ($1, $2, $3, 2, $4, 1, $5, $6)", instance, part, f"{instance * 10 + part:064x}",
        f"730_{instance}_p{part}.zip", state, protocollo)


async def _formatted_730(console: RunningConsole, ente: str, period: tuple[str, str], numbers: list[str],
                         paid: date | None = None) -> int:
    """A Formatted 730 instance of `ente` whose snapshot holds the payment documents `numbers` (paid on `paid`)."""
    snapshot = int(await console.pool.fetchval("SELECT nextval('flow_instance_seq')"))
    zipped = console.file_ref(f"730_{ente}_{snapshot}.zip", "730-zip", b"PK zip", len(numbers), "application/zip")
    instance = await console.instance(ente, [("flows.load-checked", {"source_instance": snapshot, "counts": {}}),
                                             ("flows.formatting-started", {}),
                                             ("flows.formatted", {"files": [zipped]})],
                                      flow_type="FLUSSO_730", period=period)
    await payment_documents(console.pool, snapshot, ente, numbers, paid)
    return instance


async def _sent(console: RunningConsole, instance: int, part: int, state: str, protocollo: str | None) -> None:
    await ledger_part(console.pool, instance, part, state, protocollo)


async def _send_page(console: RunningConsole, instance: int) -> Any:
    async with console.client("operator") as client:
        return await client.get(f"{console.url}/istanze/{instance}/invia-ts")


async def test_the_send_page_names_the_instances_ts_accepted_that_hold_documents_of_this_one(
        console: RunningConsole) -> None:
    ensure_gateway_keypair(console.settings.keys_dir)
    sent_august = await _formatted_730(console, "201", AUGUST, ["A1", "A2", "A3"])
    await _sent(console, sent_august, 1, "confirmed", PROTOCOLLO_A)
    await _sent(console, sent_august, 2, "confirmed_with_errors", PROTOCOLLO_A2)
    refused = await _formatted_730(console, "201", AUGUST, ["A1", "A4"])  # TS refused its file: it has none of it
    await _sent(console, refused, 1, "rejected", None)
    january = await _formatted_730(console, "201", JANUARY, ["A2"])  # a period after: not compared
    await _sent(console, january, 1, "confirmed", "27021012000000003")
    elsewhere = await _formatted_730(console, "202", AUGUST, ["A3"])  # another entity
    await _sent(console, elsewhere, 1, "confirmed", "26091012000000004")
    autumn = await _formatted_730(console, "201", AUTUMN, ["A2", "A3", "A4", "A5"])

    assert await sent_already(console.pool, autumn) == [SentAlready(sent_august, 2, (PROTOCOLLO_A, PROTOCOLLO_A2))]
    # the other way round: nothing of the instances TS accepted is in one it never accepted a file of
    assert await sent_already(console.pool, sent_august) == []
    page = await _send_page(console, autumn)
    assert page.status_code == 200, page.text
    assert ("Sistema TS ha già ricevuto documenti di spesa di questa istanza: 2 documenti con l&#39;istanza "
            f"{sent_august} (protocolli {PROTOCOLLO_A}, {PROTOCOLLO_A2})") in page.text
    assert 'id="invia-ts"' in page.text  # said, not refused: the form is there
    quiet = await _send_page(console, sent_august)
    assert quiet.status_code == 200 and 'id="ts-gia-inviati"' not in quiet.text


async def test_the_send_page_says_which_documents_ts_refuses_for_their_payment_year_if_sent_today(
        console: RunningConsole) -> None:
    """Documents paid in 2020 and 2021 sent today (2026 or later): TS takes a payment only in its year and in the
    January after (ws-asincrono-spec-v2.5, dataPagamento), so each is refused; the page says how many of each year,
    and that the days that would have taken them all are past."""
    ensure_gateway_keypair(console.settings.keys_dir)
    late = await _formatted_730(console, "201", AUGUST, ["L1", "L2"], paid=date(2020, 12, 30))
    snapshot = int(await console.pool.fetchval("SELECT source_instance FROM instance_list WHERE instance = $1", late))
    await payment_documents(console.pool, snapshot, "201", ["L3"], paid=date(2021, 1, 4))
    assert await payment_years(console.pool, late) == {2020: 2, 2021: 1}
    page = await _send_page(console, late)
    assert page.status_code == 200, page.text
    today = italian_today()
    assert ("Sistema TS accetta un documento di spesa solo nell&#39;anno del pagamento e, per i pagamenti "
            "dell&#39;anno precedente, nel mese di gennaio (fino alla scadenza del 730, se spostata al primo giorno "
            f"lavorativo). Trasmessi il {today:%d/%m/%Y}, saranno scartati 2 "
            "documenti pagati nel 2020 e 1 documento pagato nel 2021; tutti sarebbero stati accettati solo se "
            "trasmessi dal 01/01/2021 al 31/01/2021, un periodo già passato.") in page.text
    assert 'id="invia-ts"' in page.text  # said, not refused: the form is there
    current = await _formatted_730(console, "201", AUGUST, ["C1"])  # paid today: taken today
    assert await payment_years(console.pool, current) == {today.year: 1}
    quiet = await _send_page(console, current)
    assert quiet.status_code == 200 and 'id="ts-anno-pagamento"' not in quiet.text


async def _requests_carrying(box: str, since: dict[Any, int]) -> int:
    """How many `flows.ts-submission-requested` commands published after the offsets `since` carry the sealed `box`."""
    async with observer(KAFKA) as consumer:
        parts = list(since)
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            consumer.seek(tp, since[tp])
        found = 0
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found += sum(json.loads(r.value)["sealed_credentials"] == box for r in records)
        return found


async def test_a_later_transmission_date_ts_refuses_the_documents_on_is_warned_of_before_anything_is_sent(
        console: RunningConsole) -> None:
    """The page warns of the payment years for today; a later day chosen in its form is asked again, as `flows
    send-730` asks of a typed date. Documents paid today, sent on 1 March of next year (after the January TS still
    takes them in, up to the 730's deadline): nothing is sent until the form comes back with the warning of that very
    day seen."""
    ensure_gateway_keypair(console.settings.keys_dir)
    today = italian_today()
    instance = await _formatted_730(console, "201", AUGUST, ["F1", "F2"])  # paid today
    later = date(today.year + 1, 3, 1)
    box = seal((console.settings.keys_dir / PUBLIC_KEY_FILE).read_bytes(),
               Credentials(user="u1", password="p1", pincode="42", cf_proprietario="RSSMRA80A01H501U"))
    topic = flows.TYPE_OF[flows.TsSubmissionRequested]
    async with observer(KAFKA) as consumer:
        since = await consumer.end_offsets(await assign(consumer, [topic]))
    assert since, f"no topic {topic} on the stack"
    async with console.client("operator") as client:
        form = await client.get(f"{console.url}/istanze/{instance}/invia-ts")
        assert form.status_code == 200 and 'id="ts-anno-pagamento"' not in form.text  # today: taken
        # the form seals the credentials with JavaScript: a browser without it is told so, and of the CLI
        assert "<noscript>" in form.text and "<code>flows send-730</code>" in form.text
        post = {"csrf": csrf_of(form.text), "sigillo": box, "data": later.isoformat()}
        asked = await client.post(f"{console.url}/istanze/{instance}/invia-ts", data=post)
        assert asked.status_code == 409, asked.text
        # the days still to come that take them all: from today to the end of the January after
        assert (f"Trasmessi il {later:%d/%m/%Y}, saranno scartati 2 documenti pagati nel {today.year}; tutti sono "
                f"accettati se trasmessi dal {today:%d/%m/%Y} al {last_day_for(today.year):%d/%m/%Y}.") in asked.text
        assert 'id="ts-conferma-anno"' in asked.text and "Nulla è stato inviato" in asked.text
        assert f'name="anno-confermato" value="{later.isoformat()}"' in asked.text
        assert f'name="data" type="date" class="form-control" value="{later.isoformat()}"' in asked.text
        # the warning of another day does not stand for this one
        other = await client.post(f"{console.url}/istanze/{instance}/invia-ts",
                                  data={**post, "anno-confermato": date(today.year + 1, 3, 2).isoformat()})
        assert other.status_code == 409, other.text
        sent = await client.post(f"{console.url}/istanze/{instance}/invia-ts",
                                 data={**post, "anno-confermato": later.isoformat()})
        assert sent.status_code == 303, sent.text
    assert await _requests_carrying(box, since) == 1  # the confirmed post alone
