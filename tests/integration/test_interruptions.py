"""Interrupted work, backed off per instance (services.runtime.backoff.Interruptions), on the real stack.

A load / a format whose PostgreSQL session is ended again and again (pg_terminate_backend of the session, as a
DBA, an idle-session timeout or a proxy would do it; an OOM-killed backend ends it the same way) is tried again
by the service's pass, but no sooner than its backoff says: the first delay, then doubling. One warning per
interruption (instance, attempt, retry_in_s, ran_s, error); the instance stays Running / Formatting in progress
with nothing in its history; once the cuts stop it finishes exactly once, with one `*.recovered` line (attempts,
waited_s); its figure on /metrics is 1 while it waits, 0 after. And PostgreSQL stopped for everyone (a real
`pg_ctl stop`, tests/pg_outage.py) charges no instance an attempt it did not run: the outage rule.

The services are the real ones in their own processes (tests/integration/replica_service.py, through
test_replicas' helpers), with FLOWS_INTERRUPTED_RETRY_INITIAL_S shortening the first delay (production: the pass's
own period, 2 s for the loader, 5 s for the formatter) and FLOWS_PASS_S the pass (QUICK_PASS), which would otherwise
add up to a whole production period to each delay: the same attempts, backed off the same way, in less time. Every
cut is made while the work waits on a table lock the test holds, so the test decides how many attempts are cut. The
spacing is asserted as a lower bound only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from contracts import flows
from contracts.instance import FlowInstance
from contracts.states import InstanceState
from services.formatter import handlers as formatter_handlers
from services.loader import handlers as loader_handlers
from services.runtime import instances as instances_module
from services.runtime.backoff import Interruptions
from services.runtime.broker import is_transient
from services.runtime.commands import send_command
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore, StoreFull
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS
from simulators.cup.generator import month_period
from tests.integration.test_replicas import (
    FORMAT_EVENTS,
    LOAD_EVENTS,
    Replica,
    _cut_sessions_waiting_on_a_lock,
    _events,
    _logged,
    _request_load,
    _start_replicas,
    _states,
    _store_month,
    _until_logged,
    _wait_for,
)
from tests.isolation import lock_waiters, scratch_database
from tests.pg_outage import postgres_down
from tests.scrape import scraped
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

# Log timestamps (wall clock, when the line is written) against the service's monotonic clock (when it decided):
# the lower bounds allow this much for the moments each is read and for ran_s' rounding. Not a speed target.
CLOCKS_S = 0.05
QUICK_PASS = {"FLOWS_PASS_S": "0.2"}
QUIET = ("loop.error", "message.dead_lettered", "service.loop_failed", "load.crashed", "format.crashed")


async def _figure(replica: Replica, name: str) -> float | None:
    """`name{service=<the replica's service>}` on its /metrics."""
    return await scraped(replica.health_port, f'{name}{{service="{replica.service}"}}')


async def _figures(replica: Replica) -> tuple[float | None, float | None]:
    return (await _figure(replica, "flows_work_interrupted"),
            await _figure(replica, "flows_work_interrupted_longest_seconds"))


async def _interrupt(url: str, replicas: list[Replica], event: str, attempt: int) -> dict[str, Any]:
    """Ends the sessions that wait on the test's lock until the service logs interruption `attempt`. The cut attempt
    logs it before the service can begin the next one, so a session waiting on the lock anew while that line has not
    come means the cut missed this attempt (it ended a session of the attempt before, still waiting after its attempt
    ended): that one is cut too. Waited for as such, not for a time: the line looked for during 2 s after a cut
    (written within 0.06 s on a loaded machine) meant that a replica slowed past them was cut a second time, an
    interruption the test did not count (`cut.interrupted == cut.lines` then failed on a sound service)."""
    cut: set[int] = set()  # a terminated backend may still be listed for a moment: not cut again
    conn = await asyncpg.connect(url)  # outside the blocking transaction: each poll is a transaction of its own
    try:
        async with asyncio.timeout(120):  # a hang guard
            while not (found := _logged(replicas, event, attempt=attempt)):
                waiting = await lock_waiters(conn) - cut
                if waiting:
                    if found := _logged(replicas, event, attempt=attempt):
                        break  # logged before the next attempt began to wait: that one is for the next cut
                    await conn.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", list(waiting))
                    cut |= waiting
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no {event} attempt {attempt} within 120 s") from None
    finally:
        await conn.close()
    return found[0]


@contextlib.asynccontextmanager
async def _locked(url: str, table: str) -> AsyncIterator[None]:
    """`table` locked (ACCESS EXCLUSIVE) by a session of the test for the block: the work that reads it waits there,
    where the test ends its session (_cut_sessions_waiting_on_a_lock). The lock goes with the block (rolled back:
    nothing was written)."""
    blocker = await asyncpg.connect(url)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield
        await blocking.rollback()
    finally:
        await blocker.close()


def _at(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"]).timestamp()


def _assert_backed_off(lines: list[dict[str, Any]], first_s: float, started: dict[str, Any],
                       recovered: dict[str, Any]) -> None:
    """Attempts 1..N, retry_in_s first_s doubling; attempt n+1 began no sooner than attempt n's retry_in_s after it
    was cut (its start: its line's time less its ran_s), the successful attempt (`started`, its first line) no
    sooner than the last one's; the recovered line counts the N attempts and at least the sum of their delays."""
    assert [line["attempt"] for line in lines] == list(range(1, len(lines) + 1)), lines
    assert [line["retry_in_s"] for line in lines] == [first_s * 2 ** n for n in range(len(lines))], lines
    for line in lines:
        assert line["level"] == "warning" and line["error"] and line["ran_s"] >= 0, line
    for before, after in itertools.pairwise(lines):
        began = _at(after) - after["ran_s"]
        assert began >= _at(before) + before["retry_in_s"] - CLOCKS_S, (before, after)
    assert _at(started) >= _at(lines[-1]) + lines[-1]["retry_in_s"] - CLOCKS_S, (lines[-1], started)
    assert recovered["attempts"] == len(lines), recovered
    assert recovered["waited_s"] >= sum(line["retry_in_s"] for line in lines) - CLOCKS_S, recovered


@dataclass
class _Cut:
    """What a run of cuts left: the interruption lines (one per cut), the instance's state, history and figures
    while it waited, then the recovered line, its history, figures, `<work>.started` and `<work>.interrupted`
    lines and its replica's whole log once it had recovered."""

    work: str
    lines: list[dict[str, Any]]
    instance: int
    state_between: str
    between: list[str]
    waiting: tuple[float | None, float | None]
    recovered: dict[str, Any]
    events: list[dict[str, Any]]
    after: tuple[float | None, float | None]
    started: list[dict[str, Any]]
    interrupted: list[dict[str, Any]]
    text: str


async def _cut_until_recovered(url: str, replicas: list[Replica], replica: Replica, table: str, work: str, cuts: int,
                               done: InstanceState, start: Callable[[], Awaitable[Any]]) -> _Cut:
    """`start()` asks for the work (a load, a format) with `table` locked: each attempt waits on the lock and the
    test ends its session there, `cuts` times; then the lock goes, and the work reaches `done` and recovers."""
    async with _locked(url, table):
        await start()
        lines = [await _interrupt(url, replicas, f"{work}.interrupted", n) for n in range(1, cuts + 1)]
        instance = lines[0]["instance"]
        state_between = (await _states(url))[instance]
        between = [e["type"] for e in await _events(url)]
        waiting = await _figures(replica)
    await _wait_for(url, done, 1, replicas, limit_s=90)
    recovered = await _until_logged(replicas, f"{work}.recovered", 30, instance=instance)
    return _Cut(work, lines, instance, state_between, between, waiting, recovered, await _events(url),
                await _figures(replica), _logged(replicas, f"{work}.started", instance=instance),
                _logged(replicas, f"{work}.interrupted", instance=instance), replica.log.read_text(errors="replace"))


async def _snapshot_rows(url: str) -> dict[int, int]:
    """Rows of each snapshot left in snapshot_service."""
    conn = await asyncpg.connect(url)
    try:
        return {int(r[0]): int(r[1]) for r in await conn.fetch(
            "SELECT snapshot_id, count(*) FROM snapshot_service GROUP BY snapshot_id")}
    finally:
        await conn.close()


def _assert_cut_then_recovered(cut: _Cut, first_s: float, succeeded: dict[str, Any]) -> None:
    """One line per cut and no attempt more, backed off (_assert_backed_off; `succeeded`: the first line of the
    attempt that got through), the figures up while it waited and down after, nothing escaped to the loops."""
    print(f"\n{cut.work} cut {len(cut.lines)} times: retry_in_s {[r['retry_in_s'] for r in cut.lines]}, recovered "
          f"after {cut.recovered['waited_s']} s; error {cut.lines[0]['error'][:100]}")
    assert {line["instance"] for line in cut.lines} == {cut.instance}
    assert cut.interrupted == cut.lines  # one line per interruption, no attempt more
    _assert_backed_off(cut.lines, first_s, succeeded, cut.recovered)
    assert cut.waiting[0] == 1.0 and cut.waiting[1] is not None and cut.waiting[1] > 0, cut.waiting
    assert cut.after == (0.0, 0.0), cut.after
    for event in QUIET:  # every cut was this instance's interruption: none escaped to the pass's loop
        assert f'"{event}"' not in cut.text, event


async def test_a_load_cut_again_and_again_is_retried_backed_off_and_finishes_once(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cuts, first_s = 4, 0.25
    suffix = uuid.uuid4().hex[:8]
    async with scratch_database("t_load_cuts") as url, contextlib.AsyncExitStack() as running:
        await _store_month(url, "205", seed=83)
        replicas = await _start_replicas(running, url, tmp_path, suffix, [("loader-1", "loader")], 780,
                                         FLOWS_INTERRUPTED_RETRY_INITIAL_S=str(first_s), **QUICK_PASS)
        loader = replicas[0]
        # every attempt the pass takes up reads the problems of the instance's earlier runs first
        # (pipeline.earlier_runs): it waits on this lock, and the test ends its session there; the command's own
        # attempt (the instance's first run: no earlier run to read) takes its snapshot, then waits in its checks
        cut = await _cut_until_recovered(url, replicas, loader, "load_problem", "load", cuts, InstanceState.CHECKED,
                                         lambda: _request_load("205"))
        left = await _snapshot_rows(url)

    # the first attempt and the one that got through took a snapshot; those in between were cut before theirs
    assert len(cut.started) == 2, cut.started
    dead, last = cut.started[0]["snapshot"], cut.started[-1]["snapshot"]
    _assert_cut_then_recovered(cut, first_s, cut.started[-1])
    # an outage of the platform, not of the instance: its state and history did not move ...
    assert cut.state_between == InstanceState.RUNNING.value and cut.between == LOAD_EVENTS[:1], cut.between
    # ... and it finished exactly once, from the last snapshot: the first attempt's was dropped as a dead run's
    assert [e["type"] for e in cut.events] == LOAD_EVENTS, [e["type"] for e in cut.events]
    assert cut.events[-1]["data"]["source_instance"] == last != dead
    assert set(left) == {last}, left


async def test_a_format_cut_again_and_again_is_retried_backed_off_and_finishes_once(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cuts, first_s = 3, 0.5
    suffix = uuid.uuid4().hex[:8]
    async with scratch_database("t_format_cuts") as url, contextlib.AsyncExitStack() as running:
        await _store_month(url, "206", seed=84)
        replicas = await _start_replicas(running, url, tmp_path, suffix,
                                         [("loader-1", "loader"), ("formatter-1", "formatter")], 780,
                                         FLOWS_INTERRUPTED_RETRY_INITIAL_S=str(first_s), **QUICK_PASS)
        formatter = replicas[1]
        await _request_load("206")
        await _wait_for(url, InstanceState.CHECKED, 1, replicas, limit_s=60)
        [instance] = await _states(url)
        cut = await _cut_until_recovered(
            url, replicas, formatter, "snapshot_service", "format", cuts, InstanceState.FORMATTED,  # what it reads
            lambda: send_command(KAFKA, "flows.format-requested", flows.FormatRequested(
                instance=instance, requested_by="test.interruptions"), key=str(instance)))

    assert cut.instance == instance
    assert len(cut.started) == cuts + 1, cut.started  # one per attempt: the cut ones and the last
    _assert_cut_then_recovered(cut, first_s, cut.started[-1])
    assert cut.state_between == InstanceState.FORMATTING.value, cut.state_between
    assert cut.between == LOAD_EVENTS + FORMAT_EVENTS[:2], cut.between
    assert [e["type"] for e in cut.events] == LOAD_EVENTS + FORMAT_EVENTS, [e["type"] for e in cut.events]
    assert {f["kind"] for f in cut.events[-1]["data"]["files"]} >= {"C1", "C2"}, cut.events[-1]["data"]


class _Lines:
    """What the backoff logs (structlog's call shape)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    info = warning


def _loader(pool: asyncpg.Pool, log: _Lines, files: Path, service: str, first_s: float = 1.0,
            ) -> loader_handlers.LoaderDeps:
    """A loader's handlers in the test's process (one replica), its interruptions logged into `log`."""
    return loader_handlers.LoaderDeps(
        pool=pool, store=EventStore(pool, source="/flows/loader", projections=FLOW_PROJECTIONS), files=FileStore(files),
        interrupted=Interruptions(log, initial_s=first_s, service=service, work="load"))


async def _cut_once(url: str, deps: loader_handlers.LoaderDeps, instance: int) -> None:
    """One real interruption of the instance's load: its session ended (pg_terminate_backend) while it waits on
    a lock the test holds."""
    async with _locked(url, "load_problem"):
        run = asyncio.create_task(loader_handlers.run_instance(instance, deps))
        await _cut_sessions_waiting_on_a_lock(url)
        await asyncio.wait_for(run, 60)  # interrupted: it returns, the instance backed off


async def _running(deps: loader_handlers.LoaderDeps, ente: str) -> int:
    """A Running instance of a Flusso C load of August 2020, as a load request leaves it."""
    number = int(await deps.pool.fetchval("SELECT nextval('flow_instance_seq')"))
    start, end = month_period("2020-08")
    await deps.instances.append(FlowInstance(number), flows.LoadRunning(
        instance=number, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, version="2020", ente=ente,
        period=flows.Period(start=start, end=end), requested_by="test.interruptions"))
    return number


async def test_postgres_down_for_everyone_charges_no_instance_an_attempt_it_did_not_run(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two Running loads: `cut` was interrupted once (a real pg_terminate_backend: attempt 1, due again after the
    first delay), `waiting` was never tried. PostgreSQL is stopped for real. The loader's pass fails as a whole
    (its own query), and a run asked for while the server is down (the pass's query answered just before it went)
    fails before it holds the instance's lock: neither instance is charged. Once the server is back, the next pass
    runs both: `cut` recovers after its ONE attempt, `waiting` was never interrupted."""
    first_s = 1.0
    log = _Lines()
    async with scratch_database("t_outage_rule") as url:
        await _store_month(url, "207", seed=85)
        pool = await create_pool(url, min_size=1, max_size=6)
        try:
            await prepare_database(pool, FLOW_PROJECTIONS)
            deps = _loader(pool, log, tmp_path / "files", "test-outage", first_s)
            cut, waiting = await _running(deps, "207"), await _running(deps, "201")
            await _cut_once(url, deps, cut)
            assert [(e, kw["instance"], kw["attempt"]) for e, kw in log.lines] == [("load.interrupted", cut, 1)]
            await asyncio.sleep(first_s)  # its delay is over: due at the next pass

            async with postgres_down():
                for _ in range(2):  # the pass: its own query fails, no instance is tried
                    with pytest.raises(Exception) as failed:
                        await loader_handlers.run_due(deps)
                    assert is_transient(failed.value), repr(failed.value)
                for instance in (cut, waiting):  # a run asked for while the server is down
                    assert deps.interrupted.due(instance)
                    with pytest.raises(Exception) as failed:
                        await loader_handlers.run_instance(instance, deps)
                    assert is_transient(failed.value), repr(failed.value)
                charged = {key: wait.attempts for key, wait in deps.interrupted.waiting.items()}
                lines_during = list(log.lines)

            states: dict[int, str] = {}
            async with asyncio.timeout(120):  # a hang guard: the passes run as `every` runs them
                while set(states.values()) != {InstanceState.CHECKED.value} or len(states) != 2:
                    with contextlib.suppress(Exception):
                        await loader_handlers.run_due(deps)
                    states = {int(r["instance"]): r["state"] for r in await pool.fetch(
                        "SELECT instance, state FROM instance_list WHERE instance = ANY($1)", [cut, waiting])}
                    await asyncio.sleep(0.2)
            histories = {i: [e.type for e in await deps.store.read_stream(f"instance-{i}")] for i in (cut, waiting)}
        finally:
            await pool.close()

    assert charged == {cut: 1}, charged  # as before the outage: nothing charged for what did not run
    assert lines_during == log.lines[:1], lines_during
    assert [(e, kw["instance"]) for e, kw in log.lines] == [("load.interrupted", cut), ("load.recovered", cut)], \
        log.lines
    assert log.lines[-1][1]["attempts"] == 1
    assert deps.interrupted.waiting == {}
    assert histories == {cut: LOAD_EVENTS, waiting: LOAD_EVENTS}, histories


async def test_an_instance_another_replica_finished_is_forgotten_without_a_line_and_its_figure_goes_down(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Replica A's load of an instance is cut (it backs off); replica B's pass takes the instance and finishes it.
    A's next pass no longer lists it: A forgets it without a line and its figure goes back to 0, else
    flows_work_interrupted_longest_seconds would grow on A for ever and WorkInterrupted fire 15 minutes later
    for work that is done."""
    service = f"test-replica-a-{uuid.uuid4().hex[:6]}"
    log_a, log_b = _Lines(), _Lines()
    async with scratch_database("t_forgotten") as url:
        await _store_month(url, "202", seed=86)
        pool = await create_pool(url, min_size=1, max_size=6)
        try:
            await prepare_database(pool, FLOW_PROJECTIONS)
            a = _loader(pool, log_a, tmp_path / "files", service, first_s=60.0)
            b = _loader(pool, log_b, tmp_path / "files", f"test-replica-b-{uuid.uuid4().hex[:6]}")
            instance = await _running(a, "202")
            await _cut_once(url, a, instance)
            waiting = REGISTRY.get_sample_value("flows_work_interrupted", {"service": service})
            # and A's store had been full for it too: that wait is forgotten the same way (no FileStoreFull for it)
            store = tmp_path / "files"
            store.mkdir(exist_ok=True)
            a.space.failed(instance, StoreFull(store, 4096, OSError(errno.ENOSPC, "No space left on device")))
            await loader_handlers.run_due(b)  # B never saw it interrupted: it loads it at once
            state = await pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", instance)
            await loader_handlers.run_due(a)
        finally:
            await pool.close()

    assert waiting == 1.0 and state == InstanceState.CHECKED.value
    assert [e for e, _ in log_a.lines] == ["load.interrupted"] and log_b.lines == []  # no line for forgetting
    assert a.interrupted.waiting == {} and a.space.waiting == {}
    assert REGISTRY.get_sample_value("flows_work_interrupted", {"service": service}) == 0.0
    assert REGISTRY.get_sample_value("flows_work_interrupted_longest_seconds", {"service": service}) == 0.0


@pytest.mark.parametrize("work", ["load", "format"])
async def test_a_run_asked_for_during_an_attempt_starts_none_once_that_attempt_was_interrupted(
        work: str, stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A run is asked for (the pass, or the command) while an attempt of the same instance runs in the same
    service: the instance is due then, and the run takes the instance's lock once that attempt has let it go. When
    that attempt was interrupted, the run must start nothing: the interruption's wait is not over. Before, the wait
    was read only before the lock: the formatter's pass began an attempt 18 ms after the one it waited behind was
    cut (test_a_format_cut_again_and_again_..., its spacing check then failed, at load 6). Here the second run is held
    at the lock (a gate in instance_lock) until the first attempt was interrupted, every time."""
    log = _Lines()
    table = {"load": "load_problem", "format": "snapshot_service"}[work]  # what an attempt reads first
    async with scratch_database(f"t_due_race_{work}") as url:
        pool = await create_pool(url, min_size=1, max_size=6)
        try:
            await prepare_database(pool, FLOW_PROJECTIONS)
            loader = _loader(pool, log, tmp_path / "files", "test-due-race", first_s=600.0)
            instance = await _running(loader, "208")
            run: Callable[[], Coroutine[Any, Any, None]] = lambda: loader_handlers.run_instance(instance, loader)  # noqa: E731
            interrupted = loader.interrupted
            if work == "format":
                formatter = formatter_handlers.FormatterDeps(
                    pool=pool, store=EventStore(pool, source="/flows/formatter", projections=FLOW_PROJECTIONS),
                    files=FileStore(tmp_path / "files"),
                    interrupted=Interruptions(log, initial_s=600.0, service="test-due-race", work="format"))
                await loader.instances.append(await loader.instances.read(instance), flows.LoadChecked(
                    instance=instance, source_instance=instance, counts={}))
                await formatter.instances.append(await formatter.instances.read(instance),
                                                 flows.FormattingStarted(instance=instance))
                run = lambda: formatter_handlers.format_instance(instance, formatter)  # noqa: E731
                interrupted = formatter.interrupted

            real_lock, asked, gate = instances_module.instance_lock, [], asyncio.Event()

            @contextlib.asynccontextmanager
            async def gated(*args: Any) -> AsyncIterator[bool]:
                asked.append(args)
                if len(asked) == 2:
                    await gate.wait()  # the second run: at the lock until the first attempt let it go
                async with real_lock(*args) as held:
                    yield held

            monkeypatch.setattr(instances_module, "instance_lock", gated)
            async with _locked(url, table):
                first = asyncio.create_task(run())
                async with asyncio.timeout(60):  # hang guards, no speed target
                    while not await lock_waiters(pool):  # the first attempt holds the instance and waits on the table
                        assert not first.done(), first
                        await asyncio.sleep(0.01)
                    second = asyncio.create_task(run())
                    while len(asked) < 2:  # ... and the second run found it due: it is at the gate
                        assert not second.done(), second
                        await asyncio.sleep(0.01)
                await _cut_sessions_waiting_on_a_lock(url)
                await asyncio.wait_for(first, 60)  # interrupted: it returns, the instance backed off
                assert [(e, kw["attempt"]) for e, kw in log.lines] == [(f"{work}.interrupted", 1)], log.lines
                gate.set()
                async with asyncio.timeout(60):
                    while not second.done():
                        assert not await lock_waiters(pool), "an attempt began at once, its wait not over"
                        await asyncio.sleep(0.01)
                await second
            state = await pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", instance)
        finally:
            await pool.close()

    assert [(e, kw["attempt"]) for e, kw in log.lines] == [(f"{work}.interrupted", 1)], log.lines
    assert interrupted.waiting[instance].attempts == 1
    assert state == (InstanceState.RUNNING if work == "load" else InstanceState.FORMATTING).value
