"""services.runtime.backoff: the arithmetic of the per-instance backoff (Interruptions, and SpaceWaits on the same
base), its lines and its figures, on a clock the test moves. The behaviour on the real stack (a load and a format
cut again and again, PostgreSQL stopped for everyone): tests/integration/test_interruptions.py."""

from __future__ import annotations

import errno
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.formatter import handlers as formatter
from services.loader import handlers as loader
from services.runtime import backoff
from services.runtime.backoff import MAX_DOUBLINGS, Interruptions
from services.runtime.filestore import SPACE_WAIT_CAP_S, SPACE_WAIT_INITIAL_S, SpaceWaits, StoreFull
from services.runtime.settings import Settings
from tests.log_capture import RecordedLog


class _Clock:
    now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    found = _Clock()
    monkeypatch.setattr(backoff, "time", found)
    return found


def _cut() -> Exception:
    """The error asyncpg raises when the server ends the session (pg_terminate_backend)."""
    return asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")


def _figures(service: str) -> tuple[float | None, float | None]:
    return (REGISTRY.get_sample_value("flows_work_interrupted", {"service": service}),
            REGISTRY.get_sample_value("flows_work_interrupted_longest_seconds", {"service": service}))


def test_an_interrupted_instance_waits_the_first_delay_then_doubling_to_the_cap(clock: _Clock) -> None:
    log = RecordedLog()
    waits = Interruptions(log, initial_s=2.0, cap_s=300.0, service=f"t-{uuid.uuid4().hex[:6]}", work="load")
    delays = []
    for attempt in range(1, 12):
        assert waits.due(7)  # its time has come (or it never failed)
        clock.now += 0.5  # the attempt runs half a second, then is cut
        delays.append(waits.failed(7, _cut(), ran_s=0.5, snapshot=1950 + attempt))
        assert not waits.due(7) and waits.due(8)  # only this instance waits
        clock.now += delays[-1] - 0.01
        assert not waits.due(7)  # not one moment before its delay
        clock.now += 0.01
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert [(level, event) for level, event, _ in log.lines] == [("warning", "load.interrupted")] * 11
    first, last = log.lines[0][2], log.lines[-1][2]
    assert first == {"instance": 7, "attempt": 1, "retry_in_s": 2.0, "ran_s": 0.5, "snapshot": 1951,
                     "error": "AdminShutdownError: terminating connection due to administrator command"}
    assert last["attempt"] == 11 and last["retry_in_s"] == 300.0


def test_the_first_success_says_how_long_it_waited_and_finished_elsewhere_says_nothing(clock: _Clock) -> None:
    log = RecordedLog()
    service = f"t-{uuid.uuid4().hex[:6]}"
    waits = Interruptions(log, initial_s=5.0, service=service, work="format")
    assert _figures(service) == (0.0, 0.0)  # exported from the start: an alert rule sees the series
    started = clock.now
    waits.failed(7, _cut(), ran_s=3.0)
    clock.now += 5
    waits.failed(7, _cut(), ran_s=3.0)
    waits.failed(9, _cut(), ran_s=1.0)
    clock.now += 10
    assert _figures(service) == (2.0, clock.now - started)  # two instances; the longest since its first cut
    waits.done(7)
    assert log.lines[-1] == ("info", "format.recovered", {"instance": 7, "attempts": 2, "waited_s": 15.0})
    assert _figures(service) == (1.0, 10.0)
    waits.done(7)  # done again, or for work never interrupted: no line
    waits.done(8)
    waits.forget(9)  # finished or deleted elsewhere: forgotten without a line
    assert len(log.lines) == 4 and _figures(service) == (0.0, 0.0)
    assert waits.due(7) and waits.due(9)


def test_a_long_error_is_cut_and_the_exponent_never_overflows() -> None:
    waits = Interruptions(RecordedLog(), initial_s=2.0, cap_s=300.0, service="t-long", work="load")
    assert waits.delay(1) == 2.0 and waits.delay(10_000) == 300.0  # days of retries every cap_s
    assert Interruptions(RecordedLog(), initial_s=1e-9, cap_s=1e9).delay(10_000) == 1e-9 * 2.0 ** MAX_DOUBLINGS
    log = RecordedLog()
    Interruptions(log, service="t-long", work="load").failed(1, OSError("x" * 5000), ran_s=1.0)
    assert len(log.lines[0][2]["error"]) == backoff.ERROR_MAX


def test_space_waits_keep_their_own_arithmetic_on_the_shared_base() -> None:
    waits = SpaceWaits(RecordedLog())
    assert (waits.initial_s, waits.cap_s) == (SPACE_WAIT_INITIAL_S, SPACE_WAIT_CAP_S) == (5.0, 300.0)
    assert [waits.delay(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_the_first_retry_is_the_services_next_pass_unless_the_environment_says_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWS_INTERRUPTED_RETRY_INITIAL_S", raising=False)
    monkeypatch.delenv("FLOWS_INTERRUPTED_RETRY_CAP_S", raising=False)
    settings = Settings()
    production = (settings.interrupted_retry_initial_s, settings.interrupted_retry_cap_s)
    assert (loader.interruptions(*production).initial_s, loader.interruptions(*production).cap_s) == \
        (loader.PASS_S, 300.0) == (2.0, 300.0)
    assert formatter.interruptions(*production).initial_s == formatter.RESUME_PASS_S == 5.0
    monkeypatch.setenv("FLOWS_INTERRUPTED_RETRY_INITIAL_S", "0.5")
    monkeypatch.setenv("FLOWS_INTERRUPTED_RETRY_CAP_S", "4")
    settings = Settings()
    waits = loader.interruptions(settings.interrupted_retry_initial_s, settings.interrupted_retry_cap_s)
    assert [waits.delay(n) for n in range(1, 6)] == [0.5, 1, 2, 4, 4]


def test_the_pass_and_the_space_wait_are_settings_the_services_read_with_the_production_defaults(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """FLOWS_PASS_S sets the period of the loader's, the formatter's and the TS gateway's periodic pass, and with it
    the first retry of interrupted work (unless FLOWS_INTERRUPTED_RETRY_INITIAL_S says otherwise);
    FLOWS_SPACE_WAIT_INITIAL_S the first wait of work that found the store full. Unset: each service's own."""
    from faststream.kafka import KafkaBroker

    from services.formatter import app as formatter_app
    from services.loader import app as loader_app
    from services.runtime.filestore import FileStore
    from services.runtime.host import Runtime
    from services.ts_gateway import app as gateway_app

    for name in ("FLOWS_PASS_S", "FLOWS_SPACE_WAIT_INITIAL_S", "FLOWS_INTERRUPTED_RETRY_INITIAL_S"):
        monkeypatch.delenv(name, raising=False)

    def wired(app: object, settings: Settings) -> object:
        rt = Runtime(name="t", settings=settings, pool=None, store=None,  # type: ignore[arg-type]
                     broker=KafkaBroker("127.0.0.1:9"), files=FileStore(tmp_path))
        return app.wire(rt)  # type: ignore[attr-defined]

    production = Settings()
    assert [a.pass_period(production) for a in (loader_app, formatter_app, gateway_app)] == [2.0, 5.0, 10.0]
    for app, own in ((loader_app, 2.0), (formatter_app, 5.0)):
        deps = wired(app, production)
        assert (deps.interrupted.initial_s, deps.space.initial_s) == (own, 5.0), app  # type: ignore[attr-defined]

    monkeypatch.setenv("FLOWS_PASS_S", "0.25")
    monkeypatch.setenv("FLOWS_SPACE_WAIT_INITIAL_S", "1.5")
    quick = Settings()
    assert [a.pass_period(quick) for a in (loader_app, formatter_app, gateway_app)] == [0.25] * 3
    for app in (loader_app, formatter_app):
        deps = wired(app, quick)
        assert (deps.interrupted.initial_s, deps.space.initial_s) == (0.25, 1.5), app  # type: ignore[attr-defined]
    monkeypatch.setenv("FLOWS_INTERRUPTED_RETRY_INITIAL_S", "0.5")
    assert wired(loader_app, Settings()).interrupted.initial_s == 0.5  # type: ignore[attr-defined]


def test_a_pass_that_no_longer_lists_an_instance_forgets_it_unless_it_was_cut_after_the_query(clock: _Clock) -> None:
    log = RecordedLog()
    service = f"t-{uuid.uuid4().hex[:6]}"
    waits = Interruptions(log, service=service, work="load")
    waits.failed(7, _cut(), ran_s=1.0)  # finished by another replica later
    waits.failed(8, _cut(), ran_s=1.0)  # still Running
    clock.now += 1
    asked_at = clock.now  # the pass asks which instances are Running ...
    clock.now += 0.1
    waits.failed(9, _cut(), ran_s=0.1)  # ... meanwhile a message's run of a new instance is cut
    waits.forget_unlisted([8], asked_at)  # ... and the answer lists 8 only
    assert sorted(waits.waiting) == [8, 9] and len(log.lines) == 3  # 7 forgotten without a line
    assert _figures(service)[0] == 2.0


def test_an_instance_cut_at_the_very_moment_the_pass_asked_is_kept(clock: _Clock) -> None:
    """The pass's query, begun at `asked_at`, may not have seen an instance cut at that same moment: forgetting it
    would reset its backoff, and a load that brings PostgreSQL down would be retried at once. Kept, it costs at
    most a figure up until the next pass."""
    waits = Interruptions(RecordedLog(), service=f"t-{uuid.uuid4().hex[:6]}", work="load")
    asked_at = clock.now
    waits.failed(9, _cut(), ran_s=0.1)  # since == asked_at
    waits.forget_unlisted([], asked_at)
    assert sorted(waits.waiting) == [9] and not waits.due(9)


def test_a_full_stores_wait_is_forgotten_by_the_pass_too(tmp_path: Path) -> None:
    """SpaceWaits on the shared base: an instance that waited for space and that the pass no longer lists (finished
    by another replica) is forgotten without a line, and flows_file_store_waiting for its path drops to 0."""
    log = RecordedLog()
    waits = SpaceWaits(log)
    full = StoreFull(tmp_path, 4096, OSError(errno.ENOSPC, "No space left on device"))
    waits.failed(21, full)
    waits.failed(22, full)
    gauge = {"path": str(tmp_path)}
    assert REGISTRY.get_sample_value("flows_file_store_waiting", gauge) == 2.0
    waits.forget_unlisted([22], time.monotonic())
    assert sorted(waits.waiting) == [22] and [event for _, event, _ in log.lines] == ["store.full", "store.full"]
    assert REGISTRY.get_sample_value("flows_file_store_waiting", gauge) == 1.0
    waits.forget_unlisted([], time.monotonic())
    assert waits.waiting == {} and REGISTRY.get_sample_value("flows_file_store_waiting", gauge) == 0.0
