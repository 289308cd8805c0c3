"""The official schema of the 730 file ("file allegato" of the asynchronous TS submission).

The XSD files here are byte-for-byte copies of the ones Sistema TS publishes
(TracciatiWS/WS_AsincronoInvioDati730/schemaFileAllegatoInvio/), kept in the product so that
run-time validation does not depend on anything outside the distribution. A new layout year is
a new file plus one line in `SCHEMA_FILES`, not new code.
"""

from __future__ import annotations

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent

# The size limit of one 730 zip: "dimensione massima di 5 MByte" (ws-asincrono-spec-v2.5 4.5); over it
# TS answers error 108. The one definition: the formatter splits below it, the gateway and the simulator
# refuse above it, the settings cap ts_max_zip_bytes at it.
MAX_ZIP_BYTES = 5 * 1024 * 1024

# layout version of FLUSSO_730 -> XSD file; "2020" is TS ver_20201218 (pagamentoTracciato,
# tipoDocumento, flagOpposizione, aliquotaIVA, naturaIVA added: changeLog.txt).
SCHEMA_FILES: dict[str, str] = {
    "2020": "730_precompilata.xsd",
}


def cf_proprietario_room(max_zip_bytes: int) -> int:
    """Bytes the formatter leaves free in a zip it writes without cfProprietario, for the TS gateway to add the one
    the operator types at the send (services.ts_gateway.operations.with_cf_proprietario): the element, at most 291
    bytes (cfType: 256 characters), and a ten-thousandth of the limit as margin for the XML deflated again in one
    pass (measured at 5 MB: 1.4-1.5 KB shorter than the formatter's, whose stream is flushed near the limit)."""
    return 320 + max_zip_bytes // 10_000


class UnknownLayoutVersion(LookupError):
    """No 730 schema is registered for the requested layout version."""


def schema_path(version: str) -> Path:
    try:
        return SCHEMA_DIR / SCHEMA_FILES[version]
    except KeyError:
        known = ", ".join(sorted(SCHEMA_FILES))
        raise UnknownLayoutVersion(
            f"FLUSSO_730 layout version {version!r} is unknown (known: {known})") from None
