"""The onboarding dashboard: one row per request, projected from the `onboarding.*` events.

Applied inline in the append transaction (a CLI `status` right after `add-document` sees it) and
rebuildable from the log (`services.runtime.projections.rebuild_and_diff`) with the same rows:
every value comes from the events, `updated_at` included (the event's `recorded_at`, not now()).

Status follows the last milestone: documents-awaited -> incomplete / non-compliant -> complete ->
taken-in-charge -> switch-scheduled | switch-refused.

The rows keep data, not sentences: the console writes the Italian words, `onboarding status` its English. A
scheduled switch is `switch_date`, `switch_window` ("HH:MM-HH:MM") and `switch_note` (the event's own warning, or
NULL); a refused one is `switch_refused_reasons` (the reasons as the event has them, a JSON list of the onboarding
service's Italian sentences: the event carries no codes), `proposed_date` and `proposed_window` (the earliest valid
slot); a later scheduled switch clears the refusal's columns. A refused new slot does not cancel a switch already
scheduled (the request's history keeps it, services/onboarding/domain.py): the row keeps its date, window and
status `switch-scheduled`, with the refusal beside it; `switch-refused` is the status of a request with no switch
scheduled. The live table's DDL
is migration 0040 then 0073, which added the refusal's columns and moved the rows written before into them (they
had the refusal as one Italian note in `switch_note`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import asyncpg

from services.runtime.db import dumps_json
from services.runtime.eventstore import StoredEvent
from services.runtime.migrations import MIGRATIONS_DIR

TABLE = "onboarding_dashboard"
MIGRATION = MIGRATIONS_DIR / "0040_onboarding_dashboard.sql"
# The switch refusal's columns (ALTER TABLE ... IF NOT EXISTS, then a move of rows in the old shape: none in a new
# or rebuilt table): part of the DDL, so the rebuilt table has the live one's columns.
MIGRATION_REFUSAL = MIGRATIONS_DIR / "0073_onboarding_switch_refusal.sql"

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
        self.tables: Mapping[str, str] = {
            TABLE: MIGRATION.read_text(encoding="utf-8") + "\n" + MIGRATION_REFUSAL.read_text(encoding="utf-8")}

    def rebuilder(self) -> DashboardRebuild:
        return DashboardRebuild()

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
                "switch_window = $5, switch_note = $6, switch_refused_reasons = NULL, proposed_date = NULL, "
                "proposed_window = NULL WHERE request_id = $1",
                rid,
                v,
                at,
                _day(d["switch_date"]),
                f"{d['window_start']}-{d['window_end']}",
                d.get("warning"),
            )
        elif kind == "switch-refused":
            await conn.execute(
                # a switch already scheduled stays (the request's history keeps it: services/onboarding/domain.py)
                f"UPDATE {TABLE} SET {_TOUCH}, status = CASE WHEN switch_date IS NULL THEN 'switch-refused' "
                "ELSE status END, switch_refused_reasons = $4, proposed_date = $5, proposed_window = $6 "
                "WHERE request_id = $1",
                rid,
                v,
                at,
                list(d["reasons"]),
                _day(d["proposed_date"]),
                _proposed_window(d),
            )
        else:  # document-received / document-assessed: the completeness event that follows carries the counts
            await conn.execute(f"UPDATE {TABLE} SET {_TOUCH} WHERE request_id = $1", rid, v, at)


_COLUMNS = ("request_id", "kind", "structure_name", "structure_sts11", "municipality_istat", "status", "required",
            "present", "compliant", "missing", "pending", "non_compliant", "summary", "opened_at", "completed_on",
            "taken_on", "expected_from", "expected_to", "switch_date", "switch_window", "switch_note", "last_version",
            "updated_at", "switch_refused_reasons", "proposed_date", "proposed_window")
_JSON = frozenset({"missing", "pending", "non_compliant", "switch_refused_reasons"})
# The rebuilt rows go in by binary COPY into a staging table of the types the INSERT takes them in (an array
# parameter per column cost asyncpg an isinstance check per element), then one INSERT ... SELECT with the casts.
_STAGING = "onboarding_dashboard_rebuilt"
_STAGING_TYPES = ("text", "text", "text", "text", "text", "text", "int", "int", "int", "text", "text", "text", "text",
                  "timestamptz", "date", "date", "date", "date", "date", "text", "text", "int", "timestamptz", "text",
                  "date", "text")
_STAGE = (f"CREATE TEMP TABLE {_STAGING} ("
          f"{', '.join(f'{c} {t}' for c, t in zip(_COLUMNS, _STAGING_TYPES, strict=True))})")
_WRITE = f"""
INSERT INTO {TABLE} ({", ".join(_COLUMNS)})
SELECT {", ".join(f"u.{c}::jsonb" if c in _JSON else f"u.{c}" for c in _COLUMNS)}
FROM {_STAGING} AS u
"""


class DashboardRebuild:
    """The dashboard folded in memory (the rows `apply` leaves after the same events), written by one binary COPY
    and one INSERT ... SELECT: a rebuild without a round trip per event."""

    events_where = "type LIKE 'onboarding.%'"  # feed() ignores the rest: never fetched for it
    # Only what the fold reads (``feed_rows``): not the metadata, the hashes, the ids a StoredEvent decodes.
    columns = "type, version, recorded_at, data"

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, Any]] = {}

    def feed_rows(self, rows: Sequence[asyncpg.Record]) -> None:
        fold = self._fold
        for kind, version, at, data in rows:
            fold(kind, version, at, data)

    def feed(self, event: StoredEvent) -> None:
        self._fold(event.type, event.version, event.recorded_at, event.data)

    def _fold(self, event_type: str, version: int, at: datetime, d: Any) -> None:
        if not event_type.startswith("onboarding."):
            return
        rid = d["request_id"]
        kind = event_type.removeprefix("onboarding.")
        if kind == "request-opened":
            self._rows[rid] = {
                "request_id": rid, "kind": d["kind"], "structure_name": d["structure_name"],
                "structure_sts11": d["structure_sts11"], "municipality_istat": d["municipality_istat"],
                "status": "documents-awaited", "required": 0, "present": 0, "compliant": 0, "missing": [],
                "pending": [], "non_compliant": {}, "summary": "", "opened_at": datetime.fromisoformat(d["opened_at"]),
                "completed_on": None, "taken_on": None, "expected_from": None, "expected_to": None,
                "switch_date": None, "switch_window": None, "switch_note": None, "last_version": version,
                "updated_at": at, "switch_refused_reasons": None, "proposed_date": None,
                "proposed_window": None}
            return
        row = self._rows.get(rid)
        if row is None:
            return  # UPDATE ... WHERE request_id = $1 of no row
        row.update(last_version=version, updated_at=at)
        if kind == "completeness-changed":
            row.update(required=d["required"], present=d["present"], compliant=d["compliant"], missing=d["missing"],
                       pending=d["pending"], non_compliant=d["non_compliant"], summary=d["summary"])
            if row["completed_on"] is None:
                row["status"] = status_after_completeness(d)
        elif kind == "request-complete":
            row.update(status="complete", completed_on=_day(d["completed_on"]))
        elif kind == "taken-in-charge":
            row.update(status="taken-in-charge", taken_on=_day(d["taken_on"]),
                       expected_from=_day(d["expected_completion_from"]),
                       expected_to=_day(d["expected_completion_to"]))
        elif kind == "switch-scheduled":
            row.update(status="switch-scheduled", switch_date=_day(d["switch_date"]),
                       switch_window=f"{d['window_start']}-{d['window_end']}", switch_note=d.get("warning"),
                       switch_refused_reasons=None, proposed_date=None, proposed_window=None)
        elif kind == "switch-refused":
            row.update(status="switch-refused" if row["switch_date"] is None else row["status"],
                       switch_refused_reasons=list(d["reasons"]), proposed_date=_day(d["proposed_date"]),
                       proposed_window=_proposed_window(d))

    async def write(self, conn: asyncpg.Connection) -> None:
        if not self._rows:
            return
        dumps = dumps_json
        records = [tuple(dumps(r[c]) if c in _JSON and r[c] is not None else r[c] for c in _COLUMNS)
                   for r in self._rows.values()]
        await conn.execute(f"DROP TABLE IF EXISTS pg_temp.{_STAGING}")
        await conn.execute(_STAGE)
        try:
            await conn.copy_records_to_table(_STAGING, records=records, schema_name="pg_temp")
            await conn.execute(_WRITE)
        finally:
            await conn.execute(f"DROP TABLE pg_temp.{_STAGING}")


def _proposed_window(d: Mapping[str, Any]) -> str:
    """The refused switch's proposed window as `switch_window` writes a window ("08:30-10:30"); apply and rebuild
    share it, and migration 0073 writes the same."""
    return f"{d['proposed_window_start']}-{d['proposed_window_end']}"


def _day(value: str) -> date:
    return date.fromisoformat(value)


async def dashboard(conn: asyncpg.Connection | asyncpg.Pool, status: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT * FROM {TABLE} WHERE $1::text IS NULL OR status = $1 ORDER BY opened_at, request_id", status
    )
    return [dict(r) for r in rows]
