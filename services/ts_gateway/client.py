"""Async client of Sistema TS (730 asynchronous send + receipts) over aiohttp.

Hand-built lxml envelopes rather than zeep: zeep is synchronous and cannot build MTOM/XOP
requests (see services.ts_gateway.soap). Every call uses HTTP Basic with the TS user/password
of the submission; the pincode and the C.F. proprietario travel encrypted under the SanitelCF
certificate (services.runtime.sanitel).

Errors are typed: `TsIntakeRejected(code, description)` (the file was refused, do not retry
as is), `TsUnavailable` (5xx, timeout, connection: retryable), `TsAuthError` (HTTP 401/403),
`TsQueryFailed` (a receipt service answered esitoChiamata=1), `TsProtocolError` (an answer we
cannot read). No message ever carries a credential.

Retries: the three receipt queries are read-only, so the client retries them on TsUnavailable
with the backoff schedule. `invia_file` is NOT retried here: TS has no idempotency key and a
5xx or a timeout may hide an accepted file; the caller (services.ts_gateway.submitter) records
"sending" first and reconciles with EsitoInvii before any resend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from types import TracebackType
from typing import TypeVar

import aiohttp
from cryptography import x509

from contracts.ts730 import MAX_ZIP_BYTES
from services.runtime.sanitel import encrypt_for_ts
from services.ts_gateway import operations as ops
from services.ts_gateway.receipts import DocumentError, parse_error_report
from services.ts_gateway.sealing import Credentials
from services.ts_gateway.soap import (
    SOAP_CONTENT_TYPE,
    SoapFault,
    SoapFormatError,
    body_payload,
    build_mtom,
    parse_multipart,
)
from services.ts_gateway.submission import PROTOCOLLO, BackoffSchedule

TEST_HOST = "https://invioSS730pTest.sanita.finanze.it"
PRODUCTION_HOST = "https://invioSS730p.sanita.finanze.it"
T = TypeVar("T")


class TsError(Exception):
    """Base of the errors of a Sistema TS call. Messages never carry credentials."""


class TsIntakeRejected(TsError):
    def __init__(self, code: str, description: str, id_errore: str | None = None) -> None:
        super().__init__(f"TS refused the file: {code} {description}")
        self.code = code
        self.description = description
        self.id_errore = id_errore


class RefusedBeforeSending(TsIntakeRejected):
    """Refused here, before any call, with the code TS would give: nothing reached TS."""


class ZipTooLarge(RefusedBeforeSending):
    """108: over the 5 MB limit."""


class TsUnavailable(TsError):
    """5xx, timeout or connection failure: retry later (reconcile first for a send)."""


class TsAuthError(TsError):
    """HTTP 401/403: the TS user or password is wrong (the values are never shown)."""

    def __init__(self, operation: str, status: int) -> None:
        super().__init__(f"TS {operation}: HTTP {status}, the TS user or password was refused")
        self.operation = operation
        self.status = status

    @property
    def reason(self) -> str:
        """The outcome the operators read (a Rejected submission): Italian, never a credential."""
        return (f"Sistema TS ha rifiutato l'utente o la password (HTTP {self.status}, {self.operation}): "
                "inviare di nuovo l'istanza con le credenziali corrette")


class TsCredentialsUnsendable(TsAuthError):
    """The TS user or password holds what HTTP Basic authentication cannot carry (a character outside Latin-1, such
    as the euro sign, or a colon in the user): refused here, before any call, as TS would refuse a wrong password.
    The character is never named, nor its position: it is part of the secret."""

    def __init__(self, operation: str) -> None:
        TsError.__init__(self, f"TS {operation}: the TS user or password holds a character HTTP Basic authentication "
                               "cannot carry")
        self.operation = operation
        self.status = 0

    @property
    def reason(self) -> str:
        return (f"l'utente o la password di Sistema TS contiene un carattere che l'autenticazione HTTP non può "
                f"trasmettere ({self.operation}): inviare di nuovo l'istanza con le credenziali corrette")


class TsQueryFailed(TsError):
    def __init__(self, operation: str, code: str, description: str) -> None:
        super().__init__(f"TS {operation} answered {code}: {description}")
        self.code = code
        self.description = description


class TsProtocolError(TsError):
    """An answer that is not what the WSDL describes."""


@dataclass(frozen=True)
class TsEndpoints:
    """Test and production differ only in host (spec 4.6.1, ricevute 2.7): one base URL."""

    base_url: str = TEST_HOST

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


@dataclass(frozen=True)
class TsClientSettings:
    endpoints: TsEndpoints = field(default_factory=TsEndpoints)
    connect_timeout_s: float = 10.0
    # A 5 MB upload on a slow link plus TS intake checks: generous, but bounded.
    request_timeout_s: float = 120.0
    query_attempts: int = 4
    query_backoff: BackoffSchedule = field(default_factory=lambda: BackoffSchedule(initial=1.0, cap=30.0))
    enforce_size_limit: bool = True  # tests switch it off to prove the simulator refuses too
    # EsitoInvii-by-dates codes that mean "no sends in the range": the spec names none, WS01 is the
    # simulator's; add the production code once TS is seen to give one (see esiti_between).
    no_sends_codes: frozenset[str] = frozenset({"WS01"})


class TsClient:
    def __init__(
        self,
        settings: TsClientSettings,
        sanitel_cert: x509.Certificate,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._settings = settings
        self._cert = sanitel_cert
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> TsClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=self._settings.request_timeout_s, sock_connect=self._settings.connect_timeout_s
            )
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    # ---- operations ----------------------------------------------------------------------------

    async def invia_file(
        self, credentials: Credentials, file_name: str, zip_bytes: bytes
    ) -> ops.IntakeReceipt:
        """Send one zip; the receipt of an accepted file (codiceEsito 000, 17-digit protocollo)."""
        if self._settings.enforce_size_limit and len(zip_bytes) > MAX_ZIP_BYTES:
            # the description becomes the part's reason, which the operators read: Italian, as TS's own are
            raise ZipTooLarge(
                "108", f"{file_name}: {len(zip_bytes)} byte superano il limite di {MAX_ZIP_BYTES} byte; non inviato"
            )
        cf_proprietario = encrypt_for_ts(self._cert, credentials.cf_proprietario)
        try:
            owner = ops.proprietario_of_zip(file_name, zip_bytes)
            # the operator's C.F. proprietario goes into the file too (ops.with_cf_proprietario): a thread, since
            # the XML of a 5 MB zip is inflated and deflated again (0.4-0.5 s of CPU, measured)
            zip_bytes = await asyncio.to_thread(ops.with_cf_proprietario, file_name, zip_bytes, cf_proprietario)
        except ValueError as exc:
            raise RefusedBeforeSending("109", f"blocco proprietario non leggibile ({exc}); non inviato") from None
        if self._settings.enforce_size_limit and len(zip_bytes) > MAX_ZIP_BYTES:
            raise ZipTooLarge(
                "108", f"{file_name}: {len(zip_bytes)} byte con il C.F. proprietario superano il limite di "
                f"{MAX_ZIP_BYTES} byte; non inviato"
            )
        content_id = f"documento-{file_name}@ts-gateway"
        envelope = ops.build_invia_file(
            file_name, encrypt_for_ts(self._cert, credentials.pincode), owner, cf_proprietario, content_id
        )
        body, content_type = build_mtom(envelope, {content_id: zip_bytes})
        answer = await self._post("inviaFileMtom", ops.INVIO_PATH, credentials, body, content_type)
        receipt = _parse("inviaFileMtom", answer, ops.parse_invia_receipt)
        if isinstance(receipt, SoapFault):
            raise _fault_error("inviaFileMtom", receipt)
        if not receipt.accepted:
            raise TsIntakeRejected(receipt.codice_esito, receipt.descrizione_esito, receipt.id_errore)
        if not PROTOCOLLO.fullmatch(receipt.protocollo):
            raise TsProtocolError(
                f"inviaFileMtom: accepted {file_name} but protocollo {receipt.protocollo!r} is not 17 digits"
            )
        return receipt

    async def esito_invii(self, credentials: Credentials, protocollo: str) -> ops.SendStatus:
        answer = await self._query("EsitoInvii", credentials, protocollo=protocollo)
        matches = [status for status in answer.statuses if status.protocollo == protocollo]
        if not matches:
            raise TsProtocolError(f"EsitoInvii: answer for protocollo {protocollo} does not mention it")
        return matches[0]

    async def esiti_between(self, credentials: Credentials, start: date, end: date) -> list[ops.SendStatus]:
        """Every send of this user between two days (inclusive); [] when TS says it has none.

        esitoChiamata 1 means "error OR no sends in the range" (ricevute-spec-2015 2.6), and the
        answer decides whether a part found in "sending" is sent again. So only an answer that says
        "none" (a code of `no_sends_codes`, or a description saying NESSUN INVIO) is an empty list;
        any other failure is `TsUnavailable`: the caller tries again later and never resends on it.
        """
        try:
            answer = await self._query("EsitoInvii", credentials, data_inizio=start, data_fine=end)
        except TsQueryFailed as exc:
            if exc.code in self._settings.no_sends_codes or "NESSUN INVIO" in exc.description.upper():
                return []
            raise TsUnavailable(f"TS EsitoInvii {start}..{end} answered {exc.code} {exc.description}: "
                                "cannot tell whether a file was received, so nothing is resent") from None
        return list(answer.statuses)

    async def dettaglio_errori_zip(self, credentials: Credentials, protocollo: str) -> bytes:
        answer = await self._query("DettaglioErrori", credentials, protocollo=protocollo)
        if answer.binary is None:
            raise TsProtocolError(f"DettaglioErrori {protocollo}: esitoChiamata 0 without a csv element")
        return answer.binary

    async def dettaglio_errori(self, credentials: Credentials, protocollo: str) -> list[DocumentError]:
        return parse_error_report(await self.dettaglio_errori_zip(credentials, protocollo))

    async def ricevuta_pdf(self, credentials: Credentials, protocollo: str) -> bytes:
        answer = await self._query("RicevutaPdf", credentials, protocollo=protocollo)
        if answer.binary is None or not answer.binary.startswith(b"%PDF"):
            raise TsProtocolError(f"RicevutaPdf {protocollo}: esitoChiamata 0 without a PDF")
        return answer.binary

    # ---- plumbing ------------------------------------------------------------------------------

    _QUERIES = {
        "EsitoInvii": (ops.ESITO_NS, ops.ESITO_PATH, "EsitoInviiResponse", None),
        "DettaglioErrori": (ops.DETTAGLIO_NS, ops.DETTAGLIO_PATH, "DettaglioErroriResponse", "csv"),
        "RicevutaPdf": (ops.PDF_NS, ops.PDF_PATH, "RicevutaPdfResponse", "pdf"),
    }

    async def _query(
        self,
        operation: str,
        credentials: Credentials,
        *,
        protocollo: str | None = None,
        data_inizio: date | None = None,
        data_fine: date | None = None,
    ) -> ops.QueryAnswer:
        namespace, path, response_name, binary_name = self._QUERIES[operation]
        attempts = max(1, self._settings.query_attempts)
        for attempt in range(1, attempts + 1):
            # A fresh ciphertext each call: PKCS#1 v1.5 is randomised, TS decrypts it anyway.
            query = ops.ReceiptQuery(
                encrypt_for_ts(self._cert, credentials.pincode), protocollo, data_inizio, data_fine
            )
            body = ops.build_query(namespace, operation, query)
            try:
                answer_bytes = await self._post(operation, path, credentials, body, SOAP_CONTENT_TYPE)
            except TsUnavailable:
                if attempt == attempts:
                    raise
                await asyncio.sleep(self._settings.query_backoff.delay(attempt))
                continue
            answer = _parse(
                operation,
                answer_bytes,
                lambda data: ops.parse_answer(data, namespace, response_name, binary_name),
            )
            if isinstance(answer, SoapFault):
                raise _fault_error(operation, answer)
            if answer.esito_chiamata != "0":
                first = (
                    answer.negatives[0]
                    if answer.negatives
                    else ops.NegativeOutcome("", answer.descrizione_esito)
                )
                raise TsQueryFailed(operation, first.code, first.description)
            return answer
        raise AssertionError("unreachable: the loop returns or raises")

    async def _post(
        self, operation: str, path: str, credentials: Credentials, body: bytes, content_type: str
    ) -> bytes:
        url = self._settings.endpoints.url(path)
        headers = {"Content-Type": content_type, "SOAPAction": '""', "Accept": "text/xml, multipart/related"}
        try:  # aiohttp encodes them as Latin-1 when it sends, and its error names the character and where it is
            auth = aiohttp.BasicAuth(credentials.user, credentials.password)
            auth.encode()
        except (UnicodeEncodeError, ValueError):
            raise TsCredentialsUnsendable(operation) from None
        try:
            async with self._http().post(url, data=body, headers=headers, auth=auth) as response:
                payload = await response.read()
                status = response.status
                answer_type = response.headers.get("Content-Type", "")
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TsUnavailable(f"TS {operation}: no answer within the timeout") from exc
        except aiohttp.ClientError as exc:
            raise TsUnavailable(f"TS {operation}: connection failed ({type(exc).__name__})") from None
        if status in (401, 403):
            raise TsAuthError(operation, status)
        if answer_type.lower().startswith("multipart/related"):
            root, _ = parse_multipart(payload, answer_type, f"TS {operation} answer")
            payload = root.content
        if status >= 500:
            fault = _fault_or_none(payload)
            if fault is not None and "client" in fault.code.lower():
                raise TsProtocolError(f"TS {operation}: request refused as malformed: {fault.message}")
            raise TsUnavailable(f"TS {operation}: HTTP {status}" + (f" ({fault.message})" if fault else ""))
        if status != 200:
            raise TsProtocolError(f"TS {operation}: unexpected HTTP {status}")
        return payload


def _parse(operation: str, data: bytes, parser: Callable[[bytes], T]) -> T:
    try:
        return parser(data)
    except SoapFormatError as exc:
        raise TsProtocolError(f"TS {operation}: {exc}") from exc


def _fault_or_none(data: bytes) -> SoapFault | None:
    try:
        payload = body_payload(data, "fault")
    except SoapFormatError:
        return None
    return payload if isinstance(payload, SoapFault) else None


def _fault_error(operation: str, fault: SoapFault) -> TsError:
    if "client" in fault.code.lower():
        return TsProtocolError(f"TS {operation}: SOAP fault {fault.code}: {fault.message}")
    return TsUnavailable(f"TS {operation}: SOAP fault {fault.code}: {fault.message}")
