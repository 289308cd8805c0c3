"""Reference data the checks need, shipped as versioned data files in contracts/data.

- `catalogue/<year>.csv`: the outpatient catalogue (nomenclatore) in force from that year on: coding
  (`N` national, a lower-case letter for a regional catalogue), code with dots, description, tariff.
  A new year is a new file, not new code; a layout version takes its year's catalogue (`catalogue_path`).
- `structures.csv`: the STS11 structures of each entity (Ente), for STRUCTURE_NOT_IN_ENTE.

The files are read into plain dataclasses (no I/O at import); `sync_reference_data` copies them into
the `catalogue_item` / `ente_structure` tables so the checks can join them in SQL.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

import asyncpg

from contracts import data_file
from services.runtime.locks import CATALOGUE_SYNC_LOCK_KEY

DATA_DIR = data_file("data")


class ReferenceDataError(ValueError):
    """A reference data file is missing or malformed (names the file, line and field)."""


@dataclass(frozen=True)
class CatalogueItem:
    coding: str
    code: str
    description: str
    tariff: Decimal


@dataclass(frozen=True)
class Structure:
    ente: str
    sts11: str
    name: str
    structure_type: str


def _rows(path: Path, header: list[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise ReferenceDataError(f"reference data file {path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=";")
        if reader.fieldnames != header:
            raise ReferenceDataError(f"{path}: header must be {';'.join(header)}, found {reader.fieldnames}")
        return list(reader)


def catalogue_path(version: str, data_dir: Path = DATA_DIR) -> Path:
    """The catalogue file of a layout version: its year's own when there is one, else the catalogue in force that
    year (the latest year not after it, the earliest when all are later), so a new layout year (or 730 XSD) does not
    need a copy of an unchanged catalogue; a new catalogue is in force from its year on. A version that is not a year
    takes only its own file."""
    own = data_dir / "catalogue" / f"{version}.csv"
    if own.is_file() or not version.isdigit():
        return own
    years = sorted(int(p.stem) for p in (data_dir / "catalogue").glob("*.csv") if p.stem.isdigit())
    if not years:
        return own
    return data_dir / "catalogue" / f"{max((y for y in years if y <= int(version)), default=years[0])}.csv"


@cache
def load_catalogue(version: str, data_dir: Path = DATA_DIR) -> tuple[CatalogueItem, ...]:
    path = catalogue_path(version, data_dir)
    items: list[CatalogueItem] = []
    seen: set[tuple[str, str]] = set()
    for line, row in enumerate(_rows(path, ["coding", "code", "description", "tariff"]), start=2):
        key = (row["coding"], row["code"])
        if key in seen:
            raise ReferenceDataError(f"{path} line {line}: field code: {row['code']} appears twice")
        if len(row["code"]) > 7:
            raise ReferenceDataError(f"{path} line {line}: field code: {row['code']!r} is longer than 7")
        seen.add(key)
        try:
            tariff = Decimal(row["tariff"])
        except ArithmeticError as exc:
            raise ReferenceDataError(f"{path} line {line}: field tariff: {row['tariff']!r} is not a number") from exc
        items.append(CatalogueItem(row["coding"], row["code"], row["description"], tariff))
    return tuple(items)


@cache
def load_structures(data_dir: Path = DATA_DIR) -> tuple[Structure, ...]:
    path = data_dir / "structures.csv"
    return tuple(Structure(r["ente"], r["sts11"], r["name"], r["structure_type"])
                 for r in _rows(path, ["ente", "sts11", "name", "structure_type"]))


def structures_of(ente: str) -> tuple[Structure, ...]:
    return tuple(s for s in load_structures() if s.ente == ente)


@cache
def known_enti() -> frozenset[str]:
    """The entities the platform knows: those with structures in contracts/data/structures.csv (read once, as
    load_structures; asked on every console list page and every user or key checked)."""
    return frozenset(s.ente for s in load_structures())


def unknown_ente_reason(ente: str) -> str | None:
    """Why a load for `ente` cannot be made, or None when the entity is known."""
    known = known_enti()
    if ente in known:
        return None
    return (f"ente {ente} is not a known entity (known: {', '.join(sorted(known))}; "
            "the entities are those of contracts/data/structures.csv)")


@cache
def reference_digest(version: str) -> bytes:
    """sha256 of the rows `sync_reference_data` copies for `version` (its catalogue and every structure)."""
    digest = hashlib.sha256()
    for item in load_catalogue(version):
        digest.update(repr((item.coding, item.code, item.description, str(item.tariff))).encode())
    digest.update(b"\x00structures")
    for s in load_structures():
        digest.update(repr((s.ente, s.sts11, s.name, s.structure_type)).encode())
    return digest.digest()


def digest_sql(version_param: str = "$1") -> str:
    """The stored digest of a layout version's reference data; `version_param` names the version's parameter (a
    caller that reads it inside a statement of its own numbers its parameters)."""
    return f"SELECT digest FROM reference_data_digest WHERE version = {version_param}"


DIGEST_SQL = digest_sql()


async def sync_reference_data(conn: asyncpg.Connection, version: str, stored: bytes | None = None) -> None:
    """Make the tables match the data files (idempotent). Cheap when nothing changed: one read of
    `reference_data_digest` (the digest of the rows last copied for this version), none when the caller read it
    (`stored`); only a different digest (new files shipped) deletes and copies again, after reading it again under
    the sync's lock. Rows edited by hand in these tables are not noticed: the files are the reference data, the
    tables a copy the checks can join."""
    items = load_catalogue(version)
    wanted = reference_digest(version)
    if (stored if stored is not None else await conn.fetchval(DIGEST_SQL, version)) == wanted:
        return
    async with conn.transaction():
        # two loads starting together must not interleave their delete + copy
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CATALOGUE_SYNC_LOCK_KEY)
        if await conn.fetchval(DIGEST_SQL, version) == wanted:
            return  # the other load did it
        await conn.execute("DELETE FROM catalogue_item WHERE version = $1", version)
        await conn.copy_records_to_table(
            "catalogue_item", columns=["version", "coding", "code", "description", "tariff"],
            records=[(version, i.coding, i.code, i.description, i.tariff) for i in items])
        await conn.execute("DELETE FROM ente_structure")
        await conn.copy_records_to_table(
            "ente_structure", columns=["ente", "sts11", "name", "structure_type"],
            records=[(s.ente, s.sts11, s.name, s.structure_type) for s in load_structures()])
        await conn.execute(
            "INSERT INTO reference_data_digest (version, digest) VALUES ($1, $2) "
            "ON CONFLICT (version) DO UPDATE SET digest = EXCLUDED.digest, synced_at = now()", version, wanted)
