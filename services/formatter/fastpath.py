"""The compiled fast path of grouped layouts (Flusso C, C PACC): raw COPY text -> records.

Why: the columnar engine (columnar.py, chunks.py) makes ~60 numpy/arrow passes over every chunk and
needs the chunk parsed by Arrow first; for 1M services that was ~7.5 s of one core, while PostgreSQL's
own COPY of the rows costs it ~2 s. Here small kernels compiled by numba (cached on disk, run without
the GIL) read the COPY text where it lies and write each field of every record straight into the
output matrices, one field at a time over the whole chunk.

What it does NOT do is decide anything the engine decides: it renders only the groups (prescriptions)
where nothing can go wrong, and the engine stays the one definition of the rules and of every problem
reported. A group is "dirty", and goes through the engine exactly as before, when any of its lines has
a byte outside printable ASCII or a backslash (but a \\N null), the wrong number of columns, a value
the kernels do not read (a date not in ISO form, an amount with more than 2 decimals), or any value on
which the engine would report a problem (missing required value, too long, unknown map value, value not
allowed, negative or too big number, bad row number, too many rows). Clean groups produce no problem in
the engine, and their bytes do not depend on the other groups of the chunk: so the problems reported
for a chunk are those of its dirty groups, in the same order, and the bytes are the engine's. The unit
tests compare both paths on generated and hostile data (tests/unit/test_formatter_fastpath.py).

What the kernels understand is a closed part of the layout vocabulary (`plan()` returns None for any
other layout, which then keeps the engine alone): grouped layouts; AN fields from text columns (case,
map, allowed, required, truncate), N from integer or text columns, DATE from date columns, AMOUNT from
numeric columns (summed on row 99 when the grouping says so), and the derivations row_number,
row_total, closing_date and ticket_position.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit  # type: ignore[import-untyped]

from services.formatter.layouts import Layout

# what the kernels do for a field (column 0 of Plan.matrix)
TEXT, DIGITS, INT, AMOUNT_COL, DATE_COL, DATE_AT, VALUE, AMOUNT_VALUE, TICKET = range(9)
# the rows of the values of derived fields, per side: detail rows | rows 99
_RN, _TOTAL, _LATEST, _SUMS = 0, 1, 2, 3  # row number | 99; row total | net total; latest date; - | sums
_TEXT = {"text", "character varying", "character"}
_INT = {"smallint", "integer", "bigint"}
POOLED = 4  # output matrices kept per record kind: the chunks rendered at once, the one written, one spare


def _translit_table() -> tuple[np.ndarray, np.ndarray]:
    """fixedwidth.transliterate of every 2-byte UTF-8 character (U+0080..U+07FF), concatenated:
    character cp becomes TRANSLIT[AT[2 i]:AT[2 i] + AT[2 i + 1]], i = cp - 0x80; length -1 where the
    engine would not accept the result (not printable ASCII, or a backslash), or where the character is not written
    alone: a combining mark, which NFC composes with the letter before it (`O` + U+0300 is `Ò`, `O'`; alone it is
    dropped). The engine must see those values."""
    from services.formatter.fixedwidth import composes_in_context, transliterate

    data, at = bytearray(), []
    for cp in range(0x80, 0x800):
        text = transliterate(chr(cp))
        if not composes_in_context(chr(cp)) and all(0x20 <= ord(c) < 0x7F and c != "\\" for c in text):
            at += [len(data), len(text)]
            data += text.encode("ascii")
        else:
            at += [0, -1]
    return np.frombuffer(bytes(data), dtype=np.uint8), np.array(at, dtype=np.int64)


_TRANSLIT, _TRANSLIT_AT = _translit_table()


@dataclass(frozen=True)
class Op:
    """One varying field of one record kind, as the kernels need it."""

    kind: int  # index of the record kind
    scope: str  # all, detail, closing
    offset: int
    length: int
    code: str  # text, digits (N from text), int, date, amount, row_number, row_total, closing_date, ticket
    col: int = -1
    required: bool = False
    upper: bool = False
    map_first: int = -1  # map keys at table[map_first: map_first + map_n], their values right after
    map_n: int = 0
    allowed_first: int = -1
    allowed_n: int = 0
    summed: int = -1  # index into the group sums (an amount summed on row 99)


@dataclass
class Plan:
    """A layout compiled to what the kernels read."""

    ops: list[Op]
    table: np.ndarray  # (entries, width) uint8, read-only: map keys, map values, allowed values
    table_len: np.ndarray  # (entries,) int64
    detail: np.ndarray  # (kinds, max width) uint8: a detail record before its varying fields
    closing: np.ndarray  # the same for row 99
    widths: tuple[int, ...]  # record length + eol, per kind
    ncols: int
    rn_col: int
    sum_cols: np.ndarray  # columns summed on row 99 (int64)
    q_col: int  # quantity, tariff, ticket: -1 when no row_total is derived
    t_col: int
    ticket_col: int
    date_col: int  # delivery_date when closing_date is derived, else -1
    max_rows: int
    closing_row: int
    _matrices: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    _statics: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    _free: list[list[np.ndarray]] = field(default_factory=list)  # per kind: output matrices to reuse
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def statics(self, kind: int, side: str) -> np.ndarray:
        """(offset, length) of the template's bytes that no field of this side writes (fillers, constants, the
        fields of the other side, the eol): all that render copies from the template. The fields write every
        byte of theirs in a clean group, and the engine rewrites every record of a dirty one."""
        if (kind, side) in self._statics:  # made once per plan, like `matrix`: every chunk asks again
            return self._statics[kind, side]
        ops = self.matrix(kind, side)
        covered = np.zeros(self.widths[kind], dtype=bool)
        for offset, length in zip(ops[:, 2].tolist(), ops[:, 3].tolist(), strict=True):
            covered[offset:offset + length] = True
        edges = np.flatnonzero(np.diff(np.concatenate([[True], covered, [True]]).astype(np.int8)))
        spans = np.ascontiguousarray(np.stack([edges[0::2], edges[1::2] - edges[0::2]], axis=1), dtype=np.int64)
        self._statics[kind, side] = spans
        return spans

    def take(self, kind: int, rows: int) -> np.ndarray:
        """An output matrix of `rows` records of `kind` (uninitialised: the kernels write every byte), from the
        ones given back when one is big enough. Reused memory is memory the kernel need not fault in and zero
        again for every chunk (sys time that grew with the chunks)."""
        with self._lock:
            while len(self._free) <= kind:
                self._free.append([])
            free = self._free[kind]
            for i, m in enumerate(free):
                if m.shape[0] >= rows:
                    return free.pop(i)[:rows]
        return np.empty((max(rows, 1), self.widths[kind]), dtype=np.uint8)[:rows]

    def give_back(self, matrices: list[np.ndarray]) -> None:
        """The chunk's matrices, written: kept for the next chunks (at most POOLED a kind, the largest)."""
        with self._lock:
            for kind, m in enumerate(matrices):
                while len(self._free) <= kind:
                    self._free.append([])
                base = m.base if isinstance(m.base, np.ndarray) and m.base.ndim == 2 else m
                free = self._free[kind]
                free.append(base)
                free.sort(key=lambda a: -a.shape[0])
                del free[POOLED:]

    def matrix(self, kind: int, side: str) -> np.ndarray:
        """The ops of one record kind on one side ("detail" or "closing") as the kernel reads them:
        code, column, offset, length, required, upper, map first, map count, allowed first, allowed count,
        row of the values."""
        if (kind, side) in self._matrices:
            return self._matrices[kind, side]
        rows = []
        for op in self.ops:
            if op.kind != kind or op.scope not in ("all", side):
                continue
            value = -1
            if op.code in ("text", "digits", "int", "date", "ticket"):
                code = {"text": TEXT, "digits": DIGITS, "int": INT, "date": DATE_COL, "ticket": TICKET}[op.code]
            elif op.code == "amount":
                code, value = (AMOUNT_VALUE, _SUMS + op.summed) if side == "closing" and op.summed >= 0 else (
                    AMOUNT_COL, -1)
            elif op.code == "closing_date":
                code, value = DATE_AT, _LATEST
            elif op.code == "row_number":
                code, value = VALUE, _RN
            else:  # row_total
                code, value = AMOUNT_VALUE, _TOTAL
            rows.append([code, op.col, op.offset, op.length, int(op.required), int(op.upper), op.map_first, op.map_n,
                         op.allowed_first, op.allowed_n, value])
        self._matrices[kind, side] = np.array(rows, dtype=np.int64).reshape(len(rows), 11)
        return self._matrices[kind, side]


def plan(layout: Layout, names: list[str], pg_types: dict[str, str], eol: bytes) -> Plan | None:
    """What the kernels need for `layout` read from COPY columns `names`; None if they cannot do it."""
    from services.formatter.columnar import ProblemLog, Renderer, RowSet  # the templates come from the engine

    grp = layout.grouping
    if grp is None or not names or names[0] != grp.by or pg_types.get(grp.row_number) not in _INT:
        return None
    col = {name: i for i, name in enumerate(names)}
    entries: list[bytes] = []
    sums: list[int] = []

    def table(values: list[str]) -> tuple[int, int]:
        at = len(entries)
        entries.extend(v.encode("utf-8") for v in values)
        return at, len(values)

    def typed(name: str | None, kinds: set[str]) -> bool:
        return name is not None and name in col and pg_types.get(name) in kinds

    ops: list[Op] = []
    totals = closing_date = False
    for k, rec in enumerate(layout.records):
        for spec in rec.fields:
            if spec.filler or spec.constant is not None:
                continue  # in the templates
            base: dict[str, Any] = dict(kind=k, scope=spec.rows, offset=spec.offset, length=spec.length,
                                        required=spec.required, upper=spec.case == "upper")
            if spec.derive is not None:
                if spec.map is not None or spec.allowed is not None:
                    return None
                if spec.derive == "row_number":
                    ops.append(Op(code="row_number", **base))
                elif (spec.derive == "row_total" and spec.type == "AMOUNT" and typed("quantity", _INT)
                      and typed("tariff", {"numeric"}) and typed("ticket", {"numeric"})):
                    totals = True
                    ops.append(Op(code="row_total", **base))
                elif spec.derive == "closing_date" and spec.type == "DATE" and typed("delivery_date", {"date"}):
                    closing_date = True
                    ops.append(Op(code="closing_date", **base))
                elif (spec.derive == "ticket_position" and spec.type == "AN" and spec.length >= 2
                      and typed("exemption_code", _TEXT)):
                    ops.append(Op(code="ticket", col=col["exemption_code"], **base))
                else:
                    return None
                continue
            name = spec.column
            if name is None or name not in col:
                return None
            summed = -1
            if name in grp.sum:
                if spec.type != "AMOUNT":
                    return None
                summed = len(sums)
                sums.append(col[name])
            map_first, map_n, allowed_first, allowed_n = -1, 0, -1, 0
            if spec.map is not None:
                if not typed(name, _TEXT):
                    return None
                map_first, map_n = table(list(spec.map))
                table(list(spec.map.values()))  # right after the keys
            if spec.allowed is not None:
                if spec.type != "AN":
                    return None
                allowed_first, allowed_n = table(list(spec.allowed))
            if spec.type == "AN" and typed(name, _TEXT):
                code = "text"
            elif spec.type == "N" and typed(name, _INT) and spec.map is None:
                code = "int"
            elif spec.type == "N" and typed(name, _TEXT):
                code = "digits"
            elif spec.type == "DATE" and typed(name, {"date"}):
                code = "date"
            elif spec.type == "AMOUNT" and typed(name, {"numeric"}):
                code = "amount"
            else:
                return None
            ops.append(Op(code=code, col=col[name], map_first=map_first, map_n=map_n,
                          allowed_first=allowed_first, allowed_n=allowed_n, summed=summed, **base))
    if any(not e.isascii() or (e and min(e) < 32) or b"\\" in e for e in entries):
        return None

    widths = tuple(rec.length + len(eol) for rec in layout.records)
    templates = []
    for closing in (False, True):
        rows = RowSet({}, 1, closing, {}, {}, lambda i: "")
        t = np.zeros((len(layout.records), max(widths)), dtype=np.uint8)
        for k, rec in enumerate(layout.records):
            t[k, :widths[k]] = Renderer(rec, ProblemLog()).template(rows, eol)[0]
        templates.append(t)
    tab = np.zeros((len(entries), max([len(e) for e in entries] + [1])), dtype=np.uint8)
    for i, e in enumerate(entries):
        tab[i, :len(e)] = np.frombuffer(e, dtype=np.uint8)
    tab.setflags(write=False)
    return Plan(ops, tab, np.array([len(e) for e in entries] + [0], dtype=np.int64), templates[0], templates[1],
                widths, len(names), col[grp.row_number], np.array(sums, dtype=np.int64),
                col["quantity"] if totals else -1, col["tariff"] if totals else -1, col["ticket"] if totals else -1,
                col["delivery_date"] if closing_date else -1, grp.max_rows, grp.closing_row)


_SCRATCH = threading.local()  # per rendering thread: the token bounds' memory, reused
_NO_SCRATCH = np.zeros(0, dtype=np.int64)


@dataclass
class ChunkResult:
    records: list[np.ndarray]  # per record kind: (n + groups, width) uint8, file order
    dirty: np.ndarray  # groups the engine must render (indexes)
    starts: np.ndarray  # first line of each group
    line: np.ndarray  # byte offset of each line, and the end
    rows: int


def format_chunk(plan: Plan, raw: np.ndarray) -> ChunkResult:
    """Renders the clean groups of a chunk of COPY text (whole lines, whole groups, sorted by group)."""
    if raw.flags.writeable:  # one compiled signature: the kernels read a read-only buffer
        raw = raw.view()
        raw.setflags(write=False)
    scratch = getattr(_SCRATCH, "tokens", _NO_SCRATCH)  # this thread's, from its last chunk
    fs, fe, line, clean, starts, _SCRATCH.tokens = tokenize(raw, plan.ncols, scratch)
    n, g = fs.shape[1], len(starts)
    bad, rn, row_totals, nets, sums, latest = group_values(
        raw, fs, fe, clean, starts, plan.rn_col, plan.max_rows, plan.sum_cols, plan.q_col, plan.t_col,
        plan.ticket_col, plan.date_col)
    sizes = np.diff(np.append(starts, n))
    gidx = np.repeat(np.arange(g, dtype=np.int64), sizes)
    rows = np.arange(n, dtype=np.int64)
    groups = np.arange(g, dtype=np.int64)
    closing_at = starts + sizes + groups
    # per side: source line, output record, group, and the values of the derived fields (see _VALUES)
    sides = {"detail": (rows, rows + gidx, gidx, np.vstack([rn, row_totals, latest[gidx]])),
             "closing": (starts, closing_at, groups,
                         np.vstack([np.full(g, plan.closing_row, dtype=np.int64), nets, latest, sums.T]))}
    outs = []
    for k, width in enumerate(plan.widths):
        out = plan.take(k, n + g)
        outs.append(out)
        for side, (src, dst, grp, values) in sides.items():
            template = plan.detail[k, :width] if side == "detail" else plan.closing[k, :width]
            render(raw, fs, fe, src, dst, grp, bad, out.reshape(-1), width, plan.matrix(k, side), values, plan.table,
                   plan.table_len, _TRANSLIT, _TRANSLIT_AT, template, plan.statics(k, side))
    return ChunkResult(outs, np.flatnonzero(bad), starts, line, n)


# ---------------------------------------------------------------------------------------------
# the kernels


@njit(cache=True, nogil=True)
def tokenize(raw, ncols, scratch):  # type: ignore[no-untyped-def]
    """Field bounds of every line (start -1: NULL), line offsets, clean lines, group starts, and the scratch
    the bounds lie in: `scratch` when it is big enough (the caller's, reused from chunk to chunk: ~10 MB a
    chunk that need not be faulted in again), else a new one for the caller to keep.

    A line is clean when it has `ncols` fields and no control character, DEL or backslash (a \\N null
    aside). Bytes >= 0x80 are left to the kernels: text fields transliterate them, the others fail on them. A group is
    a run of equal keys in column 0; a NULL key is a group of its own (as in chunks.group_starts)."""
    n = raw.shape[0]
    nrows = 0
    for i in range(n):
        if raw[i] == 10:
            nrows += 1
    if n > 0 and raw[n - 1] != 10:
        nrows += 1
    if scratch.shape[0] < 2 * ncols * nrows:
        scratch = np.empty(2 * ncols * nrows + ncols * 4096, dtype=np.int64)
    # by column: a field is read for all rows in a row
    fs = scratch[:ncols * nrows].reshape((ncols, nrows))
    fe = scratch[ncols * nrows:2 * ncols * nrows].reshape((ncols, nrows))
    line = np.empty(nrows + 1, dtype=np.int64)
    clean = np.ones(nrows, dtype=np.bool_)
    starts = np.empty(nrows, dtype=np.int64)
    g = 0
    pos = 0
    for r in range(nrows):
        line[r] = pos
        c = 0
        start = pos
        ok = True
        while True:
            b = raw[pos] if pos < n else 10
            if b == 9 or b == 10:
                if c < ncols:
                    fs[c, r] = start
                    fe[c, r] = pos
                c += 1
                pos += 1
                start = pos
                if b == 10:
                    break
                continue
            if b == 92:
                nxt = raw[pos + 1] if pos + 1 < n else 10
                after = raw[pos + 2] if pos + 2 < n else 10
                if pos == start and nxt == 78 and (after == 9 or after == 10) and c < ncols:
                    fs[c, r] = -1
                    fe[c, r] = -1
                    c += 1
                    pos += 3
                    start = pos
                    if after == 10:
                        break
                    continue
                ok = False
            elif b < 32 or b == 127:
                ok = False
            pos += 1
        if c != ncols:
            ok = False
            for j in range(c, ncols):
                fs[j, r] = -1
                fe[j, r] = -1
        clean[r] = ok
        new = r == 0 or fs[0, r] < 0 or fs[0, r - 1] < 0
        if not new:
            a, z, pa, pz = fs[0, r], fe[0, r], fs[0, r - 1], fe[0, r - 1]
            if z - a != pz - pa:
                new = True
            else:
                for j in range(z - a):
                    if raw[a + j] != raw[pa + j]:
                        new = True
                        break
        if new:
            starts[g] = r
            g += 1
    line[nrows] = min(pos, n)
    return fs, fe, line, clean, starts[:g].copy(), scratch


@njit(cache=True, nogil=True)
def _int(raw, a, b):  # type: ignore[no-untyped-def]
    """Non-negative decimal integer text of at most 15 digits: (ok, value)."""
    if b <= a or b - a > 15:
        return False, 0
    v = 0
    for i in range(a, b):
        d = int(raw[i]) - 48
        if d < 0 or d > 9:
            return False, 0
        v = v * 10 + d
    return True, v


@njit(cache=True, nogil=True)
def _cents(raw, a, b):  # type: ignore[no-untyped-def]
    """numeric text 123, 123.4 or 123.45 -> cents; negative, other forms or more decimals: not ok."""
    dot = b
    for i in range(a, b):
        if raw[i] == 46:
            dot = i
            break
    ok, whole = _int(raw, a, dot)
    if not ok or whole >= 10 ** 13:
        return False, 0
    if dot == b:
        return True, whole * 100
    ok, frac = _int(raw, dot + 1, b)
    if not ok or b - dot - 1 > 2:
        return False, 0
    return True, whole * 100 + (frac * 10 if b - dot - 1 == 1 else frac)


@njit(cache=True, nogil=True)
def _iso(raw, a, b):  # type: ignore[no-untyped-def]
    """YYYY-MM-DD at raw[a:b]."""
    if b - a != 10:
        return False
    for j in range(10):
        ch = raw[a + j]
        if not ((ch == 45) if j == 4 or j == 7 else (48 <= ch <= 57)):
            return False
    return True


@njit(cache=True, nogil=True)
def _lookup(table, table_len, first, count, src, a, b, upper):  # type: ignore[no-untyped-def]
    """Index (from `first`) of the entry equal to src[a:b], upper-cased when `upper`; -1 if none."""
    for e in range(first, first + count):
        if table_len[e] != b - a:
            continue
        same = True
        for j in range(b - a):
            ch = src[a + j]
            if upper and 97 <= ch <= 122:
                ch -= 32
            if table[e, j] != ch:
                same = False
                break
        if same:
            return e - first
    return -1


@njit(cache=True, nogil=True)
def group_values(raw, fs, fe, clean, starts, rn_col, max_rows, sum_cols, q_col, t_col, ticket_col,  # type: ignore[no-untyped-def]
                 date_col):
    """Per group: dirty from the start (a line not clean, bad row numbers, too many rows), the sums of
    row 99 (summed amounts, row totals, net total), the latest date; per row: row number, row total."""
    n = fs.shape[1]
    g = starts.shape[0]
    bad = np.zeros(g, dtype=np.bool_)
    rn = np.zeros(n, dtype=np.int64)
    totals = np.zeros(n, dtype=np.int64)
    nets = np.zeros(g, dtype=np.int64)
    sums = np.zeros((g, sum_cols.shape[0]), dtype=np.int64)
    latest = np.full(g, -1, dtype=np.int64)
    for k in range(g):
        s = starts[k]
        e = starts[k + 1] if k + 1 < g else n
        ok = e - s <= max_rows
        previous = 0
        total = 0
        tickets = 0
        r = s
        while ok and r < e:
            ok = clean[r]
            a = fs[rn_col, r]
            if not ok or a < 0:
                ok = False
                break
            ok, v = _int(raw, a, fe[rn_col, r])
            ok = ok and 1 <= v <= max_rows and v > previous
            previous = v
            rn[r] = v
            for i in range(sum_cols.shape[0]):
                c = sum_cols[i]
                good, cents = _cents(raw, fs[c, r], fe[c, r]) if fs[c, r] >= 0 else (False, 0)
                ok = ok and good
                sums[k, i] += cents
            if ticket_col >= 0:
                if fs[q_col, r] < 0 or fs[t_col, r] < 0 or fs[ticket_col, r] < 0:
                    ok = False
                    break
                good1, q = _int(raw, fs[q_col, r], fe[q_col, r])
                good2, t = _cents(raw, fs[t_col, r], fe[t_col, r])
                good3, tk = _cents(raw, fs[ticket_col, r], fe[ticket_col, r])
                ok = ok and good1 and good2 and good3 and q < 1_000_000
                totals[r] = q * t
                total += q * t
                tickets += tk
            if date_col >= 0 and fs[date_col, r] >= 0:
                a = fs[date_col, r]
                if not _iso(raw, a, fe[date_col, r]):
                    ok = False
                elif latest[k] < 0:
                    latest[k] = a
                else:
                    for j in range(10):
                        if raw[a + j] != raw[latest[k] + j]:
                            if raw[a + j] > raw[latest[k] + j]:
                                latest[k] = a
                            break
            r += 1
        bad[k] = not ok
        nets[k] = max(total - tickets, 0)
    return bad, rn, totals, nets, sums, latest


_BLOCK = 256  # records rendered field after field while they stay in the cache


@njit(cache=True, nogil=True)
def render(raw, fs, fe, src, dst, grp, bad, out, width, ops, values, table, table_len, translit,  # type: ignore[no-untyped-def]
           translit_at, template, statics):
    """Every record of one record kind on one side (detail rows or rows 99): entry i reads line src[i] and
    writes record dst[i] of `out` (flat, `width` bytes a record): the template's bytes no field writes (`statics`:
    fillers, constants, eol), then every varying field, a block of records at a time while they stay in the
    cache; a group whose value the engine would not accept is marked in `bad` and left alone from then on (the
    engine rewrites its records)."""
    m = src.shape[0]
    for b0 in range(0, m, _BLOCK):
        b1 = min(b0 + _BLOCK, m)
        for i in range(b0, b1):
            base = dst[i] * width
            for t in range(statics.shape[0]):
                for j in range(statics[t, 0], statics[t, 0] + statics[t, 1]):
                    out[base + j] = template[j]
        for k in range(ops.shape[0]):
            code = ops[k, 0]
            if code == TEXT or code == DIGITS:
                _text(raw, fs, fe, src, dst, grp, bad, out, width, ops[k], table, table_len, translit, translit_at,
                      b0, b1)
            elif code == INT or code == AMOUNT_COL:
                _number(raw, fs, fe, src, dst, grp, bad, out, width, ops[k], b0, b1)
            elif code == DATE_COL or code == DATE_AT:
                _date(raw, fs, fe, src, dst, grp, bad, out, width, ops[k], values, b0, b1)
            elif code == VALUE or code == AMOUNT_VALUE:
                _value(dst, grp, bad, out, width, ops[k], values, b0, b1)
            elif code == TICKET:
                _ticket(raw, fs, fe, src, dst, grp, bad, out, width, ops[k], b0, b1)


@njit(cache=True, nogil=True)
def _text(raw, fs, fe, src, dst, grp, bad, out, width, op, table, table_len, translit, translit_at,  # type: ignore[no-untyped-def]
          b0, b1):
    """AN (upper-cased when asked, space-padded) or N from text (digits only, zero-padded). A mapped value is
    written from the table (its entry e), any other from the COPY text; a NULL or empty one is spaces
    (zeros), but the engine reports a required one, and an empty one not allowed."""
    col, o, length, required, upper = op[1], op[2], op[3], op[4] == 1, op[5] == 1
    map_first, map_n, allowed_first, allowed_n = op[6], op[7], op[8], op[9]
    digits = op[0] == DIGITS
    fill = 48 if digits else 32
    check = allowed_first >= 0 and not digits
    for i in range(b0, b1):
        if bad[grp[i]]:
            continue
        r = src[i]
        base = dst[i] * width + o
        a, b = fs[col, r], fe[col, r]
        e = -1
        if a >= 0 and map_first >= 0:
            e = _lookup(table, table_len, map_first, map_n, raw, a, b, False)
            if e < 0:
                bad[grp[i]] = True
                continue
            e += map_first + map_n
            size = table_len[e]
        else:
            size = b - a if a >= 0 else -1
        if size <= 0:
            if required or (size == 0 and check):
                bad[grp[i]] = True
                continue
            for j in range(length):
                out[base + j] = fill
            continue
        if e < 0 and digits:  # N from text: zero-padded, digits only, checked as they are copied
            if size > length:
                bad[grp[i]] = True
                continue
            pad = length - size
            for j in range(pad):
                out[base + j] = 48
            odd = False
            for j in range(size):
                ch = raw[a + j]
                odd |= ch < 48 or ch > 57
                out[base + pad + j] = ch
            if odd:
                bad[grp[i]] = True
            continue
        if e < 0:  # AN from text: copied and upper-cased in one pass that also sees any byte >= 0x80
            n = min(size, length)
            high = 0
            if upper:
                for j in range(n):
                    ch = raw[a + j]
                    high |= ch
                    out[base + j] = ch - 32 if 97 <= ch <= 122 else ch
            else:
                for j in range(n):
                    ch = raw[a + j]
                    high |= ch
                    out[base + j] = ch
            for j in range(n, size):
                high |= raw[a + j]
            if high >= 128:  # UTF-8: the engine's transliteration, character by character (translit_at)
                if check:
                    bad[grp[i]] = True
                    continue
                size = _transliterate(raw, a, b, out, base, length, translit, translit_at)
                if size < 0 or (size == 0 and required):
                    bad[grp[i]] = True
                    continue
                if upper:
                    for j in range(size):
                        if 97 <= out[base + j] <= 122:
                            out[base + j] -= 32
            elif size > length or (check and _lookup(table, table_len, allowed_first, allowed_n, raw, a, b,
                                                      upper) < 0):
                bad[grp[i]] = True
                continue
            for j in range(size, length):
                out[base + j] = 32
            continue
        # a mapped value (e: its entry in the table)
        if size > length:
            bad[grp[i]] = True
            continue
        if check and _lookup(table, table_len, allowed_first, allowed_n, table[e], 0, size, upper) < 0:
            bad[grp[i]] = True
            continue
        pad = length - size if digits else 0
        for j in range(pad):
            out[base + j] = 48
        at = base + pad
        for j in range(size):
            out[at + j] = table[e, j]
        for j in range(pad + size, length):
            out[base + j] = 32
        if digits:
            for j in range(size):
                if not 48 <= out[at + j] <= 57:
                    bad[grp[i]] = True
                    break
        elif upper:
            for j in range(size):
                if 97 <= out[at + j] <= 122:
                    out[at + j] -= 32


@njit(cache=True, nogil=True)
def _transliterate(raw, a, b, out, at, length, translit, translit_at):  # type: ignore[no-untyped-def]
    """raw[a:b] with every 2-byte UTF-8 character replaced by its transliteration (_translit_table),
    written at out[at:]: its length, or -1 (a character without one, not 2-byte UTF-8, or longer than
    `length`)."""
    size = 0
    j = a
    while j < b:
        ch = raw[j]
        if ch < 128:
            if size >= length:
                return -1
            out[at + size] = ch
            size += 1
            j += 1
            continue
        if ch < 0xC2 or ch > 0xDF or j + 1 >= b or raw[j + 1] < 0x80 or raw[j + 1] > 0xBF:
            return -1
        cp = ((np.int64(ch) & 0x1F) << 6) | (np.int64(raw[j + 1]) & 0x3F)
        first, count = translit_at[2 * (cp - 0x80)], translit_at[2 * (cp - 0x80) + 1]
        if count < 0 or size + count > length:
            return -1
        for x in range(count):
            out[at + size + x] = translit[first + x]
        size += count
        j += 2
    return size


@njit(cache=True, nogil=True)
def _put_digits(out, at, length, v):  # type: ignore[no-untyped-def]
    if v < 0:
        return False
    for j in range(length - 1, -1, -1):
        out[at + j] = 48 + v % 10
        v //= 10
    return v == 0


@njit(cache=True, nogil=True)
def _put(out, at, length, v, amount):  # type: ignore[no-untyped-def]
    """N digits, or an AMOUNT n,dd of cents."""
    if not amount:
        return _put_digits(out, at, length, v)
    out[at + length - 3] = 44
    return _put_digits(out, at + length - 2, 2, v % 100) and _put_digits(out, at, length - 3, v // 100)


@njit(cache=True, nogil=True)
def _number(raw, fs, fe, src, dst, grp, bad, out, width, op, b0, b1):  # type: ignore[no-untyped-def]
    """N from an integer column, AMOUNT from a numeric one; NULL: zero (the engine reports a required one)."""
    col, o, length, required, amount = op[1], op[2], op[3], op[4] == 1, op[0] == AMOUNT_COL
    for i in range(b0, b1):
        if bad[grp[i]]:
            continue
        r = src[i]
        a = fs[col, r]
        if a < 0:
            ok, v = not required, 0
        elif amount:
            ok, v = _cents(raw, a, fe[col, r])
        else:
            ok, v = _int(raw, a, fe[col, r])
        if not (ok and _put(out, dst[i] * width + o, length, v, amount)):
            bad[grp[i]] = True


@njit(cache=True, nogil=True)
def _value(dst, grp, bad, out, width, op, values, b0, b1):  # type: ignore[no-untyped-def]
    """N or AMOUNT of a value computed before (row number, row total, net total, sum): values[op[10], i]."""
    row, o, length, amount = op[10], op[2], op[3], op[0] == AMOUNT_VALUE
    for i in range(b0, b1):
        if not bad[grp[i]] and not _put(out, dst[i] * width + o, length, values[row, i], amount):
            bad[grp[i]] = True


@njit(cache=True, nogil=True)
def _date(raw, fs, fe, src, dst, grp, bad, out, width, op, values, b0, b1):  # type: ignore[no-untyped-def]
    """DDMMYYYY of an ISO date: a column's (DATE_COL) or the one at offset values[op[10], i] (DATE_AT);
    NULL (-1): spaces, but the engine reports a required one."""
    col, o, required = op[1], op[2], op[4] == 1
    for i in range(b0, b1):
        if bad[grp[i]]:
            continue
        if op[0] == DATE_COL:
            a, b = fs[col, src[i]], fe[col, src[i]]
        else:
            a = values[op[10], i]
            b = a + 10
        at = dst[i] * width + o
        if a < 0:
            if required:
                bad[grp[i]] = True
            for j in range(8):
                out[at + j] = 32
            continue
        if not _iso(raw, a, b):
            bad[grp[i]] = True
            continue
        out[at] = raw[a + 8]
        out[at + 1] = raw[a + 9]
        out[at + 2] = raw[a + 5]
        out[at + 3] = raw[a + 6]
        for j in range(4):
            out[at + 4 + j] = raw[a + j]


@njit(cache=True, nogil=True)
def _ticket(raw, fs, fe, src, dst, grp, bad, out, width, op, b0, b1):  # type: ignore[no-untyped-def]
    """01 when the exemption code has a non-blank character, else 02; space-padded. A code with a byte
    >= 0x80 is the engine's (Unicode white space)."""
    col, o, length = op[1], op[2], op[3]
    for i in range(b0, b1):
        r = src[i]
        blank = True
        for j in range(max(fs[col, r], 0), fe[col, r]):
            if raw[j] >= 128:
                bad[grp[i]] = True
            if raw[j] != 32:
                blank = False
        at = dst[i] * width + o
        out[at] = 48
        out[at + 1] = 50 if blank else 49
        for j in range(2, length):
            out[at + j] = 32


def warm_up() -> None:
    """Compiles every kernel, or loads it from numba's disk cache: the service calls it at start, so that
    no format request waits for the compiler (the argument types are those format_chunk passes)."""
    raw = np.frombuffer(b"", dtype=np.uint8)
    fs, fe, _, clean, starts, _ = tokenize(raw, 1, _NO_SCRATCH)
    i64, flags = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.bool_)
    table = np.zeros((0, 1), dtype=np.uint8)
    table.setflags(write=False)
    group_values(raw, fs, fe, clean, starts, 0, 98, i64, -1, -1, -1, -1)
    for code in range(9):
        render(raw, fs, fe, i64, i64, i64, flags, np.zeros(0, dtype=np.uint8), 1,
               np.array([[code, 0, 0, 1, 0, 0, -1, 0, -1, 0, 0]], dtype=np.int64), np.zeros((1, 0), dtype=np.int64),
               table, i64, _TRANSLIT, _TRANSLIT_AT, np.zeros(1, dtype=np.uint8),
               np.zeros((1, 2), dtype=np.int64))
