"""The ledger of submission parts: what was sent to Sistema TS, and where each part stands.

`PartLedger` is what the submission runner needs; `PgPartLedger` keeps it in PostgreSQL (table
ts_submission_part, migration 0030_ts_gateway.sql), `MemoryPartLedger` in a dict for unit tests.
The same contract test runs against both. Every state change goes through
`submission.check_transition`, under a row lock in PostgreSQL, so two gateway replicas cannot
both move a part to "sending" from a state that forbids it. No credentials are stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from services.ts_gateway.submission import (
    PROTOCOLLO,
    PartKey,
    PartState,
    SubmissionPart,
    check_transition,
)


class UnknownPart(LookupError):
    pass


class PartLedger(Protocol):
    async def register(self, parts: Sequence[SubmissionPart]) -> list[SubmissionPart]: ...
    async def get(self, key: PartKey) -> SubmissionPart: ...
    async def parts_of(self, instance: int) -> list[SubmissionPart]: ...
    async def begin_sending(self, key: PartKey) -> SubmissionPart: ...
    async def record_submitted(self, key: PartKey, protocollo: str) -> SubmissionPart: ...
    async def record_failure(self, key: PartKey, error: str) -> SubmissionPart: ...
    async def record_outcome(
        self, key: PartKey, state: PartState, stato: int | None, reason: str | None
    ) -> SubmissionPart: ...
    async def known_protocolli(self) -> set[str]: ...
    async def reopen_rejected(self, instance: int, conn: asyncpg.Connection | None = None) -> int: ...


def _now() -> datetime:
    return datetime.now(UTC)


def _submitted(key: PartKey, protocollo: str) -> None:
    if not PROTOCOLLO.fullmatch(protocollo):
        raise ValueError(f"{key}: protocollo {protocollo!r} is not 17 digits")


class MemoryPartLedger:
    def __init__(self) -> None:
        self._parts: dict[PartKey, SubmissionPart] = {}

    async def register(self, parts: Sequence[SubmissionPart]) -> list[SubmissionPart]:
        for part in parts:
            self._parts.setdefault(part.key, dataclasses.replace(part, state=PartState.PENDING))
        return [self._parts[part.key] for part in parts]

    async def get(self, key: PartKey) -> SubmissionPart:
        try:
            return self._parts[key]
        except KeyError:
            raise UnknownPart(f"{key} is not registered") from None

    async def parts_of(self, instance: int) -> list[SubmissionPart]:
        return sorted((p for p in self._parts.values() if p.key.instance == instance), key=lambda p: p.key.part)

    async def _move(self, key: PartKey, target: PartState, **changes: Any) -> SubmissionPart:
        part = await self.get(key)
        check_transition(key, part.state, target)
        self._parts[key] = dataclasses.replace(part, state=target, **changes)
        return self._parts[key]

    async def begin_sending(self, key: PartKey) -> SubmissionPart:
        part = await self.get(key)
        return await self._move(
            key, PartState.SENDING, attempts=part.attempts + 1, sending_since=part.sending_since or _now()
        )

    async def record_submitted(self, key: PartKey, protocollo: str) -> SubmissionPart:
        _submitted(key, protocollo)
        return await self._move(key, PartState.WAITING_FEEDBACK, protocollo=protocollo, last_error=None)

    async def record_failure(self, key: PartKey, error: str) -> SubmissionPart:
        part = await self.get(key)
        self._parts[key] = dataclasses.replace(part, last_error=error)
        return self._parts[key]

    async def record_outcome(
        self, key: PartKey, state: PartState, stato: int | None, reason: str | None
    ) -> SubmissionPart:
        return await self._move(key, state, stato=stato, reason=reason)

    async def known_protocolli(self) -> set[str]:
        return {p.protocollo for p in self._parts.values() if p.protocollo} | {
            earlier for p in self._parts.values() for earlier in p.earlier_protocolli}

    async def reopen_rejected(self, instance: int, conn: asyncpg.Connection | None = None) -> int:
        reopened = 0
        for key, part in list(self._parts.items()):
            if key.instance == instance and part.state is PartState.REJECTED:
                self._parts[key] = _reopened(part)
                reopened += 1
        return reopened


def _reopened(part: SubmissionPart) -> SubmissionPart:
    earlier = (*part.earlier_protocolli, part.protocollo) if part.protocollo else part.earlier_protocolli
    return dataclasses.replace(part, state=PartState.PENDING, protocollo=None, stato=None, reason=None,
                               last_error=None, sending_since=None, earlier_protocolli=earlier)


_COLUMNS = (
    "instance, part, zip_sha256, parts, file_name, documents, state, protocollo, attempts, last_error, "
    "sending_since, stato, reason, earlier_protocolli"
)


def _row(record: asyncpg.Record) -> SubmissionPart:
    return SubmissionPart(
        key=PartKey(record["instance"], record["part"], record["zip_sha256"]),
        parts=record["parts"],
        file_name=record["file_name"],
        documents=record["documents"],
        state=PartState(record["state"]),
        protocollo=record["protocollo"],
        attempts=record["attempts"],
        last_error=record["last_error"],
        sending_since=record["sending_since"],
        stato=record["stato"],
        reason=record["reason"],
        earlier_protocolli=tuple(record["earlier_protocolli"]),
    )


class PgPartLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def register(self, parts: Sequence[SubmissionPart]) -> list[SubmissionPart]:
        async with self._pool.acquire() as conn, conn.transaction():
            # Registering the same parts again (a redelivered command) keeps the existing rows.
            await conn.executemany(
                "INSERT INTO ts_submission_part (instance, part, zip_sha256, parts, file_name, documents, state) "
                "VALUES ($1, $2, $3, $4, $5, $6, 'pending') ON CONFLICT (instance, part, zip_sha256) DO NOTHING",
                [(p.key.instance, p.key.part, p.key.zip_sha256, p.parts, p.file_name, p.documents) for p in parts],
            )
            return [await self._get(conn, part.key) for part in parts]

    async def _get(self, conn: asyncpg.Connection, key: PartKey, lock: bool = False) -> SubmissionPart:
        record = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM ts_submission_part WHERE instance = $1 AND part = $2 AND zip_sha256 = $3"
            + (" FOR UPDATE" if lock else ""),
            key.instance,
            key.part,
            key.zip_sha256,
        )
        if record is None:
            raise UnknownPart(f"{key} is not registered")
        return _row(record)

    async def get(self, key: PartKey) -> SubmissionPart:
        async with self._pool.acquire() as conn:
            return await self._get(conn, key)

    async def parts_of(self, instance: int) -> list[SubmissionPart]:
        async with self._pool.acquire() as conn:
            records = await conn.fetch(
                f"SELECT {_COLUMNS} FROM ts_submission_part WHERE instance = $1 ORDER BY part, created_at", instance
            )
        return [_row(record) for record in records]

    async def _update(self, key: PartKey, target: PartState | None, assignments: str, *args: Any) -> SubmissionPart:
        async with self._pool.acquire() as conn, conn.transaction():
            part = await self._get(conn, key, lock=True)
            if target is not None:
                check_transition(key, part.state, target)
            state = (target or part.state).value
            record = await conn.fetchrow(
                f"UPDATE ts_submission_part SET state = $4, updated_at = now(){assignments} "
                f"WHERE instance = $1 AND part = $2 AND zip_sha256 = $3 RETURNING {_COLUMNS}",
                key.instance,
                key.part,
                key.zip_sha256,
                state,
                *args,
            )
            return _row(record)

    async def begin_sending(self, key: PartKey) -> SubmissionPart:
        return await self._update(
            key, PartState.SENDING, ", attempts = attempts + 1, sending_since = coalesce(sending_since, now())"
        )

    async def record_submitted(self, key: PartKey, protocollo: str) -> SubmissionPart:
        _submitted(key, protocollo)
        return await self._update(key, PartState.WAITING_FEEDBACK, ", protocollo = $5, last_error = NULL", protocollo)

    async def record_failure(self, key: PartKey, error: str) -> SubmissionPart:
        return await self._update(key, None, ", last_error = $5", error)

    async def record_outcome(
        self, key: PartKey, state: PartState, stato: int | None, reason: str | None
    ) -> SubmissionPart:
        return await self._update(key, state, ", stato = $5, reason = $6", stato, reason)

    async def known_protocolli(self) -> set[str]:
        async with self._pool.acquire() as conn:
            records = await conn.fetch(
                "SELECT protocollo FROM ts_submission_part WHERE protocollo IS NOT NULL "
                "UNION SELECT unnest(earlier_protocolli) FROM ts_submission_part"
            )
        return {record["protocollo"] for record in records}

    async def reopen_rejected(self, instance: int, conn: asyncpg.Connection | None = None) -> int:
        """Rejected parts of the instance back to pending (a resend), in the caller's transaction if given."""
        sql = (
            "UPDATE ts_submission_part SET state = 'pending', protocollo = NULL, stato = NULL, reason = NULL, "
            "last_error = NULL, sending_since = NULL, updated_at = now(), earlier_protocolli = CASE "
            "WHEN protocollo IS NULL THEN earlier_protocolli ELSE earlier_protocolli || protocollo END "
            "WHERE instance = $1 AND state = 'rejected'"
        )
        if conn is not None:
            status = await conn.execute(sql, instance)
        else:
            async with self._pool.acquire() as own:
                status = await own.execute(sql, instance)
        return int(status.split()[-1])
