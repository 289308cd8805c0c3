"""The compiled fast path (services/formatter/fastpath.py) against the engine, on raw COPY text.

The fast path may only render what the engine would render without a problem, byte for byte; any
other prescription must reach the engine, so that the files AND the problems (errors, warnings, their
order and counts) stay the engine's. Each test runs the same chunks through ChunkPipeline without the
source's PostgreSQL types (engine only, as before the fast path) and with them (fast path).
"""

from __future__ import annotations

import io
import os
import random
import threading

import numpy as np
import pytest

from services.formatter import app, fastpath
from services.formatter.layouts import Layout, load_layout
from services.formatter.writer import _PG_TO_ARROW, ChunkPipeline, chunk_end, copy_columns

# the snapshot_service columns (services/runtime/migrations/0011_loader_snapshots.sql) the layouts read
PG_TYPES = {
    "snapshot_id": "bigint", "row_number": "smallint", "source_id": "text", "ente": "text", "region": "text",
    "structure_sts11": "text", "structure_type": "text", "patient_cf": "text", "patient_surname": "text",
    "patient_name": "text", "patient_sex": "text", "patient_birth_date": "date", "patient_residence_istat": "text",
    "patient_residence_asl": "text", "prescription_id": "text", "prescription_number": "text",
    "prescriber_code": "text", "priority": "text", "exemption_code": "text", "delivery_type": "text",
    "catalogue_code": "text", "catalogue_coding": "text", "quantity": "integer", "delivery_date": "date",
    "discipline": "text", "tariff": "numeric", "ticket": "numeric",
}
LAYOUTS = [load_layout("FLUSSO_C", "2020"), load_layout("FLUSSO_C_PACC", "2020")]

# what a field may hold: mostly valid values, and every kind of value the engine objects to or must transliterate
HOSTILE_TEXT = ["NICOLÒ", "NICOLO\u0300", "Müller", "straße", "Ø", "e\u0301", "X\u0300", "caffè", "\u00a0", "€", "’",
                "\u0080", "x\\ty", "a\\\\b", "", "  ", "A" * 40, "d'angelo", "\\N", "ÿ"]


def service_row(rnd: random.Random, pid: str, rn: int, hostile: float, pacc: bool) -> dict[str, str]:
    def pick(valid: str, *bad: str) -> str:
        return rnd.choice(bad or tuple(HOSTILE_TEXT)) if rnd.random() < hostile else valid

    day = f"2026-11-{rnd.randint(1, 28):02d}"
    return {
        "prescription_id": pid, "row_number": pick(str(rn), "0", "99", "-1", "\\N", str(rn - 1 or 1)),
        "ticket": pick(rnd.choice(["0.00", "12.50", "36.15"]), "-1.00", "1.234", "\\N", "9999999.99", "5"),
        "source_id": f"CUP-{pid}-{rn}", "region": pick("150"), "ente": pick("201"),
        "structure_sts11": pick(f"{rnd.randint(0, 40):06d}"), "prescriber_code": pick(rnd.choice(["DOC12", "\\N"])),
        "patient_surname": pick(rnd.choice(["ROSSI", "D'ANGELO", "de luca"])),
        "patient_name": pick(rnd.choice(["MARIO", "ANNA", "nicolò"])), "patient_cf": pick("RSSMRA80A01F839W"),
        "patient_sex": pick(rnd.choice(["M", "F"]), "X", "m", "\\N", ""),
        "patient_birth_date": pick("1970-05-17", "\\N", "1900-02-28"),
        "patient_residence_istat": pick("063049"), "patient_residence_asl": pick(rnd.choice(["201", "\\N"])),
        "prescription_number": pick("1500A0000000001"), "delivery_date": pick(day, "\\N"),
        "catalogue_coding": pick(rnd.choice("abc") if pacc else rnd.choice(["N", "c"]), "Z", "", "\\N", "é"),
        "catalogue_code": pick("89.7"), "quantity": pick(str(rnd.randint(1, 3)), "-2", "1000", "\\N", "0"),
        "tariff": pick(f"{rnd.randint(500, 9000) / 100:.2f}", "-3.00", "1.005", "\\N", "7", "7.5"),
        "exemption_code": pick(rnd.choice(["E01", "\\N", "", "  "])),
        "delivery_type": pick("S"), "discipline": pick(rnd.choice(["008", "\\N"])), "priority": pick("U"),
        "structure_type": pick("1", "x", "12", "\\N", ""),
    }


def copy_text(layout: Layout, rnd: random.Random, prescriptions: int, hostile: float) -> bytes:
    """COPY text as PostgreSQL sends it for the writer's query: group column first, sorted, \\N nulls."""
    names = copy_columns(layout)
    lines = []
    pacc = layout.flow_type == "FLUSSO_C_PACC"
    for p in range(prescriptions):
        size = rnd.choice([1, 1, 2, 3, 4]) if rnd.random() > hostile / 4 else 99
        pid = f"P{p:08d}" if rnd.random() > hostile / 10 else "\\N"
        for rn in range(1, size + 1):
            row = service_row(rnd, pid, rn, hostile, pacc)
            lines.append("\t".join(row[n] for n in names))
    return ("\n".join(lines) + "\n").encode("utf-8")


class Sink(io.BytesIO):
    pass


def run(layout: Layout, data: bytes, fast: bool, chunk: int = 1 << 12) -> tuple[dict[str, bytes], object]:
    types = {n: _PG_TO_ARROW[PG_TYPES[n]] for n in copy_columns(layout)}
    sinks = {k: Sink() for k in layout.kinds}
    pipeline = ChunkPipeline(layout, types, sinks, b"\n", PG_TYPES if fast else None)  # type: ignore[arg-type]
    assert (pipeline.plan is not None) == fast
    start = 0
    while start < len(data):
        end = chunk_end(data, start, chunk, grouped=True) or len(data)
        pipeline.process(memoryview(data)[start:end])
        start = end
    stats = pipeline.finish()
    return {k: s.getvalue() for k, s in sinks.items()}, stats


def same(layout: Layout, data: bytes) -> None:
    slow_files, slow = run(layout, data, fast=False)
    fast_files, quick = run(layout, data, fast=True)
    assert fast_files == slow_files
    for name in ("records", "prescriptions", "error_count", "warning_count", "errors", "warnings"):
        assert getattr(quick, name) == getattr(slow, name), name


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda la: la.flow_type)
def test_clean_prescriptions_are_all_rendered_by_the_kernels_and_equal_the_engine(layout: Layout) -> None:
    data = copy_text(layout, random.Random(1), 300, hostile=0.0)
    names = copy_columns(layout)
    plan = fastpath.plan(layout, names, PG_TYPES, b"\n")
    assert plan is not None
    done = fastpath.format_chunk(plan, np.frombuffer(data, dtype=np.uint8))
    assert len(done.dirty) == 0 and len(done.starts) == 300  # the engine had nothing to do
    same(layout, data)


def test_transliterated_names_stay_in_the_kernels() -> None:
    layout = LAYOUTS[0]
    data = copy_text(layout, random.Random(2), 50, hostile=0.0).replace(b"MARIO", "NICOLÒ".encode())
    plan = fastpath.plan(layout, copy_columns(layout), PG_TYPES, b"\n")
    assert plan is not None and b"NICOL" in data
    assert len(fastpath.format_chunk(plan, np.frombuffer(data, dtype=np.uint8)).dirty) == 0
    same(layout, data)
    assert b"NICOLO'" in run(layout, data, fast=True)[0]["C1"]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda la: la.flow_type)
def test_hostile_values_give_the_engine_bytes_and_problems(layout: Layout, seed: int) -> None:
    rnd = random.Random(seed)
    data = copy_text(layout, rnd, 60, hostile=rnd.choice([0.005, 0.02, 0.05, 0.1]))
    slow = run(layout, data, fast=False)[1]
    assert slow.error_count + slow.warning_count > 0, "the data must hold problems, or this test proves nothing"  # type: ignore[attr-defined]
    same(layout, data)


def test_layouts_the_kernels_do_not_know_keep_the_engine() -> None:
    for flow in ("FLUSSO_MEF", "FLUSSO_ALPI_TA"):
        layout = load_layout(flow, "2020")
        assert fastpath.plan(layout, copy_columns(layout), PG_TYPES, b"\n") is None
    # Flusso C with a column of another type than the kernels read: the engine
    layout = LAYOUTS[0]
    assert fastpath.plan(layout, copy_columns(layout), {**PG_TYPES, "tariff": "double precision"}, b"\n") is None
    assert fastpath.plan(layout, copy_columns(layout), {**PG_TYPES, "patient_birth_date": "text"}, b"\n") is None


def test_a_value_the_engine_cannot_read_fails_the_same_way() -> None:
    layout = LAYOUTS[0]
    data = copy_text(layout, random.Random(3), 20, hostile=0.0).replace(b"1970-05-17", b"0044-03-15 BC", 1)
    for fast in (False, True):
        with pytest.raises(Exception, match="date32"):
            run(layout, data, fast=fast)


def test_crlf_records() -> None:
    layout = LAYOUTS[0]
    data = copy_text(layout, random.Random(5), 40, hostile=0.02)
    types = {n: _PG_TO_ARROW[PG_TYPES[n]] for n in copy_columns(layout)}
    out = []
    for pg in (None, PG_TYPES):
        sinks = {k: Sink() for k in layout.kinds}
        pipeline = ChunkPipeline(layout, types, sinks, b"\r\n", pg)  # type: ignore[arg-type]
        pipeline.process(data)
        out.append({k: s.getvalue() for k, s in sinks.items()})
    assert out[0] == out[1] and out[0]["C1"].count(b"\r\n") > 40


def test_a_wide_character_in_a_full_width_field_does_not_shift_the_other_rows() -> None:
    """The engine once took a column for fixed-width when its SHORTEST value filled the field: one 2-byte
    character (reported) shifted every later row of the chunk by a byte."""
    layout = LAYOUTS[0]
    data = copy_text(layout, random.Random(4), 30, hostile=0.0)
    lines = data.split(b"\n")
    col = copy_columns(layout).index("priority")
    fields = lines[0].split(b"\t")
    fields[col] = "\u0080".encode()
    lines[0] = b"\t".join(fields)
    files, stats = run(layout, b"\n".join(lines), fast=False)
    assert stats.error_count >= 1  # type: ignore[attr-defined]
    closing = [r for r in files["C2"].splitlines() if r[28:30] == b"99"]
    assert {r[105:106] for r in closing[1:]} == {b"U"}
    same(layout, b"\n".join(lines))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda la: la.flow_type)
def test_reused_matrices_keep_no_byte_of_the_chunk_before(layout: Layout, seed: int, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The kernels copy only the template bytes no field writes, into matrices reused from chunk to chunk: every
    other byte must be written again. The matrices given back are poisoned (0xFF, never in a record), so a byte
    a field leaves alone shows up in the files."""
    give_back = fastpath.Plan.give_back
    poisoned = []

    def poison(self: fastpath.Plan, matrices: list[np.ndarray]) -> None:
        for m in matrices:
            (m.base if isinstance(m.base, np.ndarray) else m)[:] = 0xFF
        poisoned.append(len(matrices))
        give_back(self, matrices)

    monkeypatch.setattr(fastpath.Plan, "give_back", poison)
    rnd = random.Random(100 + seed)
    data = copy_text(layout, rnd, 400, hostile=rnd.choice([0.0, 0.01, 0.05]))
    fast_files, _ = run(layout, data, fast=True)
    assert len(poisoned) > 20 and all(b"\xff" not in f for f in fast_files.values())
    same(layout, data)


def test_the_service_loads_the_kernels_at_its_own_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """The formatter's warm-up thread (services/formatter/app.py) holds the GIL and numba's compiler lock while it
    loads the kernels: niced, it was starved on a loaded host and stalled the service's event loop and its formats
    with it (Kafka heartbeats missed, a format waiting over a minute). It runs at the priority of the thread that
    starts it."""
    seen: list[int] = []
    monkeypatch.setattr(fastpath, "warm_up", lambda: seen.append(os.getpriority(os.PRIO_PROCESS,
                                                                                 threading.get_native_id())))
    warming = threading.Thread(target=app._warm_up, name="formatter-warm-up")
    warming.start()
    warming.join(60)
    assert seen == [os.getpriority(os.PRIO_PROCESS, threading.get_native_id())]


def test_a_combining_mark_leaves_its_prescription_to_the_engine() -> None:
    """`NICOLO` + U+0300 (the decomposed form of `NICOLÒ`) is written `NICOLO'`, as the composed form: the kernels
    transliterate one character at a time and would drop the mark (`NICOLO`), so its group is the engine's."""
    layout = LAYOUTS[0]
    clean = copy_text(layout, random.Random(2), 50, hostile=0.0)
    composed = clean.replace(b"MARIO", "NICOLÒ".encode())
    decomposed = clean.replace(b"MARIO", "NICOLO\u0300".encode())
    plan = fastpath.plan(layout, copy_columns(layout), PG_TYPES, b"\n")
    assert plan is not None and composed != decomposed and b"NICOL" in composed
    assert len(fastpath.format_chunk(plan, np.frombuffer(decomposed, dtype=np.uint8)).dirty) > 0
    same(layout, decomposed)
    assert run(layout, decomposed, fast=True)[0] == run(layout, composed, fast=True)[0]
