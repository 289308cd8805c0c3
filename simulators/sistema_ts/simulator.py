"""A Sistema TS simulator over real HTTP (aiohttp), for tests and the local stack.

It serves the four operations on the official paths and namespaces (inviaFileMtom with MTOM,
EsitoInvii, DettaglioErrori, RicevutaPdf), with its own SanitelCF key pair: the certificate PEM
is written where the gateway loads it (`write_certificate`). It checks HTTP Basic against salted
hashes, decrypts and checks the pincode and cfProprietario, unzips (one XML, <= 5 MB), validates
the SOAP body against the WSDL schema and the file against 730_precompilata.xsd, decrypts every
cfCittadino, gives a 17-digit protocollo, then walks stato 1 -> 2 / 3 / 5 over polls.

Test behaviours (constructor or `POST /__sim/behaviour` with the Behaviour fields as JSON):
reject at intake with a code, delay, HTTP 500 for the next N calls, hang, polls in progress,
forced final stato, per-document errors for given numDocumento values. `GET /__sim/submissions`
lists accepted files (no credentials); `POST /__sim/reset` forgets everything.

Run it: `python -m simulators.sistema_ts --cert-out .stack/ts-sim` (port: --port or FLOWS_TS_SIM_PORT).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path

from aiohttp import web
from lxml import etree

from services.runtime.sanitel import make_test_certificate
from services.ts_gateway import operations as ops
from services.ts_gateway.receipts import build_error_report
from services.ts_gateway.soap import (
    SOAP_CONTENT_TYPE,
    SoapFault,
    SoapFormatError,
    body_payload,
    child_text,
    fault_envelope,
    parse_multipart,
    resolve_xop,
)
from services.ts_gateway.submission import TS_ZONE
from simulators.sistema_ts.rules import (
    FILE_XSD,
    INVIO_XSD,
    STATO_DESCRIPTIONS,
    Behaviour,
    IntakeRefusal,
    SimUser,
    Submission,
    check_pincode,
    check_proprietario,
    check_proprietario_matches_file,
    load_schema,
    process_file,
    receipt_pdf,
    reference_file,
    schema_errors,
    unzip_single_xml,
)

CERT_FILE = "sanitel-cf.pem"


class TsSimulator:
    def __init__(
        self,
        users: list[SimUser],
        behaviour: Behaviour | None = None,
        cert_pem: bytes | None = None,
        key_pem: bytes | None = None,
    ) -> None:
        if cert_pem is None or key_pem is None:
            cert_pem, key_pem = make_test_certificate("SanitelCF SIMULATOR")
        self.cert_pem, self._key_pem = cert_pem, key_pem
        self._users = list(users)
        self.behaviour = behaviour or Behaviour()
        self.submissions: list[Submission] = []
        self.intake_calls = 0
        self.refusals: list[str] = []
        self._serial = itertools.count(1)
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._file_schema = load_schema(reference_file(FILE_XSD))
        self._invio_schema = load_schema(reference_file(INVIO_XSD))

    def write_certificate(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CERT_FILE
        path.write_bytes(self.cert_pem)
        return path

    # ---- lifecycle -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)  # above 5 MB: TS answers 108 itself
        app.router.add_post(ops.INVIO_PATH, self._invia)
        app.router.add_post(ops.ESITO_PATH, self._esito)
        app.router.add_post(ops.DETTAGLIO_PATH, self._dettaglio)
        app.router.add_post(ops.PDF_PATH, self._pdf)
        app.router.add_post("/__sim/behaviour", self._set_behaviour)
        app.router.add_get("/__sim/submissions", self._list)
        app.router.add_post("/__sim/reset", self._reset)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        return f"http://{bound_host}:{bound_port}"

    async def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- helpers -------------------------------------------------------------------------------

    async def _misbehave(self, operation: str) -> web.Response | None:
        behaviour = self.behaviour
        if operation not in behaviour.operations:
            return None
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.hang:
            await self._stopping.wait()
            raise web.HTTPServiceUnavailable()
        if behaviour.fail_next > 0:
            behaviour.fail_next -= 1
            return _soap(fault_envelope("Server", "Errore interno simulato"), status=500)
        return None

    def _authenticate(self, request: web.Request) -> SimUser | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        account = next((account for account in self._users if account.is_user(user)), None)
        return account if account is not None and account.password_ok(password) else None

    # ---- inviaFileMtom -------------------------------------------------------------------------

    async def _invia(self, request: web.Request) -> web.StreamResponse:
        if (early := await self._misbehave("inviaFileMtom")) is not None:
            return early
        account = self._authenticate(request)
        if account is None:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="SistemaTS"'})
        self.intake_calls += 1
        body = await request.read()
        try:
            operation, document = self._read_invia(body, request.headers.get("Content-Type", ""))
        except SoapFormatError as exc:
            return _soap(fault_envelope("Client", str(exc)), status=500)
        file_name = child_text(operation, "nomeFileAllegato", "inviaFileMtom") or ""
        received = datetime.now(TS_ZONE)
        try:
            check_pincode(account, self._key_pem, child_text(operation, "pincodeInvianteCifrato", "invia") or "")
            check_proprietario(account, self._key_pem, operation.findtext("datiProprietario/cfProprietario"))
            xml = unzip_single_xml(file_name, document)
            check_proprietario_matches_file(operation, xml, account, self._key_pem)
            if self.behaviour.reject_intake_code:
                raise IntakeRefusal(self.behaviour.reject_intake_code)
        except IntakeRefusal as refusal:
            self.refusals.append(refusal.code)
            return _soap(
                ops.build_invia_receipt(
                    ops.IntakeReceipt(
                        refusal.code,
                        refusal.description,
                        "",
                        received.strftime(ops.TS_DATETIME),
                        file_name,
                        len(document),
                        id_errore=f"ERR{next(self._serial):08d}",
                    )
                )
            )
        processing = process_file(xml, self._key_pem, self._file_schema, set(self.behaviour.error_documents))
        protocollo = f"{received:%y%m%d%H%M%S}{next(self._serial) % 100_000:05d}"
        self.submissions.append(
            Submission(
                protocollo,
                file_name,
                len(document),
                hashlib.sha256(document).hexdigest(),
                received,
                account.user_hash.hex(),
                processing,
            )
        )
        return _soap(
            ops.build_invia_receipt(
                ops.IntakeReceipt(
                    ops.INTAKE_ACCEPTED,
                    "FILE ACCOLTO",
                    protocollo,
                    received.strftime(ops.TS_DATETIME),
                    file_name,
                    len(document),
                )
            )
        )

    def _read_invia(self, body: bytes, content_type: str) -> tuple[etree._Element, bytes]:
        if content_type.lower().startswith("multipart/related"):
            root, attachments = parse_multipart(body, content_type, "inviaFileMtom request")
            envelope_bytes = root.content
        else:
            envelope_bytes, attachments = body, {}
        payload = body_payload(envelope_bytes, "inviaFileMtom request")
        if isinstance(payload, SoapFault) or payload.tag != f"{{{ops.INVIO_NS}}}inviaFileMtom":
            raise SoapFormatError(f"inviaFileMtom request: body is not {{{ops.INVIO_NS}}}inviaFileMtom")
        documento = payload.find("documento")
        if documento is None:
            raise SoapFormatError("inviaFileMtom request: <documento> is missing")
        document = resolve_xop(documento, attachments, "inviaFileMtom request")
        # Validate the message as the XOP infoset: the attachment stands in as base64 text.
        check = etree.fromstring(etree.tostring(payload))
        placeholder = check.find("documento")
        assert placeholder is not None
        for child in list(placeholder):
            placeholder.remove(child)
        placeholder.text = "AA=="
        if not self._invio_schema.validate(check):
            log = schema_errors(self._invio_schema)
            raise SoapFormatError(f"inviaFileMtom request does not follow the WSDL schema: {'; '.join(log)}")
        return payload, document

    # ---- receipt services ----------------------------------------------------------------------

    async def _query(
        self, request: web.Request, operation: str, namespace: str
    ) -> tuple[SimUser, ops.ReceiptQuery] | web.Response:
        if (early := await self._misbehave(operation)) is not None:
            return early
        account = self._authenticate(request)
        if account is None:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="SistemaTS"'})
        try:
            query = ops.parse_query(await request.read(), namespace, operation)
        except SoapFormatError as exc:
            return _soap(fault_envelope("Client", str(exc)), status=500)
        return account, query

    def _mine(self, account: SimUser, protocollo: str | None) -> Submission | None:
        owner = account.user_hash.hex()
        return next((s for s in self.submissions if s.owner == owner and s.protocollo == protocollo), None)

    def _status(self, submission: Submission) -> ops.SendStatus:
        stato = submission.stato(self.behaviour.polls_in_progress, self.behaviour.final_stato)
        processing = submission.processing
        done = stato in (2, 3)
        errors = len(processing.errors) if done else 0
        return ops.SendStatus(
            submission.protocollo,
            submission.received_at.strftime(ops.TS_DATETIME),
            stato,
            STATO_DESCRIPTIONS.get(stato, "") + (f": {processing.reason}" if stato == 5 and processing.reason else ""),
            processing.documents,
            processing.documents - errors if done else 0,
            0,
            errors,
        )

    async def _esito(self, request: web.Request) -> web.StreamResponse:
        checked = await self._query(request, "EsitoInvii", ops.ESITO_NS)
        if isinstance(checked, web.Response):
            return checked
        account, query = checked
        if (refused := self._pincode_refusal(account, query)) is not None:
            return _soap(ops.build_answer(ops.ESITO_NS, "EsitoInviiResponse", refused))
        if query.protocollo:
            found = self._mine(account, query.protocollo)
            if found is not None:
                found.polls += 1
            listed = [found] if found is not None else []
        else:
            start, end = query.data_inizio or date.min, query.data_fine or date.max
            owner = account.user_hash.hex()
            listed = [s for s in self.submissions if s.owner == owner and start <= s.received_at.date() <= end]
        if not listed:
            answer = ops.QueryAnswer(
                "1", "Nessun invio trovato", negatives=(ops.NegativeOutcome("WS01", "NESSUN INVIO TROVATO (simulato)"),)
            )
        else:
            answer = ops.QueryAnswer("0", "", statuses=tuple(self._status(s) for s in listed))
        return _soap(ops.build_answer(ops.ESITO_NS, "EsitoInviiResponse", answer))

    def _pincode_refusal(self, account: SimUser, query: ops.ReceiptQuery) -> ops.QueryAnswer | None:
        try:
            check_pincode(account, self._key_pem, query.pincode_cifrato)
        except IntakeRefusal as refusal:
            return ops.QueryAnswer(
                "1", refusal.description, negatives=(ops.NegativeOutcome(refusal.code, refusal.description),)
            )
        return None

    async def _about_one(self, request: web.Request, operation: str, namespace: str, part: str,
                         answer_for: Callable[[Submission], ops.QueryAnswer]) -> web.StreamResponse:
        """A query about one protocol (DettaglioErrori, RicevutaPdf): the request and its pincode checked and the
        protocol looked up among the caller's own; `answer_for` answers about the submission found."""
        checked = await self._query(request, operation, namespace)
        if isinstance(checked, web.Response):
            return checked
        account, query = checked
        answer = self._pincode_refusal(account, query)
        if answer is None:
            found = self._mine(account, query.protocollo)
            answer = answer_for(found) if found is not None else ops.QueryAnswer(
                "1", "", negatives=(ops.NegativeOutcome("WS01", "PROTOCOLLO NON TROVATO"),))
        return _soap(ops.build_answer(namespace, f"{operation}Response", answer, part))

    async def _dettaglio(self, request: web.Request) -> web.StreamResponse:
        return await self._about_one(request, "DettaglioErrori", ops.DETTAGLIO_NS, "csv", self._error_report)

    def _error_report(self, found: Submission) -> ops.QueryAnswer:
        stato = self._status(found).stato
        if stato == 3:
            return ops.QueryAnswer("0", "", binary=build_error_report("CF-NON-RIPORTATO", found.processing.errors))
        if stato in (5, 9):
            return ops.QueryAnswer(
                "1", "", negatives=(ops.NegativeOutcome("WS37", "FILE SCARTATO, CONTROLLARE LA RICEVUTA PDF"),)
            )
        return ops.QueryAnswer("1", "", negatives=(ops.NegativeOutcome("WS36", "CSV NON PRESENTE (simulato)"),))

    async def _pdf(self, request: web.Request) -> web.StreamResponse:
        return await self._about_one(request, "RicevutaPdf", ops.PDF_NS, "pdf", self._receipt)

    def _receipt(self, found: Submission) -> ops.QueryAnswer:
        status = self._status(found)
        pdf = receipt_pdf(
            [
                "Sistema Tessera Sanitaria - ricevuta (SIMULATORE)",
                f"Protocollo: {found.protocollo}",
                f"File: {found.file_name}",
                f"Data invio: {status.data_invio}",
                f"Stato: {status.stato} {status.descrizione}",
                f"Documenti inviati {status.n_inviati}, accolti {status.n_accolti}, errori {status.n_errori}",
            ]
        )
        return ops.QueryAnswer("0", "", binary=pdf)

    # ---- admin ---------------------------------------------------------------------------------

    async def _set_behaviour(self, request: web.Request) -> web.Response:
        try:
            self.behaviour = Behaviour.from_json(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(self.behaviour))

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "submissions": [s.public() for s in self.submissions],
                "intake_calls": self.intake_calls,
                "refusals": self.refusals,
            }
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.submissions.clear()
        self.refusals.clear()
        self.intake_calls = 0
        self.behaviour = Behaviour()
        return web.json_response({"reset": True})


def _soap(data: bytes, status: int = 200) -> web.Response:
    return web.Response(body=data, status=status, headers={"Content-Type": SOAP_CONTENT_TYPE})

