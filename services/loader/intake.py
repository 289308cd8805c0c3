"""Source intake ("Fonti dati"): store the CUP's records, idempotently by source_id, in bulk.

The same content again is a no-op (a duplicate); new content under a known source_id is a
correction: the stored row is replaced and its `revision` goes up. Snapshots copy rows, so a
correction never alters a snapshot already taken. These are source tables, not the event store:
an upsert is the right tool here.

Bulk path: COPY the batch into a temp table, then ONE `INSERT ... SELECT ... ON CONFLICT (source_id)
DO UPDATE ... WHERE content_hash differs`. The content hash is computed by PostgreSQL from the row
(sha256 of its text form), so no Python work per record beyond building the tuple.
Inside one batch the same source_id twice: the later record wins, the earlier counts as a duplicate.
"""

from __future__ import annotations

import csv
import functools
import json
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import SchemaValidator

from contracts.jsontypes import rust_only
from contracts.sources import (
    SOURCE_MODELS,
    DeliveredService,
    SourceModel,
)


@dataclass(frozen=True)
class SourceKind:
    name: str  # the key of contracts.sources.SOURCE_MODELS
    model: type[SourceModel]
    table: str
    columns: tuple[str, ...]  # model fields, in model order = table columns
    json_columns: frozenset[str] = frozenset()


def _kind(name: str, table: str, json_columns: frozenset[str] = frozenset()) -> SourceKind:
    model = SOURCE_MODELS[name]
    return SourceKind(name, model, table, tuple(model.model_fields), json_columns)


KINDS: dict[str, SourceKind] = {
    "delivered-service": _kind("delivered-service", "source_service"),
    "payment-document": _kind("payment-document", "source_payment_document", frozenset({"items"})),
    "intramoenia-booking": _kind("intramoenia-booking", "source_intramoenia_booking"),
}


@dataclass
class IntakeResult:
    stored: int = 0
    duplicates: int = 0
    corrected: int = 0

    def __iadd__(self, other: IntakeResult) -> IntakeResult:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.corrected += other.corrected
        return self


@dataclass(frozen=True)
class Rejection:
    """A source record that cannot be stored: `record` is its source_id (or `line N` without one)."""

    record: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.record}: field {self.field}: {self.message}"


@dataclass
class ImportResult:
    intake: IntakeResult = field(default_factory=IntakeResult)
    rejections: list[Rejection] = field(default_factory=list)
    lines: int = 0


def validate_raw(kind: str, raw: dict[str, Any], where: str | None = None) -> tuple[SourceModel | None,
                                                                                    list[Rejection]]:
    """Validate one raw record; on failure one Rejection per pydantic error, naming record and field."""
    model = KINDS[kind].model
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        source_id = raw.get("source_id")
        record = str(source_id) if source_id else (where or "record without source_id")
        rejections = [Rejection(record, ".".join(str(p) for p in err["loc"]) or "(record)", err["msg"])
                      for err in exc.errors(include_url=False)]
        return None, rejections


def _adapter(model: type[SourceModel], field: str) -> TypeAdapter[Any]:
    annotation = model.model_fields[field].annotation
    if annotation is None:
        raise TypeError(f"{model.__name__}.{field} has no type")
    return TypeAdapter(annotation)


@functools.cache
def row_maker(kind: str) -> Callable[[SourceModel], tuple[Any, ...]]:
    """The record as the tuple of its table's columns (`KINDS[kind].columns`), JSON columns as text: one
    C-level attribute fetch for the plain columns (intake builds millions of these)."""
    return _rows(kind, operator.attrgetter(*KINDS[kind].columns))  # a tuple of them (a table has more than one)


@functools.cache
def body_row_maker(kind: str) -> Callable[[bytes], tuple[Any, ...]]:
    """The row of a message body (JSON bytes) as `row_maker` makes it from the validated model, without the model.

    Batched intake validates some 20,000 bodies a second. This validator is the contract model's own pydantic
    core schema (its fields, types, patterns, lengths, ranges, enums, extra="forbid") less the model instance
    (the row is taken from the validated fields) and with the Python validators of contracts.jsontypes done by
    pydantic-core (`rust_only`): it accepts what the model accepts, with the same values, or refuses; it raises
    ValidationError for anything it refuses, and the caller then asks the model itself (broker.parse_valid),
    whose verdict and messages are the contract's. tests/unit/test_intake_rows.py holds the two together."""
    spec = KINDS[kind]
    schema = spec.model.__pydantic_core_schema__
    if schema.get("type") != "model" or schema.get("custom_init") or schema.get("post_init") \
            or schema.get("root_model") or schema["schema"].get("type") != "model-fields":
        raise TypeError(f"{spec.model.__name__} validates more than its fields: validate it as the model")
    # Strings cached by pydantic-core: the keys only. The values (ids, names, codes) rarely repeat, and caching
    # each of them cost more than it saved (~0.5 us a body); the values are equal either way.
    config = {**(schema.get("config") or {}), "cache_strings": "keys"}
    validate = SchemaValidator(rust_only(schema["schema"]), config).validate_json  # type: ignore[arg-type]
    make = _rows(kind, operator.itemgetter(*spec.columns))

    def row(body: bytes) -> tuple[Any, ...]:
        return make(validate(body)[0])  # (fields, extra, fields set): extra is forbidden
    return row


def _rows(kind: str, fetch: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], tuple[Any, ...]]:
    """`fetch` (the columns of one record, in table order) with the JSON columns written as text."""
    spec = KINDS[kind]
    if not spec.json_columns:
        return fetch
    # The JSON text is part of the content hash (upsert_sql): it must stay the text intake has always
    # written, json.dumps(..., separators=(",", ":")) with ASCII escapes; pydantic writes it in Rust.
    dumpers = [(i, _adapter(spec.model, c)) for i, c in enumerate(spec.columns) if c in spec.json_columns]

    def make(record: Any) -> tuple[Any, ...]:
        row = list(fetch(record))
        for i, adapter in dumpers:
            row[i] = adapter.dump_json(row[i], ensure_ascii=True).decode()
        return tuple(row)
    return make


def json_text(value: Sequence[BaseModel]) -> str:
    """A JSON column's text as intake writes it (for comparison: `row_maker` writes the same, faster)."""
    return json.dumps([item.model_dump(mode="json") for item in value], separators=(",", ":"))


@functools.cache
def staging(kind: str) -> tuple[str, str]:
    """(DDL of the kind's staging table, its name): `ordinal` + the table's columns, JSON columns as text.

    JSON columns travel as text through it: COPY is binary, and pools with a text json codec
    (services.runtime.db) have no binary jsonb encoder. CREATE ... AS (not LIKE): the staging table must
    not inherit NOT NULL content_hash. Temporary, emptied at every commit."""
    spec = KINDS[kind]
    temp = f"staged_{spec.table}"
    temp_cols = ", ".join(f"{c}::text AS {c}" if c in spec.json_columns else c for c in spec.columns)
    return (f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DELETE ROWS AS "
            f"SELECT 0::bigint AS ordinal, {temp_cols} FROM {spec.table} WITH NO DATA"), temp


@functools.cache
def upsert_sql(kind: str, *, latest_only: bool) -> str:
    """The one statement that applies the staged records (at most one per source_id, or with
    `latest_only` the highest ordinal of each): new -> stored (revision 1), new content -> corrected
    (revision + 1), same content -> nothing. Returns (stored, corrected).

    The content hash is computed by PostgreSQL from the row (sha256 of its text form): the same
    expression wherever records are stored, so a record is a duplicate whichever way it came."""
    spec = KINDS[kind]
    _, temp = staging(kind)
    col_list = ", ".join(spec.columns)
    insert_cols = ", ".join(f"{c}::jsonb" if c in spec.json_columns else c for c in spec.columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in spec.columns if c != "source_id")
    pick = f"DISTINCT ON (source_id) {col_list}" if latest_only else col_list
    order = "ORDER BY source_id, ordinal DESC" if latest_only else ""
    return f"""
        WITH incoming AS (
            SELECT {pick}, {content_hash(kind)} AS content_hash
            FROM {temp} {order}
        ), upserted AS (
            INSERT INTO {spec.table} AS s ({col_list}, revision, content_hash, received_at)
            SELECT {insert_cols}, 1, content_hash, now() FROM incoming
            ON CONFLICT (source_id) DO UPDATE
               SET {updates}, revision = s.revision + 1, content_hash = EXCLUDED.content_hash,
                   received_at = EXCLUDED.received_at
             WHERE s.content_hash <> EXCLUDED.content_hash
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted) AS stored,
               count(*) FILTER (WHERE NOT inserted) AS corrected
        FROM upserted"""


def content_hash(kind: str) -> str:
    """The SQL expression of a staged row's content hash (columns of the staging table)."""
    return f"sha256(convert_to(ROW({', '.join(KINDS[kind].columns)})::text, 'UTF8'))"


async def stage(conn: asyncpg.Connection, kind: str, records: Sequence[SourceModel], *, ordered: bool = True) -> None:
    """COPY `records` into the kind's staging table, emptied first; `ordered`: their positions go in
    `ordinal` (a statement that reads the order needs them). Inside a transaction."""
    await stage_rows(conn, kind, list(map(row_maker(kind), records)), ordered=ordered)


async def stage_rows(conn: asyncpg.Connection, kind: str, rows: Sequence[tuple[Any, ...]], *,
                     ordered: bool = True) -> None:
    """`stage` of records already made rows (`row_maker`, `body_row_maker`)."""
    ddl, temp = staging(kind)
    await conn.execute(f"{ddl}; DELETE FROM {temp}")  # one round trip; empty unless this transaction staged
    if ordered:
        await conn.copy_records_to_table(temp, columns=["ordinal", *KINDS[kind].columns],
                                         records=[(i, *r) for i, r in enumerate(rows)])
    else:
        await conn.copy_records_to_table(temp, columns=list(KINDS[kind].columns), records=rows)


async def store(conn: asyncpg.Connection, kind: str, records: Sequence[SourceModel]) -> IntakeResult:
    """Store one batch of already-validated records of one kind (see module doc for the semantics)."""
    spec = KINDS[kind]
    if not records:
        return IntakeResult()
    for r in records:
        if not isinstance(r, spec.model):
            raise TypeError(f"{kind} intake got a {type(r).__name__} (source_id {getattr(r, 'source_id', '?')})")
    async with conn.transaction():
        await stage(conn, kind, records)
        row = await conn.fetchrow(upsert_sql(kind, latest_only=True))
    stored, corrected = int(row["stored"]), int(row["corrected"])
    return IntakeResult(stored=stored, duplicates=len(records) - stored - corrected, corrected=corrected)


async def store_services(conn: asyncpg.Connection, records: Sequence[DeliveredService]) -> IntakeResult:
    return await store(conn, "delivered-service", records)


# --- CSV import (`flows sources import`) -------------------------------------------------------

CSV_DELIMITER = ";"


def csv_header(kind: str) -> list[str]:
    return [c for c in KINDS[kind].columns if c != "schema_version"]


def csv_value(value: Any) -> str:
    """How a model value is written in the import CSV (the inverse of `_raw_from_csv`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps([v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value],
                          separators=(",", ":"))
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


@functools.cache
def _json_types(kind: str) -> dict[str, str]:
    """Field -> its JSON type in the published schema ('boolean', 'integer', ...; null left out)."""
    types: dict[str, str] = {}
    for name, prop in KINDS[kind].model.model_json_schema()["properties"].items():
        options = [o.get("type") for o in prop.get("anyOf", [prop])]
        types[name] = next((t for t in options if t not in (None, "null")), "string")
    return types


def _csv_cell(json_type: str, cell: str) -> Any:
    """A CSV cell as the JSON value it stands for (`true`, `12`); left as text when it is not one,
    so validation names the field."""
    if json_type == "boolean" and cell in ("true", "false"):
        return cell == "true"
    if json_type == "integer" and cell.lstrip("-").isdigit() and cell.isascii():
        return int(cell)
    return cell


def _raw_from_csv(kind: str, row: dict[str, str]) -> dict[str, Any]:
    """Empty cell = field absent (its default applies); JSON columns are parsed, booleans and integers
    read as such: the record is then validated as if it had come as JSON."""
    raw: dict[str, Any] = {}
    types = _json_types(kind)
    for key, cell in row.items():
        if cell == "" or cell is None:
            continue
        if key in KINDS[kind].json_columns:
            try:
                raw[key] = json.loads(cell)
            except json.JSONDecodeError:
                raw[key] = cell  # pydantic then names the field
        else:
            raw[key] = _csv_cell(types.get(key, "string"), cell)
    return raw


def _csv_chunks(kind: str, path: Path, chunk_size: int) -> Iterator[list[tuple[int, dict[str, str]]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=CSV_DELIMITER)
        allowed = set(KINDS[kind].columns)
        unknown = [c for c in reader.fieldnames or [] if c not in allowed]
        if not reader.fieldnames or unknown:
            raise ValueError(f"{path}: header has unknown columns {unknown} for {kind}; "
                             f"expected a subset of {';'.join(csv_header(kind))}")
        chunk: list[tuple[int, dict[str, str]]] = []
        for row in reader:
            chunk.append((reader.line_num, row))
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


async def import_csv(conn: asyncpg.Connection, kind: str, path: Path, chunk_size: int = 5000) -> ImportResult:
    """Stream a CSV (header = the model's field names, `;`-separated) into the source tables, in chunks.

    Invalid rows are rejected (named by source_id or line) and the valid ones are still stored."""
    result = ImportResult()
    for chunk in _csv_chunks(kind, path, chunk_size):
        valid: list[SourceModel] = []
        for line, row in chunk:
            if None in row:
                result.rejections.append(Rejection(row.get("source_id") or f"line {line}", "(record)",
                                                   "more cells than header columns"))
                continue
            model, rejections = validate_raw(kind, _raw_from_csv(kind, row), where=f"line {line}")
            result.rejections.extend(rejections)
            if model is not None:
                valid.append(model)
        result.lines += len(chunk)
        result.intake += await store(conn, kind, valid)
    return result
