"""The flow read models: the instance list the operator searches, and the files of each instance.

Both are projections of the `instance-<n>` streams, applied inline in the append transaction by
every service that writes those streams (so `flows instances` reads its writes), and rebuildable
by `flows replay`. Every column derives from the events alone (times are `recorded_at`, never
now()), which is what makes a rebuild equal to the live table.

The rows keep data, not sentences: the pages and the CLI write the words, each in its reader's language (the
console Italian, the CLI English). `summary` is the text the event that last had one carries (a failed load's
summary, a format failure's reasons, Sistema TS's reason), as its producer wrote it; a deletion has none and
leaves it as it was. A deletion is `deleted_by` and `deletion_reason` (the reason as given, NULL when none was),
as the `flows.instance-deleted` event has them (migration 0072 moved the rows written before into that shape).
`has_esiti` and `has_files` say whether the instance's files (instance_files) hold an esito (kind `feedback` or
`ts-errors`: services/runtime/esiti.py) and whether they hold any other file (formatted files, a 730's zips, Sistema
TS's receipts): what the console's list offers to download on each row, read with the row rather than looked up in
instance_files for each row of the page (migration 0077 filled them for the rows written before). A file that
replaces another of the same name replaces its kind too: an event's files are weighed with those kept from before.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from contracts import flows
from contracts.states import TRANSITIONS, IllegalTransition, InstanceState, fold, target_of
from services.runtime.db import dumps_json, loads_json
from services.runtime.esiti import FEEDBACK_KINDS
from services.runtime.eventstore import StoredEvent

INSTANCE_STREAM_PREFIX = "instance-"


def instance_stream(instance: int) -> str:
    return f"{INSTANCE_STREAM_PREFIX}{instance}"


def instance_state(history: list[StoredEvent]) -> InstanceState | None:
    """The state an instance's history leads to (the writers' view; the read model may lag)."""
    return fold([(e.type, e.data) for e in history])


@functools.lru_cache(maxsize=256)
def _moves_cached(event_type: str, outcome: object) -> dict[str, str]:
    payload = {} if outcome is None else {"instance_outcome": outcome}
    moves = {}
    for current in InstanceState:
        try:
            state = target_of(event_type, payload, current)
        except IllegalTransition:
            continue  # the writer enforces transitions; the read model records, never refuses
        if state is not None and state is not current:
            moves[current.value] = state.value
    return moves


def _moves(event_type: str, outcome: object) -> dict[str, str]:
    """{current state: the state `event_type` leads to} for every state it changes (the read model's view of
    the transition table: an illegal move, or none, keeps the state)."""
    if event_type not in TRANSITIONS:
        return {}
    return _moves_cached(event_type, None if outcome is None else str(outcome))


class InstanceList:
    """One row per instance: the columns of the seed's Figure 6, plus the last event."""

    name = "instance_list"
    tables = {
        "instance_list": """
            CREATE TABLE IF NOT EXISTS instance_list (
                instance        bigint PRIMARY KEY,
                flow_type       text NOT NULL,
                version         text NOT NULL,
                ente            text NOT NULL,
                source_instance bigint,
                created_at      timestamptz NOT NULL,
                period_start    date NOT NULL,
                period_end      date NOT NULL,
                state           text NOT NULL,
                state_since     timestamptz NOT NULL,
                requested_by    text NOT NULL,
                scheduled_at    timestamptz,
                counts          jsonb,
                errors          integer,
                warnings        integer,
                summary         text,
                last_event      text NOT NULL,
                events          integer NOT NULL,
                request_id      uuid,
                deleted_by      text,
                deletion_reason text,
                has_esiti       boolean NOT NULL DEFAULT false,
                has_files       boolean NOT NULL DEFAULT false
            );
            CREATE INDEX IF NOT EXISTS instance_list_request_id ON instance_list (request_id)""",
        "instance_files": """
            CREATE TABLE IF NOT EXISTS instance_files (
                instance   bigint NOT NULL,
                name       text NOT NULL,
                kind       text NOT NULL,
                records    bigint NOT NULL,
                bytes      bigint NOT NULL,
                sha256     text NOT NULL,
                media_type text NOT NULL,
                part       integer,
                added_at   timestamptz NOT NULL,
                PRIMARY KEY (instance, name)
            )""",
    }

    async def apply(self, conn: asyncpg.Connection, event: StoredEvent) -> None:
        """The event's change, as statements of its own (a rebuild's replay, an append with several events)."""
        change = self._change(event.stream_id, event.type, event.data, event.recorded_at)
        if change is None:
            return
        kind, args, files = change
        if kind == "created":
            await conn.execute(_CREATED.format(*_places(1, len(args)), after=""), *args)
            return
        # One round trip: the state each current state moves to is computed here for every state (a dict of
        # the moves; a state absent from it stays), and PostgreSQL picks the row's own.
        found = await conn.fetchval(_UPDATED.format(*_places(1, len(args)), after=""), *args)
        if not found:
            return  # an event of an instance this read model never saw created: nothing to attach to
        for file in files:
            await conn.execute(_FILE.format(*_places(1, 9), after=""), args[0], *_file_values(file), args[2])

    def fused(self, stream_id: str, kind: str, data: dict[str, Any], recorded_at: datetime,
              first: int) -> tuple[str, list[Any]] | None:
        """The event's change as CTEs of the append's own statement (services.runtime.eventstore, one event): the
        statements `apply` runs, each done only when the append inserted its event (`FROM appended`), numbered from
        parameter `first`; ("", []) for an event that changes nothing here, None for one `apply` must take (files
        that share a name: the second overwrote the first, which one INSERT cannot do)."""
        change = self._change(stream_id, kind, data, recorded_at)
        if change is None:
            return "", []
        form, args, files = change
        if form == "created":
            return (f"instance_listed AS ({_CREATED.format(*_places(first, len(args)), after='FROM appended')})",
                    args)
        sql = f"instance_listed AS ({_UPDATED.format(*_places(first, len(args)), after='FROM appended')})"
        if not files:
            return sql, args
        if len({file["name"] for file in files}) < len(files):
            return None
        columns = list(zip(*(_file_values(file) for file in files), strict=True))
        places = _places(first + len(args), len(columns))
        return (f"{sql},\ninstance_filed AS ({_FILES.format(*places, instance=f'${first}', at=f'${first + 2}')})",
                [*args, *(list(column) for column in columns)])

    def _change(self, stream_id: str, kind: str, data: dict[str, Any],
                recorded_at: datetime) -> tuple[str, list[Any], list[dict[str, Any]]] | None:
        """("created" or "updated", the statement's parameters, the files to add after an update); None: nothing."""
        if not stream_id.startswith(INSTANCE_STREAM_PREFIX) or not kind.startswith("flows."):
            return None
        instance = int(stream_id.removeprefix(INSTANCE_STREAM_PREFIX))
        if kind in (flows.TYPE_OF[flows.LoadRunning], flows.TYPE_OF[flows.LoadScheduled]):
            state = InstanceState.RUNNING if kind == flows.TYPE_OF[flows.LoadRunning] else InstanceState.SCHEDULED
            return "created", [instance, data["flow_type"], data["version"], data["ente"], recorded_at,
                               data["period"]["start"], data["period"]["end"], state.value, data["requested_by"],
                               data.get("scheduled_at"), kind, data.get("request_id")], []
        files = _files_in(data)
        return "updated", [instance, _moves(kind, data.get("instance_outcome")), recorded_at,
                           data.get("source_instance"), data.get("counts"), data.get("errors"), data.get("warnings"),
                           _summary_of(kind, data), kind, *(_deletion_of(kind, data) or (None, None)),
                           *_kinds_of(files)], files

    def rebuilder(self) -> InstanceListRebuild:
        return InstanceListRebuild()


def _places(first: int, count: int) -> list[str]:
    return [f"${n}" for n in range(first, first + count)]


def _file_values(file: dict[str, Any]) -> tuple[Any, ...]:
    return (file["name"], file["kind"], file["records"], file["bytes"], file["sha256"],
            file.get("media_type", "text/plain"), file.get("part"))


# The read model's statements, their parameters' places ({0}, {1}, ...) filled as `apply` runs them alone ($1, ...) or
# as the append's statement runs them among its own (`fused`, `after` = FROM appended: only when the event went in).
# Every parameter is cast: alone (VALUES) PostgreSQL would take its type from the column, in a SELECT list it would not.
_CREATED = """INSERT INTO instance_list (instance, flow_type, version, ente, created_at, period_start,
                                          period_end, state, state_since, requested_by, scheduled_at,
                                          last_event, events, request_id)
               SELECT {0}::bigint, {1}::text, {2}::text, {3}::text, {4}::timestamptz, {5}::text::date, {6}::text::date,
                      {7}::text, {4}::timestamptz, {8}::text, {9}::text::timestamptz, {10}::text, 1, {11}::text::uuid
               {after}
               ON CONFLICT (instance) DO UPDATE SET state = EXCLUDED.state, state_since = EXCLUDED.state_since,
                   last_event = EXCLUDED.last_event, events = instance_list.events + 1"""
_UPDATED = """UPDATE instance_list SET state = coalesce({1}::jsonb ->> state, state),
                   state_since = CASE WHEN {1}::jsonb ? state THEN {2} ELSE state_since END,
                   source_instance = coalesce({3}, source_instance),
                   counts = coalesce({4}, counts), errors = coalesce({5}, errors),
                   warnings = coalesce({6}, warnings), summary = coalesce({7}, summary),
                   last_event = {8}, events = events + 1, deleted_by = coalesce({9}, deleted_by),
                   deletion_reason = CASE WHEN {9}::text IS NULL THEN deletion_reason ELSE {10} END,
                   has_esiti = CASE WHEN {11}::text[] IS NULL THEN has_esiti ELSE {12}::boolean OR EXISTS (
                       SELECT FROM instance_files f WHERE f.instance = {0}::bigint AND f.kind IN (ESITI)
                       AND f.name <> ALL({11}::text[])) END,
                   has_files = CASE WHEN {11}::text[] IS NULL THEN has_files ELSE {13}::boolean OR EXISTS (
                       SELECT FROM instance_files f WHERE f.instance = {0}::bigint AND f.kind NOT IN (ESITI)
                       AND f.name <> ALL({11}::text[])) END
               {after}
               WHERE instance = {0} RETURNING true""".replace("ESITI", ", ".join(f"'{k}'" for k in FEEDBACK_KINDS))
_FILE_UPSERT = """ON CONFLICT (instance, name) DO UPDATE SET kind = EXCLUDED.kind, records = EXCLUDED.records,
                       bytes = EXCLUDED.bytes, sha256 = EXCLUDED.sha256, media_type = EXCLUDED.media_type,
                       part = EXCLUDED.part, added_at = EXCLUDED.added_at"""
_FILE = """INSERT INTO instance_files (instance, name, kind, records, bytes, sha256, media_type, part, added_at)
                   VALUES ({0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}) {after}
                   """ + _FILE_UPSERT
# The files of an update, after it found the row (`instance_listed`: an instance never seen created has none).
_FILES = ("""INSERT INTO instance_files (instance, name, kind, records, bytes, sha256, media_type, part, added_at)
                   SELECT {instance}::bigint, f.name, f.kind, f.records, f.bytes, f.sha256, f.media_type, f.part,
                          {at}::timestamptz
                   FROM unnest({0}::text[], {1}::text[], {2}::bigint[], {3}::bigint[], {4}::text[], {5}::text[],
                               {6}::integer[]) WITH ORDINALITY AS f(name, kind, records, bytes, sha256, media_type,
                                                                    part, n)
                   CROSS JOIN (SELECT FROM instance_listed LIMIT 1) AS found
                   """ + _FILE_UPSERT)


# The rows go in by binary COPY (an array parameter costs asyncpg an isinstance check per element: half of a
# rebuild's write), the instance list through a staging table of the parameters' types, cast on the way in as
# the inline path casts its parameters.
_STAGING = "instance_list_rebuilt"
_STAGE_INSTANCES = f"""
CREATE TEMP TABLE {_STAGING} (instance bigint, flow_type text, version text, ente text, source_instance bigint,
                              created_at timestamptz, period_start text, period_end text, state text,
                              state_since timestamptz, requested_by text, scheduled_at text, counts text,
                              errors int, warnings int, summary text, last_event text, events int, request_id text,
                              deleted_by text, deletion_reason text, has_esiti boolean, has_files boolean)
"""
_WRITE_INSTANCES = f"""
INSERT INTO instance_list (instance, flow_type, version, ente, source_instance, created_at, period_start, period_end,
                           state, state_since, requested_by, scheduled_at, counts, errors, warnings, summary,
                           last_event, events, request_id, deleted_by, deletion_reason, has_esiti, has_files)
SELECT u.instance, u.flow_type, u.version, u.ente, u.source_instance, u.created_at, u.period_start::date,
       u.period_end::date, u.state, u.state_since, u.requested_by, u.scheduled_at::timestamptz, u.counts::jsonb,
       u.errors, u.warnings, u.summary, u.last_event, u.events, u.request_id::uuid, u.deleted_by, u.deletion_reason,
       u.has_esiti, u.has_files
FROM {_STAGING} AS u
"""
_FILE_COLUMNS = ("instance", "name", "kind", "records", "bytes", "sha256", "media_type", "part", "added_at")


# A rebuilt instance_list row: a list in the staging table's column order (indexes below), written by the COPY as
# it is; the state as its text value (a str hashes in C, an enum member in Python), counts as jsonb text.
(_INSTANCE, _FLOW_TYPE, _VERSION, _ENTE, _SOURCE, _CREATED_AT, _PERIOD_START, _PERIOD_END, _STATE, _STATE_SINCE,
 _REQUESTED_BY, _SCHEDULED_AT, _COUNTS, _ERRORS, _WARNINGS, _SUMMARY, _LAST_EVENT, _EVENTS, _REQUEST_ID, _DELETED_BY,
 _DELETION_REASON, _HAS_ESITI, _HAS_FILES) = range(23)


class InstanceListRebuild:
    """`InstanceList` folded in memory: the rows `apply` would leave after the same events, written by two
    binary COPYs and one INSERT ... SELECT instead of two or three statements per event."""

    # Only the instance streams' flows.* events, and only the values the fold reads (``feed_rows``): the
    # payload is decoded whole only where Python decides (summaries made of several fields, files).
    events_where = f"stream_id LIKE '{INSTANCE_STREAM_PREFIX}%' AND type LIKE 'flows.%'"

    def __init__(self) -> None:
        self._rows: dict[int, list[Any]] = {}
        self._files: dict[tuple[int, str], list[Any]] = {}
        # (event type, state before, instance_outcome as copied) -> (state changed, state after), as _step decides it
        self._next: dict[tuple[str, str, str | None], tuple[bool, str]] = {}
        self._instance_of: dict[str, int] = {}  # stream id -> instance (each stream's events come several times)

    @property
    def copy_columns(self) -> str:
        return _COPY_COLUMNS

    def feed_copy(self, rows: list[list[str | None]]) -> None:
        """``feed`` of the rows of ``copy_columns`` (COPY text fields): the same fold, on values PostgreSQL took out
        of the payloads. The fields are never NULL (a NULL would put a backslash in the line and take copy_rows off
        its fast path): '' where the value is NULL, '=' before a text that may be '' (instance_outcome); a creating
        event's eight values in one JSON array (strings or null), '' for the other events. Timestamps stay
        PostgreSQL's text until ``write``."""
        instances, files, creating, steps, loads = self._rows, self._files, _CREATING_STATES, self._next, loads_json
        prefix, numbers = len(INSTANCE_STREAM_PREFIX), self._instance_of
        for stream_id, kind, at, values, source_instance, counts, errors, warnings, summary, outcome, doc in rows:
            instance = numbers.get(stream_id)  # type: ignore[arg-type]
            if instance is None:
                instance = numbers[stream_id] = int(stream_id[prefix:])  # type: ignore[index]
            row = instances.get(instance)
            created = creating.get(kind)  # type: ignore[arg-type]
            if created is not None:
                if row is None:
                    flow_type, version, ente, period_start, period_end, requested_by, scheduled_at, request_id = (
                        loads(values))  # type: ignore[arg-type]
                    instances[instance] = [
                        instance, flow_type, version, ente, None, at, period_start, period_end, created, at,
                        requested_by, scheduled_at, None, None, None, None, kind, 1, request_id, None, None, False,
                        False]
                else:
                    row[_STATE] = created
                    row[_STATE_SINCE] = at
                    row[_LAST_EVENT] = kind
                    row[_EVENTS] += 1
                continue
            if row is None:
                continue
            key = (kind, row[_STATE], outcome)
            step = steps.get(key)  # type: ignore[arg-type]
            if step is None:
                step = steps[key] = _step(kind, row[_STATE], outcome[1:] if outcome else None)  # type: ignore[arg-type,index]
            if step[0]:
                row[_STATE_SINCE] = at
            row[_STATE] = step[1]
            if source_instance:
                row[_SOURCE] = int(source_instance)
            if counts:
                row[_COUNTS] = counts
            if errors:
                row[_ERRORS] = int(errors)
            if warnings:
                row[_WARNINGS] = int(warnings)
            if doc:  # the payload whole: the summary, the deletion and the files as feed() finds them
                data = loads(doc)
                text = _summary_of(kind, data)  # type: ignore[arg-type]
                if text is not None:
                    row[_SUMMARY] = text
                deletion = _deletion_of(kind, data)  # type: ignore[arg-type]
                if deletion is not None:
                    row[_DELETED_BY], row[_DELETION_REASON] = deletion
                for file in _files_in(data):
                    files[(instance, file["name"])] = [
                        instance, file["name"], file["kind"], file["records"], file["bytes"], file["sha256"],
                        file.get("media_type", "text/plain"), file.get("part"), at]
            elif summary:
                row[_SUMMARY] = summary
            row[_LAST_EVENT] = kind
            row[_EVENTS] += 1

    def feed(self, event: StoredEvent) -> None:
        if not event.stream_id.startswith(INSTANCE_STREAM_PREFIX) or not event.type.startswith("flows."):
            return
        data = event.data
        instance = int(event.stream_id.removeprefix(INSTANCE_STREAM_PREFIX))
        row = self._rows.get(instance)
        at = event.recorded_at
        if event.type in _CREATING:
            created = _CREATING[event.type].value
            if row is None:  # INSERT
                self._rows[instance] = [
                    instance, data["flow_type"], data["version"], data["ente"], None, at, data["period"]["start"],
                    data["period"]["end"], created, at, data["requested_by"], data.get("scheduled_at"), None, None,
                    None, None, event.type, 1, data.get("request_id"), None, None, False, False]
            else:  # ON CONFLICT DO UPDATE
                row[_STATE] = created
                row[_STATE_SINCE] = at
                row[_LAST_EVENT] = event.type
                row[_EVENTS] += 1
            return
        if row is None:
            return
        current = InstanceState(row[_STATE])
        state: InstanceState | None
        try:
            state = target_of(event.type, data, current)
        except IllegalTransition:
            state = current
        if state is not current:
            row[_STATE_SINCE] = at
        row[_STATE] = (state or current).value
        for index, column in ((_SOURCE, "source_instance"), (_ERRORS, "errors"), (_WARNINGS, "warnings")):
            value = data.get(column)  # coalesce($n, column)
            if value is not None:
                row[index] = value
        counts = data.get("counts")
        if counts is not None:
            row[_COUNTS] = dumps_json(counts)  # jsonb text, as feed_rows has it
        summary = _summary(event)
        if summary is not None:
            row[_SUMMARY] = summary
        deletion = _deletion_of(event.type, data)
        if deletion is not None:
            row[_DELETED_BY], row[_DELETION_REASON] = deletion
        row[_LAST_EVENT] = event.type
        row[_EVENTS] += 1
        for file in _files_of(event):  # ON CONFLICT (instance, name) DO UPDATE: the later one wins
            self._files[(instance, file["name"])] = [
                instance, file["name"], file["kind"], file["records"], file["bytes"], file["sha256"],
                file.get("media_type", "text/plain"), file.get("part"), at]

    async def write(self, conn: asyncpg.Connection) -> None:
        rows, files = list(self._rows.values()), list(self._files.values())
        for file in files:  # the files as instance_files will hold them (a name's later file won): the row's kinds
            self._rows[file[0]][_HAS_ESITI if file[2] in FEEDBACK_KINDS else _HAS_FILES] = True
        await _instants(conn, rows, (_CREATED_AT, _STATE_SINCE))
        await _instants(conn, files, (len(_FILE_COLUMNS) - 1,))  # added_at
        await conn.execute(f"DROP TABLE IF EXISTS pg_temp.{_STAGING}")
        await conn.execute(_STAGE_INSTANCES)
        try:  # the rows are in the staging table's column order
            await conn.copy_records_to_table(_STAGING, records=rows, schema_name="pg_temp")
            await conn.execute(_WRITE_INSTANCES)
        finally:
            await conn.execute(f"DROP TABLE pg_temp.{_STAGING}")
        await conn.copy_records_to_table("instance_files", records=files, columns=_FILE_COLUMNS)


_CREATING = {flows.TYPE_OF[flows.LoadRunning]: InstanceState.RUNNING,
             flows.TYPE_OF[flows.LoadScheduled]: InstanceState.SCHEDULED}
_CREATING_STATES = {kind: state.value for kind, state in _CREATING.items()}


async def _instants(conn: asyncpg.Connection, rows: Sequence[list[Any]], columns: Sequence[int]) -> None:
    """The timestamps ``feed_copy`` kept as PostgreSQL's text (timestamptz output, in this session's DateStyle
    and TimeZone) made datetimes, in place, for the binary COPY. ISO output (the default DateStyle) is parsed
    here, to the same instant; any other text (another DateStyle, infinity, BC, a year past 9999) is read back
    by PostgreSQL itself, in the same session: its output read by its input is the same value."""
    parse, odd = datetime.fromisoformat, set()
    for row in rows:
        for column in columns:
            value = row[column]
            if type(value) is str:
                try:
                    row[column] = parse(value)
                except ValueError:
                    odd.add(value)
    if odd:
        exact = dict(await conn.fetch("SELECT t, t::timestamptz FROM unnest($1::text[]) AS t", sorted(odd)))
        for row in rows:
            for column in columns:
                if type(row[column]) is str:
                    row[column] = exact[row[column]]


def _step(kind: str, current: str, outcome: str | None) -> tuple[bool, str]:
    """(state changed, state after) of an event of ``kind`` in state ``current`` (values), as ``feed`` decides it:
    ``target_of`` reads nothing of the payload but ``instance_outcome``."""
    before = InstanceState(current)
    try:
        state = target_of(kind, {"instance_outcome": outcome}, before)
    except IllegalTransition:
        state = before
    return state is not before, (state or before).value


_FORMAT_FAILED, _TS_FEEDBACK, _DELETED = (flows.TYPE_OF[flows.FormatFailed], flows.TYPE_OF[flows.TsFeedbackReceived],
                                          flows.TYPE_OF[flows.InstanceDeleted])


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# InstanceListRebuild.copy_columns, as COPY text, never NULL (feed_copy's docstring). The creating events' columns as
# apply reads them (data[...] as text, ->> of JSON null is NULL as .get() is None), in a JSON array; jsonb counts
# stay text (::jsonb again at the write: the same value); ints as their text, '' for none. The whole payload (doc)
# only where Python must look: the types whose summary or deletion is made, any event whose files / feedback /
# errors_file / receipt_file may hold a file (neither missing, null nor []: models dump their None fields), a
# summary that is not a string; else the summary is the string, '' being no summary (``str(summary) if summary
# else None``).
_CREATING_LIST = ", ".join(_literal(t) for t in _CREATING)
_DOC_TYPES = ", ".join(_literal(t) for t in (_FORMAT_FAILED, _TS_FEEDBACK, _DELETED))


_COPY_COLUMNS = ", ".join([
    "stream_id", "type", "recorded_at",
    f"""CASE WHEN type IN ({_CREATING_LIST}) THEN json_build_array(data->>'flow_type', data->>'version', data->>'ente',
            data#>>'{{period,start}}', data#>>'{{period,end}}', data->>'requested_by', data->>'scheduled_at',
            data->>'request_id')::text ELSE '' END""",
    "coalesce((data->>'source_instance')::bigint::text, '')",
    "coalesce(CASE WHEN jsonb_typeof(data->'counts') <> 'null' THEN (data->'counts')::text END, '')",
    "coalesce((data->>'errors')::int::text, '')", "coalesce((data->>'warnings')::int::text, '')",
    "coalesce(nullif(data->>'summary', ''), '')", "coalesce('=' || (data->>'instance_outcome'), '')",
    f"""coalesce(CASE WHEN type IN ({_DOC_TYPES}) OR data->'files' NOT IN ('null', '[]') OR data->'feedback' <> 'null'
            OR data->'errors_file' <> 'null' OR data->'receipt_file' <> 'null'
            OR coalesce(jsonb_typeof(data->'summary'), 'null') NOT IN ('string', 'null') THEN data::text END, '')"""])


def _summary(event: StoredEvent) -> str | None:
    return _summary_of(event.type, event.data)


def _summary_of(kind: str, data: dict[str, Any]) -> str | None:
    """The event's own text for the `summary` column, or None (the column keeps what it had): a deletion has no
    summary (it is `_deletion_of`'s data). Migration 0072 repeats this in SQL for the rows written before it."""
    if kind == _FORMAT_FAILED:
        return "; ".join(data.get("reasons", []))[:1000]
    if kind == _TS_FEEDBACK and data.get("reason"):
        return str(data["reason"])[:1000]
    if kind == _DELETED:
        return None
    summary = data.get("summary")
    return str(summary) if summary else None


def _deletion_of(kind: str, data: dict[str, Any]) -> tuple[str, str | None] | None:
    """(deleted_by, reason) of a deletion as its event has them (no reason: None), None for any other event."""
    if kind != _DELETED:
        return None
    reason = data.get("reason")
    return str(data.get("deleted_by")), (str(reason) if reason else None)


def _files_of(event: StoredEvent) -> list[dict[str, Any]]:
    return _files_in(event.data)


def _kinds_of(files: list[dict[str, Any]]) -> tuple[list[str] | None, bool, bool]:
    """An event's files as `_UPDATED` takes them: their names (None: no file, the kinds stay), whether they hold an
    esito and whether any other file, by name as instance_files keeps them (a name's later file wins)."""
    if not files:
        return None, False, False
    kinds = {file["name"]: file["kind"] for file in files}
    esiti = sum(kind in FEEDBACK_KINDS for kind in kinds.values())
    return list(kinds), esiti > 0, esiti < len(kinds)


def _files_in(data: dict[str, Any]) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = list(data.get("files") or [])
    for field in ("feedback", "errors_file", "receipt_file"):
        if data.get(field):
            files.append(data[field])
    return files


FLOW_PROJECTIONS = (InstanceList(),)
