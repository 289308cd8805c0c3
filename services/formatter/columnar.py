"""The generic engine: a chunk of source rows (a pyarrow Table) -> fixed-width records, column-wise.

Why column-wise: per-row Python formats ~0.3M records/s for a 30-field record; here every field is
rendered for all rows of a chunk at once into a uint8 matrix (one row per record, one column per
character), so the cost is a few numpy/pyarrow kernels per field, not per value.

Rules applied (the scalar versions are in fixedwidth.py, the tests check both agree):
AN left-aligned space-padded, upper case unless `case = "keep"`, transliterated to ASCII; N
right-aligned zero-padded; AMOUNT `nnnnn,dd`; DATE DDMMYYYY or spaces. A value longer than its
field is an error naming the record and the field; `truncate = true` fields (names) are cut and
reported as a warning.

Grouped layouts (Flusso C): the rows of one chunk are sorted by group (prescription) and a chunk
always holds whole groups (the writer guarantees it). The closing row (99) of each group is
derived here: first row's values, `sum` columns summed, row total = net total.

Derivations (the `derive` vocabulary of layouts.py):
- row_number:      the row number column; the closing row's number on closing rows;
- row_total:       quantity x tariff; on closing rows the net total (rules.net_totals_cents);
- closing_date:    the latest delivery_date of the group (PACC: closing date of the pathway);
- ticket_position: 01 when an exemption code is present, else 02;
- waiting_days:    appointment_date - booking_date, in days.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from services.formatter.fixedwidth import PRINTABLE, transliterate
from services.formatter.layouts import FieldSpec, RecordKind

SPACE, ZERO = 32, 48
_POW10 = 10 ** np.arange(18, -1, -1, dtype=np.int64)


@dataclass(frozen=True)
class FieldProblem:
    """One feedback line: which record, which field, a code and a message (Italian: the operators read it in the
    reasons of a Format failed; record and field name identifiers, the code is one)."""

    record: str
    field: str
    code: str
    message: str


@dataclass
class ProblemLog:
    """Errors and warnings of one run; keeps the first `limit` of each, counts them all."""

    limit: int = 1000
    errors: list[FieldProblem] = field(default_factory=list)
    warnings: list[FieldProblem] = field(default_factory=list)
    error_count: int = 0
    warning_count: int = 0

    def add(self, severity: str, problems: list[FieldProblem], total: int | None = None) -> None:
        target = self.errors if severity == "error" else self.warnings
        room = max(self.limit - len(target), 0)
        target.extend(problems[:room])
        if severity == "error":
            self.error_count += total if total is not None else len(problems)
        else:
            self.warning_count += total if total is not None else len(problems)


@dataclass
class RowSet:
    """The rows of one chunk to render: the detail rows, or the derived closing rows."""

    columns: dict[str, pa.Array]
    n: int
    closing: bool
    derived: dict[str, np.ndarray | pa.Array]
    valid: dict[str, np.ndarray]  # validity masks of derived numeric values
    label: Callable[[int], str]
    # rows that may hold a byte >= 0x80 (to transliterate); None: unknown, check every row
    non_ascii_rows: np.ndarray | None = None
    no_controls: bool = False  # ... and no control character, DEL or backslash
    # closing rows repeat the first row's values: their problems were reported on that row already
    quiet_columns: frozenset[str] = frozenset()


# ---------------------------------------------------------------------------------------------
# helpers on arrow string arrays


def _strings(arr: pa.Array) -> pa.Array:
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return arr
    if pa.types.is_boolean(arr.type):
        return pc.if_else(arr, "true", "false")
    return pc.cast(arr, pa.string())


def fixed_view(arr: pa.Array, length: int) -> np.ndarray:
    """(n, length) uint8 view of a string array whose values are all exactly `length` bytes, no nulls."""
    n = len(arr)
    offsets_dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=offsets_dtype, count=n + 1, offset=arr.offset * offsets_dtype().itemsize)
    if n == 0:
        return np.empty((0, length), dtype=np.uint8)
    data = np.frombuffer(bufs[2], dtype=np.uint8)
    return data[offsets[0]:offsets[0] + n * length].reshape(n, length)


def _lengths(arr: pa.Array) -> np.ndarray:
    return pc.binary_length(arr).fill_null(0).to_numpy(zero_copy_only=False)


def _valid(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return pc.is_valid(arr).to_numpy(zero_copy_only=False)


# "0000".."9999" as 4-byte rows: digits are gathered from this table instead of divided out per digit.
_LUT4 = np.frombuffer("".join(f"{i:04d}" for i in range(10_000)).encode("ascii"), dtype=np.uint8).reshape(10_000, 4)


def _void(matrix: np.ndarray) -> np.ndarray:
    """(n, w) uint8 C-contiguous -> (n,) of w-byte items: row copies become one memcpy each."""
    return matrix.view(np.dtype((np.void, matrix.shape[1]))).reshape(matrix.shape[0])


def digits(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) ASCII digits of non-negative integers (callers check the range first)."""
    values = values.astype(np.int64, copy=False)
    parts = []
    remaining = width
    while remaining > 0:
        parts.append(_LUT4[values % 10_000])
        values = values // 10_000
        remaining -= 4
    parts.reverse()
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return np.ascontiguousarray(out[:, out.shape[1] - width:])


def blank(spec: FieldSpec) -> np.ndarray:
    """What a field holds where it does not apply: spaces, or zeros for numbers."""
    if spec.type == "N":
        return np.full(spec.length, ZERO, dtype=np.uint8)
    if spec.type == "AMOUNT":
        row = np.full(spec.length, ZERO, dtype=np.uint8)
        row[-3] = ord(",")
        return row
    return np.full(spec.length, SPACE, dtype=np.uint8)


class Renderer:
    """Renders the fields of one record kind for a RowSet, reporting problems to a ProblemLog."""

    def __init__(self, record: RecordKind, log: ProblemLog) -> None:
        self.record = record
        self.log = log

    def _report(self, rows: RowSet, mask: np.ndarray, spec: FieldSpec, code: str, message: Callable[[int], str],
                severity: str = "error") -> None:
        if spec.rows == "all" and spec.column in rows.quiet_columns:
            return
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        listed = idx[: max(self.log.limit, 1)]
        problems = [FieldProblem(rows.label(int(i)), f"{self.record.kind}.{spec.name}", code, message(int(i)))
                    for i in listed]
        self.log.add(severity, problems, total=len(idx))

    # -- per type --------------------------------------------------------------------------

    def an(self, spec: FieldSpec, rows: RowSet, arr: pa.Array) -> np.ndarray:
        arr = _strings(arr)
        if spec.map is not None:
            arr = self._mapped(spec, rows, arr)
        arr = self._transliterated(spec, rows, arr)
        if spec.case == "upper":
            arr = pc.ascii_upper(arr)
        if spec.required:
            missing = ~_valid(arr) | (_lengths(arr) == 0)
            self._report(rows, missing, spec, "MISSING", lambda i: "valore obbligatorio mancante")
        if spec.allowed is not None:
            bad = (~pc.is_in(arr, value_set=pa.array(spec.allowed, pa.string())).to_numpy(zero_copy_only=False)
                   & _valid(arr))
            self._report(rows, bad, spec, "NOT_ALLOWED",
                         lambda i: f"{arr[i].as_py()!r} non è tra i valori ammessi {list(spec.allowed or ())}")
        if not rows.no_controls:
            bad = pc.match_substring_regex(arr, r"[\x00-\x1f\x7f\\]").fill_null(False).to_numpy(
                zero_copy_only=False)
            self._report(rows, bad, spec, "CHARSET",
                         lambda i: f"{arr[i].as_py()!r} contiene un carattere di controllo o una barra rovesciata")
        lengths = _lengths(arr)
        too_long = lengths > spec.length
        if too_long.any():
            if spec.truncate:
                self._report(rows, too_long, spec, "TRUNCATED",
                             lambda i: f"{arr[i].as_py()!r} troncato a {spec.length} caratteri", "warning")
            else:
                self._report(rows, too_long, spec, "TOO_LONG",
                             lambda i: f"{arr[i].as_py()!r} ha {lengths[i]} caratteri, il campo ne contiene "
                                       f"{spec.length}")
            arr = pc.utf8_slice_codeunits(arr, 0, spec.length)
            lengths = _lengths(arr)
        if arr.null_count == 0 and len(arr) and lengths.min() == spec.length == lengths.max():
            return fixed_view(arr, spec.length)  # fixed-length codes: no copy, no padding
        padded = pc.ascii_rpad(arr.fill_null(""), width=spec.length, padding=" ")
        if int(_lengths(padded).max(initial=spec.length)) != spec.length:
            # a multi-byte character survived (already reported): keep the record length
            padded = pc.replace_substring_regex(padded, r"[^\x00-\x7f]", "?")
            padded = pc.utf8_slice_codeunits(pc.ascii_rpad(padded, width=spec.length, padding=" "), 0, spec.length)
        return fixed_view(padded, spec.length)

    def _transliterated(self, spec: FieldSpec, rows: RowSet, arr: pa.Array) -> pa.Array:
        if rows.non_ascii_rows is None:
            idx = np.flatnonzero(pc.invert(pc.string_is_ascii(arr).fill_null(True)).to_numpy(zero_copy_only=False))
        elif len(rows.non_ascii_rows) == 0:
            return arr
        else:  # only the few rows the raw chunk flagged
            candidates = rows.non_ascii_rows
            flagged = pc.invert(pc.string_is_ascii(arr.take(pa.array(candidates))).fill_null(True))
            idx = candidates[flagged.to_numpy(zero_copy_only=False)]
        if len(idx) == 0:
            return arr
        fixed = [transliterate(v) for v in arr.take(pa.array(idx)).to_pylist()]
        still = np.zeros(len(arr), dtype=bool)
        # printable ASCII, as format_an asks: a character that transliterates to a backslash or a control (U+FF3C
        # FULLWIDTH REVERSE SOLIDUS -> `\`) is as unwritable as one with no ASCII form. The control check of `an`
        # finds it in the transliterated text, but a chunk whose raw bytes hold none skips that check (no_controls):
        # then it is named here (only then: once per value)
        still[idx] = [not v.isascii() or (rows.no_controls and not PRINTABLE.issuperset(v)) for v in fixed]
        self._report(rows, still, spec, "CHARSET",
                     lambda i: f"{arr[i].as_py()!r} contiene un carattere che il tracciato non può scrivere, nemmeno "
                               "traslitterato in ASCII")
        mask = np.zeros(len(arr), dtype=bool)
        mask[idx] = True
        return pc.replace_with_mask(arr, pa.array(mask), pa.array(fixed, pa.string()))

    def _mapped(self, spec: FieldSpec, rows: RowSet, arr: pa.Array) -> pa.Array:
        assert spec.map is not None
        keys = pa.array(list(spec.map), pa.string())
        values = pa.array(list(spec.map.values()), pa.string())
        idx = pc.index_in(arr, value_set=keys)
        unknown = (~_valid(idx)) & _valid(arr)
        self._report(rows, unknown, spec, "NOT_ALLOWED",
                     lambda i: f"{arr[i].as_py()!r} non è tra i valori ammessi {list(spec.map or {})}")
        return pc.take(values, idx)

    def n(self, spec: FieldSpec, rows: RowSet, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if spec.required:
            self._report(rows, ~valid, spec, "MISSING", lambda i: "valore obbligatorio mancante")
        values = np.where(valid, values, 0)
        negative = values < 0
        self._report(rows, negative, spec, "NEGATIVE", lambda i: f"{values[i]} è negativo")
        too_big = values >= 10 ** spec.length
        self._report(rows, too_big, spec, "TOO_LONG",
                     lambda i: f"{values[i]} ha più di {spec.length} cifre")
        return digits(np.clip(values, 0, 10 ** spec.length - 1), spec.length)

    def n_text(self, spec: FieldSpec, rows: RowSet, arr: pa.Array) -> np.ndarray:
        """N from a text column (e.g. structure type "1"): digits only, right-aligned."""
        arr = _strings(arr)
        if spec.map is not None:
            arr = self._mapped(spec, rows, arr)
        if spec.required:
            self._report(rows, ~_valid(arr), spec, "MISSING", lambda i: "valore obbligatorio mancante")
        lengths = _lengths(arr)
        too_long = lengths > spec.length
        self._report(rows, too_long, spec, "TOO_LONG",
                     lambda i: f"{arr[i].as_py()!r} ha più di {spec.length} cifre")
        if too_long.any():
            arr = pc.utf8_slice_codeunits(arr, 0, spec.length)
        padded = pc.ascii_lpad(arr.fill_null(""), width=spec.length, padding="0")
        if int(_lengths(padded).max(initial=spec.length)) != spec.length:
            padded = pc.utf8_slice_codeunits(pc.replace_substring_regex(padded, r"[^\x00-\x7f]", "?"), 0, spec.length)
        view = fixed_view(padded, spec.length)
        not_digit = np.asarray(((view - ZERO) > 9).any(axis=1), dtype=bool)
        self._report(rows, not_digit, spec, "NOT_NUMERIC", lambda i: f"{arr[i].as_py()!r} non è un numero")
        return view

    def amount(self, spec: FieldSpec, rows: RowSet, cents: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if spec.required:
            self._report(rows, ~valid, spec, "MISSING", lambda i: "importo obbligatorio mancante")
        cents = np.where(valid, cents, 0)
        self._report(rows, cents < 0, spec, "NEGATIVE", lambda i: f"l'importo {cents[i] / 100:.2f} è negativo")
        width = spec.length - 3
        too_big = cents >= 10 ** width * 100
        self._report(rows, too_big, spec, "TOO_LONG",
                     lambda i: f"l'importo {cents[i] / 100:.2f} non sta in {spec.length} caratteri")
        cents = np.clip(cents, 0, 10 ** width * 100 - 1)
        out = np.empty((len(cents), spec.length), dtype=np.uint8)
        out[:, :width] = digits(cents // 100, width)
        out[:, width] = ord(",")
        out[:, width + 1:] = digits(cents % 100, 2)
        return out

    def date(self, spec: FieldSpec, rows: RowSet, days: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if spec.required:
            self._report(rows, ~valid, spec, "MISSING", lambda i: "data obbligatoria mancante")
        days = np.where(valid, days, 0).astype(np.int64)
        if len(days) == 0:
            return np.empty((0, 8), dtype=np.uint8)
        # The days of one chunk span a few decades at most: format each distinct day once.
        low, high = int(days.min()), int(days.max())
        span = np.arange(low, high + 1, dtype=np.int64).astype("datetime64[D]")
        month_start = span.astype("datetime64[M]")
        year = span.astype("datetime64[Y]").astype(np.int64) + 1970
        month = month_start.astype(np.int64) % 12 + 1
        day = (span - month_start.astype("datetime64[D]")).astype(np.int64) + 1
        bad_year = (year < 1) | (year > 9999)
        table = digits(np.clip(day * 1_000_000 + month * 10_000 + year, 0, 99_999_999), 8)
        out = table[days - low]
        out_of_range = np.asarray(valid & bad_year[days - low], dtype=bool)
        self._report(rows, out_of_range, spec, "BAD_DATE", lambda i: "anno fuori dall'intervallo 0001-9999")
        out[~valid] = SPACE
        return out

    # -- one field -------------------------------------------------------------------------

    def field(self, spec: FieldSpec, rows: RowSet) -> np.ndarray:
        if spec.filler:
            return blank(spec)
        if spec.constant is not None:
            text = spec.constant.rjust(spec.length, "0") if spec.type == "N" else spec.constant.ljust(spec.length)
            return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        if (spec.rows == "closing" and not rows.closing) or (spec.rows == "detail" and rows.closing):
            return blank(spec)
        if rows.n == 0:
            return np.empty((0, spec.length), dtype=np.uint8)
        if spec.derive is not None:
            value = rows.derived[spec.derive]
            if isinstance(value, (pa.Array, pa.ChunkedArray)):
                return self.an(spec, rows, value)
            valid = rows.valid[spec.derive]
            if spec.type == "AMOUNT":
                return self.amount(spec, rows, value, valid)
            if spec.type == "DATE":
                return self.date(spec, rows, value, valid)
            return self.n(spec, rows, value, valid)
        assert spec.column is not None
        arr = rows.columns[spec.column]
        if spec.type == "AN":
            return self.an(spec, rows, arr)
        if spec.type == "DATE":
            return self.date(spec, rows, _days(arr), _valid(arr))
        if spec.type == "AMOUNT":
            return self.amount(spec, rows, _cents(arr), _valid(arr))
        if pa.types.is_integer(arr.type) and spec.map is None:
            return self.n(spec, rows, arr.fill_null(0).to_numpy(zero_copy_only=False), _valid(arr))
        return self.n_text(spec, rows, arr)

    def template(self, rows: RowSet, eol: bytes) -> tuple[np.ndarray, list[FieldSpec]]:
        """The record with every row-independent field filled in, and the fields left to render."""
        row = np.empty(self.record.length + len(eol), dtype=np.uint8)
        row[self.record.length:] = np.frombuffer(eol, dtype=np.uint8)
        varying = []
        for spec in self.record.fields:
            value = self.field(spec, rows) if _row_independent(spec, rows) else None
            if value is None:
                varying.append(spec)
                row[spec.offset:spec.offset + spec.length] = SPACE
            else:
                row[spec.offset:spec.offset + spec.length] = value
        return row, varying

    def render(self, rows: RowSet, eol: bytes) -> np.ndarray:
        row, varying = self.template(rows, eol)
        out = np.empty((rows.n, len(row)), dtype=np.uint8)
        out[:] = row
        width = len(row)
        for spec in varying:
            value = np.ascontiguousarray(self.field(spec, rows))
            target = np.ndarray(shape=(rows.n,), dtype=np.dtype((np.void, spec.length)), buffer=out,
                                offset=spec.offset, strides=(width,))
            target[...] = _void(value)
        return out


def _row_independent(spec: FieldSpec, rows: RowSet) -> bool:
    if spec.filler or spec.constant is not None:
        return True
    return (spec.rows == "closing" and not rows.closing) or (spec.rows == "detail" and rows.closing)


def _days(arr: pa.Array) -> np.ndarray:
    if not pa.types.is_date32(arr.type):
        arr = pc.cast(arr, pa.date32())
    return arr.cast(pa.int32()).fill_null(0).to_numpy(zero_copy_only=False)


def _cents(arr: pa.Array) -> np.ndarray:
    if pa.types.is_decimal(arr.type):
        arr = pc.cast(arr, pa.float64())
    values = pc.cast(arr, pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
    # euro with 2 decimals -> exact integer cents (|x| < 1e13 keeps the rounding exact)
    return np.rint(values * 100).astype(np.int64)
