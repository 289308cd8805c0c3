"""One chunk of source rows -> the records of every kind of a layout, closing rows included.

The chunk must hold whole groups (prescriptions), sorted by group then row number: the writer
cuts its input at group boundaries. Detail rows and closing rows are rendered separately (they
differ in which fields apply) and then interleaved so that each row 99 follows its group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from services.formatter.columnar import FieldProblem, ProblemLog, Renderer, RowSet, _cents, _days, _valid, _void
from services.formatter.layouts import Layout
from services.formatter.rules import net_totals_cents


@dataclass
class ChunkRecords:
    records: dict[str, np.ndarray]  # kind -> (records, length + eol) uint8, file order
    groups: int


def group_starts(ids: pa.Array) -> np.ndarray:
    """Start index of each run of equal ids (the input is sorted by id)."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).fill_null(True).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)


class ChunkFormatter:
    def __init__(self, layout: Layout, log: ProblemLog, eol: bytes = b"\n") -> None:
        self.layout = layout
        self.log = log
        self.eol = eol
        self.renderers = [Renderer(rec, log) for rec in layout.records]

    def _column(self, table: pa.Table, name: str) -> pa.Array:
        col = table.column(name)
        arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        # a column that is null on every row of a chunk has no type of its own
        return arr.cast(pa.string()) if pa.types.is_null(arr.type) else arr

    def format(self, table: pa.Table, non_ascii_rows: np.ndarray | None = None,
               no_controls: bool = False) -> ChunkRecords:
        """`non_ascii_rows`: the only rows that may need transliteration (None: any row may);
        `no_controls`: the caller checked the raw input has no control character or backslash."""
        cols = {name: self._column(table, name) for name in self.layout.columns() if name in table.column_names}
        missing = [c for c in self.layout.columns() if c not in cols]
        if missing:
            raise ValueError(f"layout {self.layout.flow_type} {self.layout.version} reads columns {missing} "
                             f"that the source table {self.layout.source} does not have")
        n = table.num_rows
        if self.layout.grouping is None:
            rows = self._detail_rows(cols, n, (non_ascii_rows, no_controls), None)
            return ChunkRecords({r.record.kind: r.render(rows, self.eol) for r in self.renderers}, groups=0)
        return self._format_grouped(cols, n, (non_ascii_rows, no_controls))

    # -- row sets ---------------------------------------------------------------------------

    def _label(self, cols: dict[str, pa.Array], closing: bool, rn: np.ndarray | None):
        rid = self.layout.record_id
        grp = self.layout.grouping

        def label(i: int) -> str:
            if grp is None:
                return f"{rid} {cols[rid][i].as_py()}" if rid else f"riga {i + 1}"
            gid = cols[grp.by][i].as_py()
            if closing:
                return f"{grp.by} {gid} riga {grp.closing_row}"
            own = f"{rid} {cols[rid][i].as_py()} " if rid else ""
            number = int(rn[i]) if rn is not None else 0
            return f"{own}({grp.by} {gid} riga {number:02d})"
        return label

    def _derived(self, cols: dict[str, pa.Array], n: int) -> tuple[dict, dict]:  # type: ignore[type-arg]
        derived: dict[str, np.ndarray | pa.Array] = {}
        valid: dict[str, np.ndarray] = {}
        wanted = {f.derive for r in self.layout.records for f in r.fields if f.derive}
        if "row_number" in wanted:
            rn = cols["row_number"]
            derived["row_number"], valid["row_number"] = rn.fill_null(0).to_numpy(zero_copy_only=False), _valid(rn)
        if "row_total" in wanted:
            q, t = cols["quantity"], cols["tariff"]
            q_np = q.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            derived["row_total"], valid["row_total"] = q_np * _cents(t), _valid(q) & _valid(t)
        if "ticket_position" in wanted:
            ex = cols["exemption_code"]
            has = pc.and_(pc.is_valid(ex), pc.greater(pc.binary_length(pc.utf8_trim_whitespace(ex)), 0))
            derived["ticket_position"] = pc.if_else(has.fill_null(False), "01", "02")
        if "waiting_days" in wanted:
            b, a = cols["booking_date"], cols["appointment_date"]
            derived["waiting_days"] = _days(a).astype(np.int64) - _days(b).astype(np.int64)
            valid["waiting_days"] = _valid(a) & _valid(b)
        return derived, valid

    def _detail_rows(self, cols: dict[str, pa.Array], n: int, clean: tuple[np.ndarray | None, bool],
                     rn: np.ndarray | None) -> RowSet:
        derived, valid = self._derived(cols, n)
        return RowSet(cols, n, False, derived, valid, self._label(cols, False, rn), *clean)

    # -- grouped (row 99) -------------------------------------------------------------------

    def _format_grouped(self, cols: dict[str, pa.Array], n: int,
                        clean: tuple[np.ndarray | None, bool]) -> ChunkRecords:
        grp = self.layout.grouping
        assert grp is not None
        starts = group_starts(cols[grp.by])
        g = len(starts)
        sizes = np.diff(np.append(starts, n))
        rn_arr = cols[grp.row_number]
        rn = rn_arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        detail = self._detail_rows(cols, n, clean, rn)
        self._check_groups(detail, cols, starts, sizes, rn, n)

        first = pa.array(starts, pa.int64())
        closing_cols = {name: pc.take(arr, first) for name, arr in cols.items()}
        for name in grp.sum:
            summed = np.add.reduceat(_cents(cols[name]), starts) if n else np.zeros(0, np.int64)
            closing_cols[name] = pa.array(summed / 100.0, pa.float64())
        derived, valid = self._derived(closing_cols, g)
        derived["row_number"] = np.full(g, grp.closing_row, dtype=np.int64)
        valid["row_number"] = np.ones(g, dtype=bool)
        if "row_total" in detail.derived:
            sums = np.add.reduceat(np.asarray(detail.derived["row_total"]), starts) if n else np.zeros(0, np.int64)
            tickets = np.add.reduceat(_cents(cols["ticket"]), starts) if n else np.zeros(0, np.int64)
            derived["row_total"] = net_totals_cents(sums, tickets)
            valid["row_total"] = np.ones(g, dtype=bool)
        if any(f.derive == "closing_date" for r in self.layout.records for f in r.fields):
            days = _days(cols["delivery_date"])
            latest = np.maximum.reduceat(np.where(_valid(cols["delivery_date"]), days, np.iinfo(np.int32).min),
                                         starts) if n else np.zeros(0, np.int32)
            has = latest != np.iinfo(np.int32).min
            derived["closing_date"], valid["closing_date"] = latest, has
            detail.derived["closing_date"] = np.repeat(latest, sizes)
            detail.valid["closing_date"] = np.repeat(has, sizes)
        suspects = clean[0]
        if suspects is not None:  # closing row k repeats row starts[k]
            suspects = np.unique(np.searchsorted(starts, suspects, side="right") - 1)
        closing = RowSet(closing_cols, g, True, derived, valid, self._label(closing_cols, True, None),
                         suspects, clean[1],
                         quiet_columns=frozenset(cols) - set(grp.sum))

        closing_pos = np.cumsum(sizes) + np.arange(g)  # row 99 of group k follows its sizes[k] rows
        detail_pos = np.arange(n) + np.repeat(np.arange(g), sizes)
        out: dict[str, np.ndarray] = {}
        for renderer in self.renderers:
            det = renderer.render(detail, self.eol)
            clo = renderer.render(closing, self.eol)
            merged = np.empty((n + g, det.shape[1]), dtype=np.uint8)
            target = _void(merged)
            target[detail_pos] = _void(det)
            target[closing_pos] = _void(clo)
            out[renderer.record.kind] = merged
        return ChunkRecords(out, groups=g)

    def _check_groups(self, detail: RowSet, cols: dict[str, pa.Array], starts: np.ndarray, sizes: np.ndarray,
                      rn: np.ndarray, n: int) -> None:
        grp = self.layout.grouping
        assert grp is not None
        problems: list[FieldProblem] = []
        over = np.flatnonzero(sizes > grp.max_rows)
        for k in over[: self.log.limit]:
            gid = cols[grp.by][int(starts[k])].as_py()
            problems.append(FieldProblem(f"{grp.by} {gid}", "row_number", "TOO_MANY_ROWS",
                                    f"{int(sizes[k])} prestazioni: al massimo {grp.max_rows} per {grp.by}"))
        bad_number = (rn < 1) | (rn > grp.max_rows)
        not_increasing = np.zeros(n, dtype=bool)
        if n > 1:
            not_increasing[1:] = rn[1:] <= rn[:-1]
            not_increasing[starts] = False
        for i in np.flatnonzero(bad_number | not_increasing)[: self.log.limit]:
            why = f"è fuori da 1-{grp.max_rows}" if bad_number[i] else "si ripete o torna indietro nel suo gruppo"
            problems.append(FieldProblem(detail.label(int(i)), "row_number", "BAD_ROW_NUMBER",
                                    f"il progressivo riga {int(rn[i])} {why}"))
        if problems:
            total = len(over) + int((bad_number | not_increasing).sum())
            self.log.add("error", problems, total=total)
