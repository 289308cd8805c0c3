"""The TS gateway against the TS simulator over real HTTP on loopback, with the ledger in PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from services.runtime.db import create_pool
from services.runtime.sanitel import parse_certificate
from services.ts_gateway.client import (
    TsAuthError,
    TsClient,
    TsClientSettings,
    TsEndpoints,
    TsIntakeRejected,
    TsUnavailable,
    ZipTooLarge,
)
from services.ts_gateway.ledger import PgPartLedger
from services.ts_gateway.receipts import feedback_csv
from services.ts_gateway.sample import sample_730_xml, sample_730_zip, zip_one
from services.ts_gateway.sealing import Credentials
from services.ts_gateway.simulator import TsSimulator
from services.ts_gateway.simulator_rules import SimUser
from services.ts_gateway.submission import (
    BackoffSchedule,
    PartKey,
    PartState,
    SubmissionPart,
    file_name_for,
    instance_outcome,
)
from services.ts_gateway.submitter import SubmissionRunner
from tests.unit.test_ts_ledger import check_ledger_contract

pytestmark = pytest.mark.integration

ROSSI = Credentials(
    user="CANARYUSER0TS0X", password="Canary-Password-42!", pincode="9876543210", cf_proprietario="CNRCNR80A01F839X"
)
FAST = BackoffSchedule(initial=0.01, factor=2.0, cap=0.05)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def simulator() -> AsyncIterator[tuple[TsSimulator, str]]:
    sim = TsSimulator([SimUser.from_clear(*ROSSI.secrets())])
    url = await sim.start("127.0.0.1", 0)
    yield sim, url
    await sim.stop()


async def _admin(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        if body is None and path.endswith("submissions"):
            async with http.get(url + path) as response:
                return dict(await response.json())
        async with http.post(url + path, json=body or {}) as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())


@pytest_asyncio.fixture(loop_scope="session")
async def ts(simulator: tuple[TsSimulator, str]) -> AsyncIterator[tuple[TsClient, str, Any]]:
    sim, url = simulator
    await _admin(url, "/__sim/reset")
    settings = TsClientSettings(endpoints=TsEndpoints(url), query_backoff=FAST, request_timeout_s=5.0)
    cert = parse_certificate(sim.cert_pem)
    async with TsClient(settings, cert) as client:
        yield client, url, cert


@pytest_asyncio.fixture(loop_scope="session")
async def ledger(fresh_db: str) -> AsyncIterator[PgPartLedger]:
    pool = await create_pool(fresh_db, min_size=1, max_size=4)
    try:
        yield PgPartLedger(pool)
    finally:
        await pool.close()


async def _one_part(ledger: PgPartLedger, zip_bytes: bytes, documents: int, instance: int = 1947) -> PartKey:
    import hashlib

    sha = hashlib.sha256(zip_bytes).hexdigest()
    part = SubmissionPart(PartKey(instance, 1, sha), 1, file_name_for(instance, 1, sha), documents)
    [registered] = await ledger.register([part])
    return registered.key


def _runner(ledger: PgPartLedger, client: TsClient) -> SubmissionRunner:
    return SubmissionRunner(ledger, client, send_retry=FAST, poll_schedule=FAST, max_polls=20)


async def _sends(url: str) -> int:
    return len((await _admin(url, "/__sim/submissions"))["submissions"])


async def test_the_pg_ledger_keeps_the_contract(ledger: PgPartLedger) -> None:
    await check_ledger_contract(ledger)


async def test_happy_path_sends_once_polls_and_ends_confirmed(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    await _admin(url, "/__sim/behaviour", {"polls_in_progress": 2})
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario, documents=3)
    key = await _one_part(ledger, zip_bytes, 3)
    runner = _runner(ledger, client)

    submitted = await runner.send_with_retry(ROSSI, key, zip_bytes)
    assert submitted.state is PartState.WAITING_FEEDBACK and len(submitted.protocollo or "") == 17
    feedback = await runner.poll_part(ROSSI, key)

    assert (feedback.part.state, feedback.part.stato, feedback.errors) == (PartState.CONFIRMED, 2, [])
    assert instance_outcome([feedback.part.state]) is PartState.CONFIRMED
    assert await _sends(url) == 1
    listed = (await _admin(url, "/__sim/submissions"))["submissions"][0]
    assert listed["polls"] == 3 and listed["documents"] == 3 and listed["file_name"] == submitted.file_name
    assert (await client.ricevuta_pdf(ROSSI, submitted.protocollo or "")).startswith(b"%PDF")


async def test_a_wrong_pincode_is_refused_at_intake_with_code_104(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario)
    wrong = Credentials(ROSSI.user, ROSSI.password, "0000000000", ROSSI.cf_proprietario)
    with pytest.raises(TsIntakeRejected) as refused:
        await client.invia_file(wrong, "730_1947_p1_wrongpin.zip", zip_bytes)
    assert (refused.value.code, refused.value.description) == ("104", "PINCODE ERRATO")

    key = await _one_part(ledger, zip_bytes, 3)
    part = await _runner(ledger, client).send_with_retry(wrong, key, zip_bytes)
    assert (part.state, part.reason, part.protocollo) == (PartState.REJECTED, "104 PINCODE ERRATO", None)
    assert await _sends(url) == 0


async def test_a_zip_over_5_mb_is_refused_before_sending_and_by_ts_too(ts) -> None:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    # a real 730 (TS would read its proprietario), stored uncompressed so the zip passes 5 MB
    huge = zip_one(sample_730_xml(cert, ROSSI.cf_proprietario, documents=1, padding_documents=12_000),
                   compress=False)
    assert len(huge) > 5 * 1024 * 1024
    with pytest.raises(ZipTooLarge, match="not sent") as refused:
        await client.invia_file(ROSSI, "730_1947_p1_huge.zip", huge)
    assert refused.value.code == "108"
    assert (await _admin(url, "/__sim/submissions"))["intake_calls"] == 0

    unguarded = TsClient(TsClientSettings(endpoints=TsEndpoints(url), enforce_size_limit=False), cert)
    async with unguarded:
        with pytest.raises(TsIntakeRejected) as at_ts:
            await unguarded.invia_file(ROSSI, "730_1947_p1_huge.zip", huge)
    assert at_ts.value.code == "108"
    assert await _sends(url) == 0


async def test_ts_answering_500_twice_is_retried_until_it_recovers(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario)
    key = await _one_part(ledger, zip_bytes, 3)
    await _admin(url, "/__sim/behaviour", {"fail_next": 2, "operations": ["inviaFileMtom"]})

    part = await _runner(ledger, client).send_with_retry(ROSSI, key, zip_bytes)

    assert part.state is PartState.WAITING_FEEDBACK and part.attempts == 3
    assert await _sends(url) == 1  # each retry asked EsitoInvii first and found nothing to adopt

    await _admin(url, "/__sim/behaviour", {"fail_next": 2, "operations": ["EsitoInvii"], "polls_in_progress": 0})
    status = await client.esito_invii(ROSSI, part.protocollo or "")  # the client's own query retry
    assert status.stato == 2


async def test_stato_3_brings_the_per_document_errors_as_rows(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    await _admin(url, "/__sim/behaviour", {"error_documents": ["DOC-2", "DOC-4"], "polls_in_progress": 1})
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario, documents=5)
    key = await _one_part(ledger, zip_bytes, 5)
    runner = _runner(ledger, client)
    await runner.send_with_retry(ROSSI, key, zip_bytes)

    feedback = await runner.poll_part(ROSSI, key)

    assert (feedback.part.state, feedback.part.stato) == (PartState.CONFIRMED_WITH_ERRORS, 3)
    assert [e.numero_documento for e in feedback.errors] == ["DOC-2", "DOC-4"]
    assert {e.codice_errore for e in feedback.errors} == {"SIM02"}
    assert feedback_csv(feedback.errors).count(b"\r\n") == 3
    status = await client.esito_invii(ROSSI, feedback.part.protocollo or "")
    assert (status.n_inviati, status.n_accolti, status.n_errori) == (5, 3, 2)


async def test_a_gateway_killed_after_sending_does_not_send_twice_on_restart(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario, documents=4)
    key = await _one_part(ledger, zip_bytes, 4)
    # The first life: "sending" recorded, TS accepted the file, then the process died.
    part = await ledger.begin_sending(key)
    receipt = await client.invia_file(ROSSI, part.file_name, zip_bytes)
    assert await _sends(url) == 1

    restarted = _runner(ledger, client)
    recovered = await restarted.send_with_retry(ROSSI, key, zip_bytes)

    assert recovered.state is PartState.WAITING_FEEDBACK and recovered.protocollo == receipt.protocollo
    assert await _sends(url) == 1
    assert (await restarted.send_with_retry(ROSSI, key, zip_bytes)).protocollo == receipt.protocollo
    assert await _sends(url) == 1


async def test_a_gateway_killed_before_ts_saw_the_file_sends_it_on_restart(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario, documents=2)
    key = await _one_part(ledger, zip_bytes, 2)
    await ledger.begin_sending(key)  # died before the HTTP call

    part = await _runner(ledger, client).send_with_retry(ROSSI, key, zip_bytes)

    assert part.state is PartState.WAITING_FEEDBACK and part.attempts == 2
    assert await _sends(url) == 1


async def test_a_hanging_ts_is_reported_unavailable_after_the_timeout(ts) -> None:  # type: ignore[no-untyped-def]
    _, url, cert = ts
    await _admin(url, "/__sim/behaviour", {"hang": True, "operations": ["inviaFileMtom"]})
    impatient = TsClient(TsClientSettings(endpoints=TsEndpoints(url), request_timeout_s=0.5), cert)
    async with impatient:
        with pytest.raises(TsUnavailable, match="timeout"):
            await impatient.invia_file(ROSSI, "730_1947_p1_hang.zip", sample_730_zip(cert, ROSSI.cf_proprietario))


async def test_a_wrong_password_is_an_auth_error_that_does_not_show_it(ts) -> None:  # type: ignore[no-untyped-def]
    client, _, cert = ts
    wrong = Credentials(ROSSI.user, "Wrong-Password-77", ROSSI.pincode, ROSSI.cf_proprietario)
    with pytest.raises(TsAuthError) as refused:
        await client.invia_file(wrong, "730_1947_p1_auth.zip", sample_730_zip(cert, ROSSI.cf_proprietario))
    assert all(secret not in str(refused.value) for secret in (*wrong.secrets(), *ROSSI.secrets()))


async def test_no_credential_reaches_the_ledger_or_the_simulator_listing(
    ts, ledger: PgPartLedger, fresh_db: str
) -> None:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario)
    key = await _one_part(ledger, zip_bytes, 3)
    wrong_pin = Credentials(ROSSI.user, ROSSI.password, "1111111111", ROSSI.cf_proprietario)
    await _runner(ledger, client).send_with_retry(wrong_pin, key, zip_bytes)
    conn = await asyncpg.connect(fresh_db)
    try:
        dump = str(await conn.fetch("SELECT * FROM ts_submission_part"))
    finally:
        await conn.close()
    listing = str(await _admin(url, "/__sim/submissions"))
    for secret in (*ROSSI.secrets(), wrong_pin.pincode):
        assert secret not in dump and secret not in listing


async def test_a_wrong_password_ends_the_part_rejected_with_the_reason_and_no_retry(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario)
    key = await _one_part(ledger, zip_bytes, 3)
    wrong = Credentials(ROSSI.user, "Wrong-Password-77", ROSSI.pincode, ROSSI.cf_proprietario)

    part = await _runner(ledger, client).send_with_retry(wrong, key, zip_bytes)

    assert (part.state, part.protocollo, part.attempts) == (PartState.REJECTED, None, 1)
    assert part.reason is not None and "HTTP 401" in part.reason and "user or password" in part.reason
    assert "Wrong-Password-77" not in part.reason
    assert (await _admin(url, "/__sim/submissions"))["intake_calls"] == 0  # refused before intake, once


async def test_a_failed_esitoinvii_during_recovery_never_leads_to_a_second_send(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    """A part left in "sending" after TS accepted it; on restart EsitoInvii fails (500s): the runner
    must not read that as "nothing received" and send again."""
    client, url, cert = ts
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario, documents=2)
    key = await _one_part(ledger, zip_bytes, 2)
    part = await ledger.begin_sending(key)
    receipt = await client.invia_file(ROSSI, part.file_name, zip_bytes)
    await _admin(url, "/__sim/behaviour", {"fail_next": 100, "operations": ["EsitoInvii"]})
    runner = SubmissionRunner(ledger, client, send_retry=FAST, send_attempts=2, poll_schedule=FAST, max_polls=2)

    with pytest.raises(TsUnavailable):
        await runner.send_with_retry(ROSSI, key, zip_bytes)
    assert await _sends(url) == 1
    assert (await ledger.get(key)).state is PartState.SENDING

    await _admin(url, "/__sim/behaviour", {})
    recovered = await runner.send_with_retry(ROSSI, key, zip_bytes)
    assert (recovered.state, recovered.protocollo) == (PartState.WAITING_FEEDBACK, receipt.protocollo)
    assert await _sends(url) == 1


@pytest.mark.parametrize("stato", [5, 9])
async def test_a_file_ts_discards_in_processing_ends_rejected_with_its_stato_and_reason(
        ts, ledger: PgPartLedger, stato: int) -> None:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    await _admin(url, "/__sim/behaviour", {"final_stato": stato, "polls_in_progress": 1})
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario, documents=2)
    key = await _one_part(ledger, zip_bytes, 2, instance=1950 + stato)
    runner = _runner(ledger, client)
    await runner.send_with_retry(ROSSI, key, zip_bytes)

    feedback = await runner.poll_part(ROSSI, key)

    assert (feedback.part.state, feedback.part.stato) == (PartState.REJECTED, stato)
    assert feedback.part.reason and "scartato" in feedback.part.reason.lower()
    assert instance_outcome([PartState.CONFIRMED, feedback.part.state]) is PartState.REJECTED


async def test_the_envelope_names_the_structure_of_the_file_and_ts_refuses_one_that_differs(ts) -> None:  # type: ignore[no-untyped-def]
    """datiProprietario (region, ASL, SSA) is mandatory for a structure; the client takes it from the
    file's own proprietario block, so it cannot disagree; a forged envelope gets TS's 109."""
    client, url, cert = ts
    from services.runtime.sanitel import encrypt_for_ts
    from services.ts_gateway import operations as ops
    from services.ts_gateway.soap import build_mtom

    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario)
    assert ops.proprietario_of_zip("x.zip", zip_bytes) == ops.Proprietario("150", "201", "000123")
    assert len((await client.invia_file(ROSSI, "730_1947_p1_owner.zip", zip_bytes)).protocollo) == 17

    forged = ops.build_invia_file("730_1947_p1_forged.zip", encrypt_for_ts(cert, ROSSI.pincode),
                                  ops.Proprietario("150", "999", "000123"),
                                  encrypt_for_ts(cert, ROSSI.cf_proprietario), "doc@forged")
    body, content_type = build_mtom(forged, {"doc@forged": zip_bytes})
    async with aiohttp.ClientSession() as http, http.post(
            url + ops.INVIO_PATH, data=body, headers={"Content-Type": content_type},
            auth=aiohttp.BasicAuth(ROSSI.user, ROSSI.password)) as answer:
        raw = await answer.read()
        answer_type = answer.headers.get("Content-Type", "")
    if answer_type.lower().startswith("multipart/related"):
        from services.ts_gateway.soap import parse_multipart

        raw = parse_multipart(raw, answer_type, "answer")[0].content
    receipt = ops.parse_invia_receipt(raw)
    assert not isinstance(receipt, ops.SoapFault) and receipt.codice_esito == "109", receipt
