"""The TS gateway against the TS simulator over real HTTP on loopback, with the ledger in PostgreSQL.

The last tests drive the gateway's handlers (GatewayDeps over a real database, file store and key
folder) without Kafka: where the sealed box of a request lives, and when it goes; and what a REAL full
file store (tests/fault_disk.py: a small tmpfs) does to the feedback files the gateway keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from contracts import flows
from contracts.envelope import Envelope
from contracts.states import InstanceState
from services.runtime.broker import Incoming, Refused
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.filestore import FileStore
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream
from services.runtime.sanitel import parse_certificate
from services.ts_gateway import handlers, sealing
from services.ts_gateway import keys as gateway_keys
from services.ts_gateway.client import (
    TsAuthError,
    TsClient,
    TsClientSettings,
    TsEndpoints,
    TsIntakeRejected,
    TsQueryFailed,
    TsUnavailable,
    ZipTooLarge,
)
from services.ts_gateway.keys import GatewayKeys, rotate_gateway_key
from services.ts_gateway.ledger import PgPartLedger
from services.ts_gateway.receipts import feedback_csv
from services.ts_gateway.sealing import PUBLIC_KEY_FILE, Credentials, ensure_gateway_keypair, key_id, seal
from services.ts_gateway.submission import (
    BackoffSchedule,
    PartKey,
    PartState,
    SubmissionPart,
    file_name_for,
    instance_outcome,
)
from services.ts_gateway.submitter import SubmissionRunner
from simulators.sistema_ts.rules import SimUser
from simulators.sistema_ts.sample import sample_730_xml, sample_730_zip, zip_one
from simulators.sistema_ts.simulator import TsSimulator
from tests.fault_disk import SmallDisk, small_disk
from tests.log_capture import service_log_lines
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


async def test_one_protocol_queries_refuse_an_unknown_protocol_and_a_wrong_pincode(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    client, _, cert = ts
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario)
    submitted = await _runner(ledger, client).send_with_retry(ROSSI, await _one_part(ledger, zip_bytes, 1), zip_bytes)
    wrong_pin = Credentials(ROSSI.user, ROSSI.password, "0000000000", ROSSI.cf_proprietario)
    for ask in (client.ricevuta_pdf, client.dettaglio_errori_zip):
        with pytest.raises(TsQueryFailed) as unknown:
            await ask(ROSSI, "26999999999999999")
        assert (unknown.value.code, unknown.value.description) == ("WS01", "PROTOCOLLO NON TROVATO")
        with pytest.raises(TsQueryFailed) as refused:
            await ask(wrong_pin, submitted.protocollo or "")
        assert "PINCODE" in refused.value.description
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
    with pytest.raises(ZipTooLarge, match="superano il limite di 5242880 byte; non inviato") as refused:
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


async def test_a_voce_without_vat_rate_or_nature_is_a_document_error(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    """TS wants aliquotaIVA or naturaIVA in every voceSpesa paid from 2021 on: the simulator reports a document
    without them, the others of the file are accepted."""
    client, _, cert = ts
    xml = sample_730_xml(cert, ROSSI.cf_proprietario, documents=3)
    head, doc_2, tail = xml.partition(b"<numDocumento>DOC-2</numDocumento>")
    zip_bytes = zip_one(head + doc_2 + tail.replace(b"<naturaIVA>N4</naturaIVA>", b"", 1))  # DOC-2's only voce
    key = await _one_part(ledger, zip_bytes, 3)
    runner = _runner(ledger, client)
    await runner.send_with_retry(ROSSI, key, zip_bytes)

    feedback = await runner.poll_part(ROSSI, key)

    assert (feedback.part.state, feedback.part.stato) == (PartState.CONFIRMED_WITH_ERRORS, 3)
    assert [(e.numero_documento, e.codice_errore) for e in feedback.errors] == [("DOC-2", "SIM03")]


async def test_a_part_left_sending_after_ts_accepted_it_is_adopted_not_sent_twice(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    """The state a gateway killed after sending leaves (no process is killed here: the runner's recovery from
    that ledger state; the kill itself is tests/e2e/test_ts_730.py's)."""
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


async def test_a_part_left_sending_before_ts_saw_the_file_is_sent_on_restart(ts, ledger: PgPartLedger) -> None:  # type: ignore[no-untyped-def]
    """The state a gateway killed before its HTTP call leaves (no process is killed here: the runner's recovery)."""
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
    assert part.reason == ("Sistema TS ha rifiutato l'utente o la password (HTTP 401, inviaFileMtom): inviare di "
                           "nuovo l'istanza con le credenziali corrette")
    assert "Wrong-Password-77" not in part.reason
    assert (await _admin(url, "/__sim/submissions"))["intake_calls"] == 0  # refused before intake, once


async def test_a_password_basic_auth_cannot_carry_ends_the_part_rejected_and_never_shows_it(  # type: ignore[no-untyped-def]
        ts, ledger: PgPartLedger, caplog: pytest.LogCaptureFixture) -> None:
    """A password with a character outside Latin-1 (here the euro sign): aiohttp's Basic authentication raised
    UnicodeEncodeError naming the character and its position, an error the gateway did not foresee (logged, retried
    for ever). Now it is a refusal before any call, as a wrong password: the part ends Rejected with the reason, once,
    and neither the character nor the password is in the error, the reason or the log."""
    client, url, cert = ts
    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario)
    key = await _one_part(ledger, zip_bytes, 3)
    euro = Credentials(ROSSI.user, "Salve€Mondo-77", ROSSI.pincode, ROSSI.cf_proprietario)
    with pytest.raises(TsAuthError) as refused:
        await client.invia_file(euro, "730_1947_p1_euro.zip", zip_bytes)
    assert "€" not in str(refused.value) and "Salve" not in str(refused.value), str(refused.value)

    part = await _runner(ledger, client).send_with_retry(euro, key, zip_bytes)

    assert (part.state, part.protocollo, part.attempts) == (PartState.REJECTED, None, 1)
    assert part.reason == ("l'utente o la password di Sistema TS contiene un carattere che l'autenticazione HTTP non "
                           "può trasmettere (inviaFileMtom): inviare di nuovo l'istanza con le credenziali corrette")
    assert (await _admin(url, "/__sim/submissions"))["intake_calls"] == 0  # nothing reached TS
    assert "€" not in caplog.text and "Salve€Mondo" not in caplog.text


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


async def _send_past_the_client(url: str, cert: Any, zip_bytes: bytes, *, owner: Any = None,
                                cf_proprietario: str | None = None) -> Any:
    """inviaFileMtom as the client would build it, but with this envelope and these bytes, as they are: what TS
    does with a request our client never sends. The receipt."""
    from services.runtime.sanitel import encrypt_for_ts
    from services.ts_gateway import operations as ops
    from services.ts_gateway.soap import build_mtom, parse_multipart

    envelope = ops.build_invia_file("730_1947_p1_past.zip", encrypt_for_ts(cert, ROSSI.pincode),
                                    owner or ops.proprietario_of_zip("x.zip", zip_bytes),
                                    encrypt_for_ts(cert, cf_proprietario or ROSSI.cf_proprietario), "doc@past")
    body, content_type = build_mtom(envelope, {"doc@past": zip_bytes})
    async with aiohttp.ClientSession() as http, http.post(
            url + ops.INVIO_PATH, data=body, headers={"Content-Type": content_type},
            auth=aiohttp.BasicAuth(ROSSI.user, ROSSI.password)) as answer:
        raw = await answer.read()
        answer_type = answer.headers.get("Content-Type", "")
    if answer_type.lower().startswith("multipart/related"):
        raw = parse_multipart(raw, answer_type, "answer")[0].content
    receipt = ops.parse_invia_receipt(raw)
    assert not isinstance(receipt, ops.SoapFault), receipt
    return receipt


async def test_the_envelope_names_the_structure_of_the_file_and_ts_refuses_one_that_differs(ts) -> None:  # type: ignore[no-untyped-def]
    """datiProprietario (region, ASL, SSA) is mandatory for a structure; the client takes it from the
    file's own proprietario block, so it cannot disagree; a forged envelope gets TS's 109."""
    client, url, cert = ts
    from services.ts_gateway import operations as ops

    zip_bytes = sample_730_zip(cert, ROSSI.cf_proprietario)
    assert ops.proprietario_of_zip("x.zip", zip_bytes) == ops.Proprietario("150", "201", "000123")
    assert len((await client.invia_file(ROSSI, "730_1947_p1_owner.zip", zip_bytes)).protocollo) == 17
    assert (await _send_past_the_client(url, cert, zip_bytes, owner=ops.Proprietario("150", "999", "000123"))
            ).codice_esito == "109"


async def test_the_cf_proprietario_typed_at_the_send_goes_into_the_file_which_ts_refuses_without_it(ts) -> None:  # type: ignore[no-untyped-def]
    """The formatter writes the file before the operator types the C.F. proprietario; the client puts it in the
    file's proprietario block (ws-asincrono-spec-v2.5 par. 5: mandatory for a structure unless the sender is the
    Region). TS refuses the file without it (109) and with another person's (110)."""
    client, url, cert = ts
    as_formatted = sample_730_zip(cert, None, documents=2)
    assert len((await client.invia_file(ROSSI, "730_1947_p1_typed.zip", as_formatted)).protocollo) == 17
    assert (await _send_past_the_client(url, cert, as_formatted)).codice_esito == "109"
    someone_else = sample_730_zip(cert, "BNCGVN75C12H501K", documents=2)
    assert (await _send_past_the_client(url, cert, someone_else)).codice_esito == "110"
    # the client leaves a file that names its C.F. as it is: TS then tells the operator it is not theirs
    with pytest.raises(TsIntakeRejected) as refused:
        await client.invia_file(ROSSI, "730_1947_p1_other.zip", someone_else)
    assert refused.value.code == "110"


# ---- the gateway's handlers: the sealed box outside the history ------------------------------------

TODAY = date(2026, 2, 10)


@pytest.fixture
def small_keys() -> Iterator[None]:
    """2048-bit gateway keys: generating 3072-bit ones takes about a second each on this machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sealing, "KEY_BITS", 2048)
        yield


@dataclass
class Gateway:
    deps: handlers.GatewayDeps
    keys_dir: Path
    url: str
    cert: Any

    async def restarted(self) -> handlers.GatewayDeps:
        """A new gateway process on the same database and key folder (nothing kept in memory); the
        old one's worker tasks end first, as with a dead process (its advisory locks go with it)."""
        old = self.deps
        await old.worker.close()
        return handlers.GatewayDeps(pool=old.pool, store=old.store, files=old.files,
                                    runner=_runner(PgPartLedger(old.pool), old.runner.ts),  # type: ignore[arg-type]
                                    keys=GatewayKeys(self.keys_dir), today=old.today)

    def seal(self, credentials: Credentials = ROSSI) -> str:
        return seal((self.keys_dir / PUBLIC_KEY_FILE).read_bytes(), credentials)


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(ts, fresh_db: str, tmp_path: Path, small_keys: None) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    client, url, cert = ts
    pool = await create_pool(fresh_db, min_size=1, max_size=4)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
        store = EventStore(pool, source="/flows/ts-gateway", projections=FLOW_PROJECTIONS)
        ensure_gateway_keypair(tmp_path / "keys")
        deps = handlers.GatewayDeps(pool=pool, store=store, files=FileStore(tmp_path / "files"),
                                    runner=_runner(PgPartLedger(pool), client), keys=GatewayKeys(tmp_path / "keys"),
                                    today=lambda: TODAY)
        yield Gateway(deps, tmp_path / "keys", url, cert)
        await deps.worker.close()
    finally:
        await pool.close()


async def _formatted_instance(gateway: Gateway, instance: int, documents: int = 3) -> None:
    """The history of a Formatted 730 instance with one zip, as the loader and the formatter write it."""
    sha, size = gateway.deps.files.put_bytes(sample_730_zip(gateway.cert, ROSSI.cf_proprietario, documents=documents))
    zip_ref = flows.FileRef(name=f"730_{instance}.zip", kind="730-zip", records=documents, bytes=size, sha256=sha,
                            media_type="application/zip", part=1)
    period = flows.Period(start=date(2026, 1, 1), end=date(2026, 1, 31))
    payloads: list[tuple[str, flows.Payload, str]] = [
        ("flows.load-running", flows.LoadRunning(instance=instance, request_id=uuid.uuid4(),
                                                 flow_type=flows.FlowType.FLUSSO_730, version="2020", ente="201",
                                                 period=period, requested_by="it.operator"), "loader"),
        ("flows.load-checked", flows.LoadChecked(instance=instance, source_instance=1, counts={"documents": 3}),
         "loader"),
        ("flows.formatting-started", flows.FormattingStarted(instance=instance), "formatter"),
        ("flows.formatted", flows.Formatted(instance=instance, files=[zip_ref]), "formatter"),
    ]
    await gateway.deps.store.append(
        instance_stream(instance), [NewEvent(t, p.model_dump(mode="json"), actor=a) for t, p, a in payloads],
        expected_version=0, key=str(instance))


async def _request(gateway: Gateway, instance: int, sealed: str, when: date = TODAY,
                   deps: handlers.GatewayDeps | None = None) -> None:
    command = flows.TsSubmissionRequested(instance=instance, sealed_credentials=sealed, transmission_date=when,
                                          requested_by="it.operator")
    incoming = Incoming(Envelope.new("flows.ts-submission-requested", "/it"), str(instance),
                        "flows.ts-submission-requested", 0, 0)
    await handlers.handle_submission_requested(command, incoming, deps or gateway.deps)


async def _history(gateway: Gateway, instance: int) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.data) for e in await gateway.deps.store.read_stream(instance_stream(instance))]


async def _boxes(gateway: Gateway) -> dict[int, tuple[uuid.UUID, str, str]]:
    rows = await gateway.deps.pool.fetch("SELECT instance, request_id, key_id, sealed FROM ts_sealed_credentials")
    return {r["instance"]: (r["request_id"], r["key_id"], r["sealed"]) for r in rows}


async def test_the_request_is_recorded_without_its_box_which_survives_a_restart_and_goes_with_the_outcome(
        gateway: Gateway) -> None:
    await _formatted_instance(gateway, 4101)
    sealed = gateway.seal()
    current = key_id((gateway.keys_dir / PUBLIC_KEY_FILE).read_bytes())

    await _request(gateway, 4101, sealed, when=TODAY + timedelta(days=1))  # not due yet: nothing is sent

    (recorded,) = [d for t, d in await _history(gateway, 4101) if t == "flows.ts-submission-requested"]
    assert recorded == {"schema_version": 1, "instance": 4101, "transmission_date": "2026-02-11",
                        "requested_by": "it.operator", "sealed_to_key": current,
                        "seen_version": None}  # a producer that did not say which version it read
    request_id = (await gateway.deps.store.read_stream(instance_stream(4101)))[-1].id
    assert await _boxes(gateway) == {4101: (request_id, current, sealed)}
    assert await _sends(gateway.url) == 0

    # the gateway restarts, and the day comes: the new process opens the stored box and finishes
    restarted = await gateway.restarted()
    restarted.today = lambda: TODAY + timedelta(days=1)
    await handlers.submit_instance(4101, restarted)

    types = [t for t, _ in await _history(gateway, 4101)]
    assert types[-2:] == ["flows.ts-submitted", "flows.ts-feedback-received"]
    assert (await _history(gateway, 4101))[-1][1]["instance_outcome"] == "confirmed"
    assert await _boxes(gateway) == {}, "the box outlived its submission"
    dump = str(await gateway.deps.pool.fetch("SELECT data::text, metadata::text FROM events"))
    assert sealed not in dump and all(secret not in dump for secret in ROSSI.secrets())


async def test_a_box_whose_key_is_gone_ends_the_request_rejected_naming_the_key_and_sends_nothing(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    await _formatted_instance(gateway, 4102)
    sealed = gateway.seal()
    first = key_id((gateway.keys_dir / PUBLIC_KEY_FILE).read_bytes())
    await _request(gateway, 4102, sealed, when=TODAY + timedelta(days=1))
    rotate_gateway_key(gateway.keys_dir)
    (gateway.keys_dir / gateway_keys.RETIRED_DIR / f"{first}.pem").unlink()  # lost, or deleted by hand

    restarted = await gateway.restarted()
    restarted.today = lambda: TODAY + timedelta(days=1)
    await handlers.submit_instance(4102, restarted)

    outcome = (await _history(gateway, 4102))[-1]
    assert outcome[0] == "flows.ts-feedback-received" and outcome[1]["instance_outcome"] == "rejected"
    current = key_id((gateway.keys_dir / PUBLIC_KEY_FILE).read_bytes())
    assert outcome[1]["reason"] == (
        f"le credenziali cifrate di questa richiesta sono sigillate con la chiave {first} del gateway TS, che il "
        f"gateway non custodisce più (la sua chiave attuale è {current}); invii di nuovo l'istanza inserendo di "
        "nuovo le credenziali")
    assert await _boxes(gateway) == {} and await _sends(gateway.url) == 0


async def test_a_box_sealed_to_a_key_the_gateway_never_had_is_refused_and_nothing_is_recorded(
        gateway: Gateway, tmp_path: Path) -> None:
    await _formatted_instance(gateway, 4103)
    stranger_public, _ = ensure_gateway_keypair(tmp_path / "another-gateway")

    with pytest.raises(Refused, match=f"sealed to key {key_id(stranger_public)}, which this gateway does not hold"):
        await _request(gateway, 4103, seal(stranger_public, ROSSI))

    assert [t for t, _ in await _history(gateway, 4103)][-1] == "flows.formatted"
    assert await _boxes(gateway) == {}


async def test_a_newer_request_replaces_the_box_a_deleted_instance_loses_it_and_then_the_retired_key_goes(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    await _formatted_instance(gateway, 4104)
    later = TODAY + timedelta(days=5)
    first = key_id((gateway.keys_dir / PUBLIC_KEY_FILE).read_bytes())
    await _request(gateway, 4104, gateway.seal(), when=later)
    rotation = rotate_gateway_key(gateway.keys_dir)
    newer = gateway.seal()
    await _request(gateway, 4104, newer, when=later)
    latest = (await gateway.deps.store.read_stream(instance_stream(4104)))[-1]
    assert await _boxes(gateway) == {4104: (latest.id, rotation.current, newer)}

    monkeypatch.setattr(gateway_keys, "RETIRED_KEY_GRACE_S", 0.0)
    await handlers.forget_ended_boxes(gateway.deps)  # the first key serves no box any more: it goes
    assert not (gateway.keys_dir / gateway_keys.RETIRED_DIR / f"{first}.pem").exists()
    assert await _boxes(gateway) == {4104: (latest.id, rotation.current, newer)}

    await gateway.deps.store.append(instance_stream(4104), [NewEvent(
        "flows.instance-deleted", flows.InstanceDeleted(instance=4104, deleted_by="it.operator").model_dump(
            mode="json"), actor="it.operator")], expected_version=latest.version, key="4104")
    await handlers.forget_ended_boxes(gateway.deps)
    assert await _boxes(gateway) == {}
    assert await _sends(gateway.url) == 0


def _fill(path: Path, disk: SmallDisk) -> None:
    """A file that takes every free page of the disk (written until the kernel answers ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    assert disk.free_bytes() == 0


async def _worker_idle(deps: handlers.GatewayDeps, instance: int) -> None:
    """The worker task of `instance` ended (a hang guard, not a speed target)."""
    async with asyncio.timeout(60):
        while instance in deps.worker.running():
            await asyncio.sleep(0.05)


def _stored(disk: SmallDisk, ref: dict[str, Any]) -> bytes:
    data = (disk.path / "sha256" / ref["sha256"][:2] / ref["sha256"][2:]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == ref["sha256"] and len(data) == ref["bytes"], ref
    return data


async def test_a_full_store_keeps_a_processed_part_waiting_feedback_until_its_errors_file_fits(
        gateway: Gateway, tmp_path: Path) -> None:
    """TS processed the file with errors (stato 3) but the store has no room for the errors CSV (or the receipt):
    the instance stays Waiting feedback with nothing announced (never Confirmed with errors without its errors
    file: they were lost that way before), no temporary file left, one `store.full` warning naming the store
    and the instance, the alert's figure at 1, and the resume pass backs off instead of asking TS again every
    10 s. Space freed: Confirmed with errors, with the whole errors file (both documents) and the receipt; TS
    got the file once."""
    await _admin(gateway.url, "/__sim/behaviour", {"error_documents": ["DOC-2", "DOC-4"], "polls_in_progress": 0})
    deps = gateway.deps
    with small_disk(tmp_path / "files", size_kb=3 * 1024) as disk, service_log_lines() as logs:
        await _formatted_instance(gateway, 4105, documents=5)
        filler = disk.path / "filler"
        _fill(filler, disk)

        await _request(gateway, 4105, gateway.seal())
        await _worker_idle(deps, 4105)

        history = await _history(gateway, 4105)
        assert [t for t, _ in history][-2:] == ["flows.ts-submission-requested", "flows.ts-submitted"], history[-1]
        assert (await deps.instances.read(4105)).state is InstanceState.WAITING_FEEDBACK
        assert disk.files("tmp") == [] and disk.free_bytes() == 0, disk.files("tmp")
        gauge = {"path": str(disk.path)}
        assert REGISTRY.get_sample_value("flows_file_store_waiting", gauge) == 1.0
        full = [json.loads(line) for line in logs.getvalue().splitlines() if '"store.full"' in line]
        assert len(full) == 1 and full[0]["instance"] == 4105 and full[0]["path"] == str(disk.path), full
        assert "No space left on device" in full[0]["error"] and full[0]["level"] == "warning", full

        # The service's 10 s pass, before the backoff is over. A pass looks at the wait after its query (long on a
        # loaded machine): a start it makes once the 5 s wait is over is on time, and that attempt meets the full
        # disk again (one more attempt); only a start seen before the wait's end is early (a pass that ignored the
        # wait starts it at once: seen here).
        due_at = deps.space.waiting[4105].next_at
        await handlers.resume_unfinished(deps)
        started = deps.worker.running() != []
        assert not started or time.monotonic() >= due_at, "tried again at once on a disk that is still full"
        await _worker_idle(deps, 4105)

        filler.unlink()  # the operator frees space: the next pass tries at once
        await handlers.resume_unfinished(deps)
        await _worker_idle(deps, 4105)
        history = await _history(gateway, 4105)
        lines = logs.getvalue().splitlines()
        again = [json.loads(line) for line in lines if '"store.space_again"' in line]
        errors_data = receipt = b""
        outcome = history[-1][1]
        with contextlib.suppress(TypeError, KeyError):
            errors_data, receipt = _stored(disk, outcome["errors_file"]), _stored(disk, outcome["receipt_file"])
        assert disk.files("tmp") == []

    types = [t for t, _ in history]
    assert types[-1] == "flows.ts-feedback-received" and types.count("flows.ts-feedback-received") == 1, types
    assert outcome["instance_outcome"] == "confirmed_with_errors" and outcome["stato"] == 3, outcome
    assert outcome["errors_file"] is not None and outcome["errors_file"]["records"] == 2, outcome
    rows = errors_data.decode().splitlines()
    assert len(rows) == 3 and "DOC-2" in rows[1] and "DOC-4" in rows[2], rows
    assert outcome["receipt_file"] is not None and receipt.startswith(b"%PDF"), outcome
    assert REGISTRY.get_sample_value("flows_file_store_waiting", gauge) == 0.0
    assert again and again[0]["instance"] == 4105 and again[0]["attempts"] == 1 + started, again
    assert await _sends(gateway.url) == 1


async def test_ts_down_backs_a_submission_off_then_it_is_sent_once_when_ts_is_back(gateway: Gateway) -> None:
    """Sistema TS answers 500 to every call, past the runner's own retries: the submission is interrupted (one
    `ts.submission.interrupted` warning, attempt 1), the instance keeps its state and history, and the resume pass
    does NOT ask TS again before the backoff is over (a national service that is down is not asked every 10 s
    for every instance); a second interruption doubles the wait. TS back: the next due pass sends it, once, and
    `ts.submission.recovered` says after how many attempts."""
    deps = gateway.deps
    deps.interrupted = handlers.interruptions(0.5, 4.0)  # the production wait is the 10 s pass, doubling to 5 min
    service = {"service": "ts_gateway"}
    await _admin(gateway.url, "/__sim/behaviour", {"fail_next": 1000, "operations": ["inviaFileMtom", "EsitoInvii"]})
    with service_log_lines() as logs:
        await _formatted_instance(gateway, 4107)
        await _request(gateway, 4107, gateway.seal())
        await _worker_idle(deps, 4107)
        state_down = (await deps.instances.read(4107)).state
        waiting_down = REGISTRY.get_sample_value("flows_work_interrupted", service)

        # The next pass, before the first wait is over. A pass looks at the wait some time after it is called (a
        # query first; long on a loaded machine): a start it makes once the wait is over is on time, so only a start
        # seen before the wait's end is early (a pass that ignored the wait starts it at once: seen here).
        first_due_at = deps.interrupted.waiting[4107].next_at
        await handlers.resume_unfinished(deps)
        started_early = deps.worker.running() != [] and time.monotonic() < first_due_at
        async with asyncio.timeout(30):  # a hang guard: the wait is 0.5 s
            while not deps.interrupted.due(4107):
                await asyncio.sleep(0.05)
        await handlers.resume_unfinished(deps)  # due: tried again, TS still down
        await _worker_idle(deps, 4107)

        await _admin(gateway.url, "/__sim/behaviour", {"fail_next": 0, "polls_in_progress": 0})
        second_due_at = deps.interrupted.waiting[4107].next_at
        async with asyncio.timeout(30):  # the second wait, 1 s
            while not deps.interrupted.due(4107):
                await handlers.resume_unfinished(deps)
                assert deps.worker.running() == [] or time.monotonic() >= second_due_at, \
                    "tried again before its second wait was over"
                await asyncio.sleep(0.05)
        await handlers.resume_unfinished(deps)
        await _worker_idle(deps, 4107)
        lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    history = [t for t, _ in await _history(gateway, 4107)]

    assert state_down is InstanceState.FORMATTED and waiting_down == 1.0 and not started_early
    cut = [line for line in lines if line["event"] == "ts.submission.interrupted"]
    assert [(c["instance"], c["attempt"], c["retry_in_s"]) for c in cut] == [(4107, 1, 0.5), (4107, 2, 1.0)], cut
    assert all("TsUnavailable" in c["error"] or "500" in c["error"] for c in cut), cut
    recovered = [line for line in lines if line["event"] == "ts.submission.recovered"]
    assert len(recovered) == 1 and recovered[0]["attempts"] == 2, recovered
    assert history[-1] in ("flows.ts-submitted", "flows.ts-feedback-received"), history
    assert history.count("flows.ts-submitted") == 1, history
    assert await _sends(gateway.url) == 1
    assert REGISTRY.get_sample_value("flows_work_interrupted", service) == 0.0
    assert ROSSI.password not in logs.getvalue() and ROSSI.pincode not in logs.getvalue()


async def test_an_unforeseen_error_is_logged_once_per_attempt_and_backed_off_not_retried_every_pass(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error the gateway does not foresee (a defect: here the runner raising KeyError twice, as a bug in
    reading an answer would) is one `ts.submission_failed` ERROR line per attempt with attempt and retry_in_s,
    and the attempts are backed off like an interruption: the resume pass does not start it again before its
    wait is over (before, every 10 s pass ran it again and logged the error again, for ever). Once the defect is
    gone the next due pass sends it, once; the figure returns to 0."""
    deps = gateway.deps
    deps.interrupted = handlers.interruptions(0.5, 4.0)
    service = {"service": "ts_gateway"}
    real_send = deps.runner.send_with_retry
    defects = 2

    async def send_with_a_defect(*args: Any, **kwargs: Any) -> Any:
        nonlocal defects
        if defects:
            defects -= 1
            raise KeyError("protocollo")
        return await real_send(*args, **kwargs)

    monkeypatch.setattr(deps.runner, "send_with_retry", send_with_a_defect)
    with service_log_lines() as logs:
        await _formatted_instance(gateway, 4108)
        await _request(gateway, 4108, gateway.seal())
        await _worker_idle(deps, 4108)
        waiting = REGISTRY.get_sample_value("flows_work_interrupted", service)
        async with asyncio.timeout(30):  # the waits are 0.5 s then 1 s; a hang guard
            while defects or not deps.interrupted.due(4108) or (await deps.instances.read(4108)).state \
                    is InstanceState.FORMATTED:
                await handlers.resume_unfinished(deps)
                if not deps.interrupted.due(4108):
                    assert deps.worker.running() == [], "started again before its wait was over"
                await _worker_idle(deps, 4108)
                await asyncio.sleep(0.05)
        lines = [json.loads(line) for line in logs.getvalue().splitlines()]

    failed = [line for line in lines if line["event"] == "ts.submission_failed"]
    assert [(f["instance"], f["attempt"], f["retry_in_s"], f["level"]) for f in failed] == [
        (4108, 1, 0.5, "error"), (4108, 2, 1.0, "error")], failed
    assert all(f["error"] == "KeyError: 'protocollo'" for f in failed), failed
    assert waiting == 1.0
    recovered = [line for line in lines if line["event"] == "ts.submission.recovered"]
    assert len(recovered) == 1 and recovered[0]["attempts"] == 2, recovered
    history = [t for t, _ in await _history(gateway, 4108)]
    assert history.count("flows.ts-submitted") == 1, history
    assert await _sends(gateway.url) == 1
    assert REGISTRY.get_sample_value("flows_work_interrupted", service) == 0.0
