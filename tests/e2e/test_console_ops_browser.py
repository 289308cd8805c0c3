"""The console's ops page in real Chromium, on the real Kafka and PostgreSQL: a message a real consumer
cannot process is dead-lettered, seen on the page (per .dlq topic, then listed, then shown with its
reason, headers and body), redriven from the page once its cause is fixed (the consumer then processes
it, under a new ce id, and the decision names the user), and a second redrive from a page opened
before is refused with an Italian message. The consumer's group and its lag are on the page. An
auditor reads the same page without the actions. Every view of a message's body is in the access log.
axe-core on every page.
"""

from __future__ import annotations

import asyncio
import html
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from axe_playwright_python.async_playwright import Axe
from pydantic import BaseModel, Field

from contracts.deadlines import italian_time
from contracts.envelope import Envelope
from contracts.topics import Topic
from services.runtime import deadletters as dl
from services.runtime import outbox
from services.runtime.broker import Incoming, consume, create_broker
from services.runtime.eventstore import NewEvent
from services.runtime.outbox import OutboxRelay
from tests.console_support import browser_of, csrf_of, italian_context, running_console
from tests.e2e.test_console_browser import _axe_clean, _log_in
from tests.integration.test_dlq_cli import processed_behind
from tests.kafka_topics import create_topics
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e


class Filing(BaseModel):
    source_id: str
    pages: int = Field(ge=1)


async def test_a_poison_message_is_seen_and_redriven_once_from_the_ops_page(settings, fresh_db, tmp_path, chromium):  # type: ignore[no-untyped-def]
    topic = Topic(f"test.filing-{uuid.uuid4().hex[:8]}", Filing, "source_id", "probe", ("test",))
    group = f"ops-page-{topic.name}"
    archive = {"fine"}  # the cause: the handler needs an archive entry that is missing
    processed: list[tuple[str, Incoming]] = []

    async def handler(payload: Filing, incoming: Incoming) -> None:
        if payload.source_id not in archive:
            raise RuntimeError(f"no archive entry for {payload.source_id}")
        processed.append((payload.source_id, incoming))

    broker = create_broker(settings, client_id="ops-page-test")
    consume(broker, topic, group_id=group, handler=handler, max_attempts=2, retry_delay=0.01)
    await create_topics(KAFKA, topic.name, topic.dlq)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True)
    stopped = False
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await console.add_users()
        relay = OutboxRelay(console.pool, KAFKA, poll_interval=0.5)  # a service's relay publishes the redrive
        stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(stop))
        await broker.start()
        await producer.start()
        try:
            poison = Envelope.new(topic.name, "/test")
            await producer.send_and_wait(topic.name, b'{"source_id": "missing", "pages": 3}', key=b"missing",
                                         headers=poison.to_headers())
            await producer.send_and_wait(topic.name, b'{"source_id": "fine", "pages": 1}', key=b"fine",
                                         headers=Envelope.new(topic.name, "/test").to_headers())
            async with asyncio.timeout(30):
                while not (letters := await dl.list_letters(KAFKA, topic.name)) or not processed:
                    await asyncio.sleep(0.3)
            (letter,) = letters
            assert [source for source, _ in processed] == ["fine"]  # the poison did not block the partition

            axe = Axe()
            page = await (await italian_context(browser)).new_page()
            await _log_in(page, console.url, "ops.1")
            await page.goto(console.url + "/esercizio")
            row = page.locator("#code-dlq tr", has_text=topic.dlq)
            assert (await row.locator("td").all_inner_texts())[1:] == ["1", "1"]  # one letter, pending
            # The consumer's group committed past both messages: it is on the page, with no lag, and its member
            group_row = page.locator("#gruppi tr", has_text=group)
            cells = await group_row.locator("td").all_inner_texts()
            assert cells[1] == "attivo" and cells[2].startswith("ops-page-test@") and cells[4] == "0", cells
            await _axe_clean(page, axe, "20-esercizio")

            await row.locator("a").click()
            await page.wait_for_url(f"**/esercizio/scarti?coda={topic.dlq}")
            listed = page.locator("tr.scarto")
            assert await listed.count() == 1
            assert "processing failed 2 times: RuntimeError: no archive entry for missing" in \
                await listed.inner_text()
            await _axe_clean(page, axe, "21-scarti")
            await listed.locator("a").click()
            await page.wait_for_selector("#motivo-scarto")
            assert "no archive entry for missing" in await page.inner_text("#motivo-scarto")
            assert poison.id in await page.inner_text("#intestazioni")
            assert '"source_id": "missing"' in await page.inner_text("#contenuto-scarto")
            assert await page.inner_text("#stato-scarto") == "da decidere"
            await _axe_clean(page, axe, "22-scarto")

            # A second operator's page, opened before the redrive: its button is stale.
            stale = await page.context.new_page()
            await stale.goto(page.url)

            archive.add("missing")  # the cause is fixed; redrive from the page
            async with page.expect_navigation():
                await page.click("#rilancia")
            assert (await page.inner_text("#stato-scarto")).startswith("rilanciato da ops.1 il ")
            assert await page.locator("#rilancia").count() == 0
            async with asyncio.timeout(20):
                while not any(source == "missing" for source, _ in processed):
                    await asyncio.sleep(0.1)
            redriven = next(incoming for source, incoming in processed if source == "missing")
            assert redriven.key == "missing" and redriven.message_id != poison.id
            assert redriven.message_id in await page.inner_text("#stato-scarto")

            response = None
            async with stale.expect_navigation() as navigation:
                await stale.click("#rilancia")
            response = await navigation.value
            assert response is not None and response.status == 409
            refusal = await stale.inner_text("#esito")
            assert f"Il messaggio {letter.id} è già stato rilanciato da ops.1 il " in refusal, refusal
            assert "si rilancia o si scarta una volta sola" in refusal
            await _axe_clean(stale, axe, "23-scarto-rifiutato")

            await asyncio.sleep(1.5)  # nothing loops: processed once, nothing dead-lettered again
            # ... and the consumer ran through that time: a message sent after it, on the redriven one's partition, is
            # processed behind it (without it a starved loop made the window empty, and the check could not fail)
            await processed_behind(producer, topic.name, archive, processed)
            assert [source for source, _ in processed] == ["fine", "missing", "later"]
            assert len(await dl.list_letters(KAFKA, topic.name)) == 1
            decision = await dl.decision_about(console.store, letter.id)
            assert decision is not None and decision.type == dl.REDRIVEN and decision.actor == "ops.1"
            assert decision.data["new_id"] == redriven.message_id
            # Showing a message's body is a view of personal data: each one is in the access log.
            views = await console.pool.fetch("SELECT data FROM events WHERE stream_id LIKE 'access-%' "
                                             "AND actor = 'ops.1' AND data->>'what' = 'dead-letter-view'")
            assert len(views) >= 3 and {v["data"]["dead_letter"] for v in views} == {letter.id}

            # The auditor reads the same, without the actions.
            async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
                assert (await console.login(client, "aud.1")).status_code == 303
                shown = await client.get(f"{console.url}/esercizio/scarti/{letter.id}")
                assert shown.status_code == 200 and "rilanciato da ops.1" in shown.text
                assert 'id="rilancia"' not in shown.text and "/scarta" not in shown.text

            # Its service stopped, the group keeps its offsets and has no member: the page says nobody consumes
            await broker.stop()
            stopped = True
            await page.goto(console.url + "/esercizio")
            cells = await page.locator("#gruppi tr", has_text=group).locator("td").all_inner_texts()
            assert cells[1].startswith("senza membri") and "nessun membro attivo" in cells[1], cells
            assert cells[2] == "nessuno" and cells[4] == "0", cells
            await _axe_clean(page, axe, "24-esercizio-gruppo-fermo")
        finally:
            await browser.close()
            stop.set()
            await relay_task
            await producer.stop()
            if not stopped:
                await broker.stop()


async def test_a_dead_letter_discarded_from_the_page_names_its_reason_and_cannot_be_redriven(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path):
    """Over HTTP: the discard needs a reason (422 without, nothing recorded), is recorded with the user as
    actor and the reason, and a redrive afterwards is refused in Italian naming the discard."""
    topic = f"test.discard-{uuid.uuid4().hex[:8]}"
    await create_topics(KAFKA, topic, topic + ".dlq")
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic + ".dlq", b'{"pages": 0}', key=b"k1",
                                            headers=[("dlq_reason", b"pages: must be >= 1"),
                                                     ("dlq_original_topic", topic.encode())])
    finally:
        await producer.stop()
    letter_id = f"{topic}.dlq:{meta.partition}:{meta.offset}"
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console:
        await console.add_users()
        async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
            assert (await console.login(client, "ops.1")).status_code == 303
            shown = await client.get(f"{console.url}/esercizio/scarti/{letter_id}")
            assert shown.status_code == 200 and "pages: must be &gt;= 1" in shown.text
            csrf = csrf_of(shown.text)
            url = f"{console.url}/esercizio/scarti/{letter_id}"
            empty = await client.post(url + "/scarta", data={"csrf": csrf, "motivo": "  "})
            assert empty.status_code == 422 and "Indichi il motivo" in empty.text
            assert await dl.decision_about(console.store, letter_id) is None
            done = await client.post(url + "/scarta", data={"csrf": csrf, "motivo": "dati di prova"})
            assert done.status_code == 303
            decision = await dl.decision_about(console.store, letter_id)
            assert decision is not None and decision.type == dl.DISCARDED and decision.actor == "ops.1"
            assert decision.data["reason"] == "dati di prova"
            page = await client.get(url)
            assert "scartato da ops.1" in page.text and "motivo: dati di prova" in page.text
            refused = await client.post(url + "/rilancia", data={"csrf": csrf})
            assert refused.status_code == 409
            assert f"Il messaggio {letter_id} è già stato scartato da ops.1 il " in html.unescape(refused.text)


async def test_the_parked_outbox_rows_are_on_the_ops_page_with_the_commands_to_run(fresh_db, tmp_path, chromium):  # type: ignore[no-untyped-def]
    """A row the real relay parked (a topic name Kafka refuses) is on the ops page, with how many, the oldest, its
    key, topic, reason, since when and the `flows outbox` commands to run; the auditor reads it too, the other roles
    have no ops page at all (404, no menu entry). Once the row is skipped, the page says nothing is stuck. axe-core:
    no violation at all on the page with the row."""
    topic = f"test.parked-page-{uuid.uuid4().hex[:8]}"
    await create_topics(KAFKA, topic)
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await console.add_users()
        for key in ("8101", "8102"):
            for n in range(2):
                await console.store.append(f"instance-{key}", [NewEvent(topic, {"n": n})], expected_version=n,
                                           key=key)
        first = await console.pool.fetchval("SELECT min(id) FROM outbox WHERE key = '8101'")
        await console.pool.execute("UPDATE outbox SET topic = 'not a valid topic name!' WHERE id = $1", first)
        relay = OutboxRelay(console.pool, KAFKA, poll_interval=0.2)
        stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(stop))
        try:
            async with asyncio.timeout(30):  # parked, and the other stream sent
                while not await outbox.parked_rows(console.pool) or await console.pool.fetchval(
                        "SELECT count(*) FROM outbox WHERE published_at IS NULL") != 2:
                    await asyncio.sleep(0.05)
            [row] = await outbox.parked_rows(console.pool)
            since = italian_time(row["parked_at"], "%d/%m/%Y %H:%M:%S")

            axe = Axe()
            page = await (await italian_context(browser)).new_page()
            await _log_in(page, console.url, "ops.1")
            await page.goto(console.url + "/esercizio")
            summary = " ".join((await page.inner_text("#eventi-fermi-riepilogo")).split())
            assert summary.startswith(f"1 evento fermo dal {since}. Un evento fermo è stato rifiutato da Kafka"), \
                summary
            cells = await page.locator("#righe-ferme tr.riga-ferma td").all_inner_texts()
            assert cells[:5] == [str(first), "8101", "not a valid topic name!", since, "1"], cells
            assert cells[5] == row["parked_reason"] and "InvalidTopicError" in cells[5], cells
            assert cells[6].split("\n") == [f"flows outbox show {first}", f"flows outbox retry {first}",
                                            f'flows outbox skip {first} --reason "..."'], cells
            assert "flows outbox retry RIGA" in await page.inner_text("#eventi-fermi-comandi")
            assert await page.locator("#righe-ferme form, #righe-ferme button").count() == 0  # the actions: the CLI's
            await _axe_clean(page, axe, "24-esercizio-eventi-fermi")
            every = (await axe.run(page)).response["violations"]
            assert every == [], [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in every]

            # The auditor reads the same; the roles without the ops page see nothing of it
            async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
                assert (await console.login(client, "aud.1")).status_code == 303
                shown = await client.get(f"{console.url}/esercizio")
                assert shown.status_code == 200 and f"flows outbox retry {first}" in shown.text
            for user in ("op.201", "adm.1", "desk.1", "st.1"):
                async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
                    assert (await console.login(client, user)).status_code == 303
                    refused = await client.get(f"{console.url}/esercizio")
                    assert refused.status_code == 404, (user, refused.status_code)  # the guard's: no such page
                    assert "not a valid topic name" not in refused.text and "flows outbox" not in refused.text
                    home = await client.get(f"{console.url}/")
                    assert 'href="/esercizio"' not in home.text, user

            await outbox.skip_parked(console.pool, first, reason="test: a typo in the topic", by="ops.test")
            await page.reload()
            assert await page.inner_text("#eventi-fermi-riepilogo") == \
                "Nessun evento fermo: l'outbox non ha righe che Kafka abbia rifiutato."
            assert await page.locator("#righe-ferme").count() == 0
            await _axe_clean(page, axe, "25-esercizio-nessun-evento-fermo")
        finally:
            await browser.close()
            stop.set()
            await relay_task
