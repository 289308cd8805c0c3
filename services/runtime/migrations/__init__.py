"""Schema migrations: the SQL files of this folder, applied in order, each exactly once.

Files are named ``NNNN_<name>.sql`` (four digits, lower-case name). ``migrate`` applies the ones not
yet recorded in ``schema_migrations``, each in its own transaction together with its record, so a
failing file leaves nothing half-applied. Several services start at once, so the whole run holds a
session advisory lock: the second process waits, then finds nothing left to do.

An applied file is history: if its checksum changes, or it disappears, ``migrate`` refuses to run
(``MigrationError`` naming the file) instead of guessing; write a new file instead. Two files with
the same number (parallel work) are refused too.

Number ranges: 0001-0009 event store, outbox, consumer dedup; 0010+ the services.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from services.runtime.locks import MIGRATION_LOCK_KEY

MIGRATIONS_DIR = Path(__file__).resolve().parent
FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migration files and the database's record of them disagree."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The ``NNNN_*.sql`` files of ``directory`` in version order (no I/O besides reading them)."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name}: name must look like 0012_add_files.sql")
        raw = path.read_bytes()
        migration = Migration(version=int(match.group(1)), name=match.group(2), path=path,
                              sql=raw.decode("utf-8"), checksum=hashlib.sha256(raw).hexdigest())
        if migration.version in found:
            raise MigrationError(f"migration number {match.group(1)} is used twice: "
                                 f"{found[migration.version].path.name} and {path.name}")
        found[migration.version] = migration
    return [found[v] for v in sorted(found)]


def check_history(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> list[Migration]:
    """Pending migrations, after checking the applied ones are unchanged.

    ``applied``: version -> (name, checksum) as recorded in schema_migrations.
    """
    by_version = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        current = by_version.get(version)
        if current is None:
            raise MigrationError(f"migration {version:04d}_{name}.sql was applied but is missing from "
                                 f"{MIGRATIONS_DIR}")
        if current.checksum != checksum:
            raise MigrationError(f"migration {current.path.name} changed after it was applied "
                                 f"(checksum {checksum[:12]} in the database, "
                                 f"{current.checksum[:12]} on disk); "
                                 "add a new migration instead of editing an applied one")
    return [m for m in migrations if m.version not in applied]


async def migrate(target: asyncpg.Pool | asyncpg.Connection,
                  directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Applies the pending migrations; returns the file names applied (empty when up to date)."""
    migrations = discover(directory)
    if isinstance(target, asyncpg.Pool):
        async with target.acquire() as conn:
            return await _migrate(conn, migrations)
    return await _migrate(target, migrations)


async def _migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    if conn.is_in_transaction():
        raise MigrationError("migrate() needs a connection outside any transaction")
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(SCHEMA_MIGRATIONS)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        pending = check_history(migrations, {r["version"]: (r["name"], r["checksum"]) for r in rows})
        applied: list[str] = []
        for migration in pending:
            async with conn.transaction():
                try:
                    await conn.execute(migration.sql)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"migration {migration.path.name} failed: {exc}") from exc
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version, migration.name, migration.checksum)
            applied.append(migration.path.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
