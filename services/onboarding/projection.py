"""The onboarding dashboard: one row per request, projected from the `onboarding.*` events.

Applied inline in the append transaction (a CLI `status` right after `add-document` sees it) and
rebuildable from the log (`services.runtime.projections.rebuild_and_diff`) with the same rows:
every value comes from the events, `updated_at` included (the event's `recorded_at`, not now()).

Status follows the last milestone: documents-awaited -> incomplete / non-compliant -> complete ->
taken-in-charge -> switch-scheduled | switch-refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import asyncpg

from services.runtime.eventstore import StoredEvent
from services.runtime.migrations import MIGRATIONS_DIR

TABLE = "onboarding_dashboard"
MIGRATION = MIGRATIONS_DIR / "0040_onboarding_dashboard.sql"

_TOUCH = "last_version = $2, updated_at = $3"


def status_after_completeness(data: Mapping[str, Any]) -> str:
    if data["non_compliant"]:
        return "non-compliant"
    if data["missing"] or data["pending"]:
        return "incomplete"
    return "compliant"


class DashboardProjection:
    name = "onboarding-dashboard"

    def __init__(self) -> None:
        # One DDL for the live table (the migration) and for rebuilds: they cannot drift apart.
        self.tables: Mapping[str, str] = {TABLE: MIGRATION.read_text(encoding="utf-8")}

    async def apply(self, conn: asyncpg.Connection, event: StoredEvent) -> None:
        if not event.type.startswith("onboarding."):
            return
        d, rid, v, at = event.data, event.data["request_id"], event.version, event.recorded_at
        kind = event.type.removeprefix("onboarding.")
        if kind == "request-opened":
            await conn.execute(
                f"INSERT INTO {TABLE} (request_id, kind, structure_name, structure_sts11, municipality_istat, "
                "status, opened_at, last_version, updated_at) "
                "VALUES ($1, $4, $5, $6, $7, 'documents-awaited', $8, $2, $3)",
                rid,
                v,
                at,
                d["kind"],
                d["structure_name"],
                d["structure_sts11"],
                d["municipality_istat"],
                datetime.fromisoformat(d["opened_at"]),
            )
        elif kind == "completeness-changed":
            await conn.execute(
                f"UPDATE {TABLE} SET {_TOUCH}, required = $4, present = $5, compliant = $6, missing = $7, "
                "pending = $8, non_compliant = $9, summary = $10, "
                "status = CASE WHEN completed_on IS NULL THEN $11 ELSE status END WHERE request_id = $1",
                rid,
                v,
                at,
                d["required"],
                d["present"],
                d["compliant"],
                d["missing"],
                d["pending"],
                d["non_compliant"],
                d["summary"],
                status_after_completeness(d),
            )
        elif kind == "request-complete":
            await conn.execute(
                f"UPDATE {TABLE} SET {_TOUCH}, status = 'complete', completed_on = $4 WHERE request_id = $1",
                rid,
                v,
                at,
                _day(d["completed_on"]),
            )
        elif kind == "taken-in-charge":
            await conn.execute(
                f"UPDATE {TABLE} SET {_TOUCH}, status = 'taken-in-charge', taken_on = $4, "
                "expected_from = $5, expected_to = $6 WHERE request_id = $1",
                rid,
                v,
                at,
                _day(d["taken_on"]),
                _day(d["expected_completion_from"]),
                _day(d["expected_completion_to"]),
            )
        elif kind == "switch-scheduled":
            await conn.execute(
                f"UPDATE {TABLE} SET {_TOUCH}, status = 'switch-scheduled', switch_date = $4, "
                "switch_window = $5, switch_note = $6 WHERE request_id = $1",
                rid,
                v,
                at,
                _day(d["switch_date"]),
                f"{d['window_start']}-{d['window_end']}",
                d.get("warning"),
            )
        elif kind == "switch-refused":
            proposal = f"proposed {d['proposed_date']} {d['proposed_window_start']}-{d['proposed_window_end']}"
            await conn.execute(
                f"UPDATE {TABLE} SET {_TOUCH}, status = 'switch-refused', switch_date = NULL, switch_window = NULL, "
                "switch_note = $4 WHERE request_id = $1",
                rid,
                v,
                at,
                "; ".join(d["reasons"]) + f"; {proposal}",
            )
        else:  # document-received / document-assessed: the completeness event that follows carries the counts
            await conn.execute(f"UPDATE {TABLE} SET {_TOUCH} WHERE request_id = $1", rid, v, at)


def _day(value: str) -> date:
    return date.fromisoformat(value)


async def dashboard(conn: asyncpg.Connection | asyncpg.Pool, status: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT * FROM {TABLE} WHERE $1::text IS NULL OR status = $1 ORDER BY opened_at, request_id", status
    )
    return [dict(r) for r in rows]
