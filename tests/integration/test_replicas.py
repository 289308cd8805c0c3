"""Replicas share the work and survive each other (issue 14, must-show): two loaders and two formatters,
real service processes in the same consumer groups (tests/integration/replica_service.py), take 12
concurrent Flusso C loads of different enti and periods; one loader is killed with SIGKILL in the middle of a
load (after its snapshot, before its checks) and the other finishes it. Every instance reaches Checked and
then Formatted exactly once, no event is written twice, `flows replay --all --verify` is clean. Which
replica did what comes from the events themselves (metadata `replica`, FLOWS_REPLICA).

The figures (`pytest -s`): how the loads and formats split, the takeover time after the kill, wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiokafka.partitioner import DefaultPartitioner

from contracts import flows
from contracts.sources import DeliveredService, IntramoeniaBooking, PaymentDocument, SourceModel
from contracts.states import InstanceState
from contracts.topics import INTAKE_TOPICS
from services.loader.intake import store
from services.runtime.commands import send_command
from services.runtime.locks import LOAD_LOCK
from services.runtime.settings import Settings
from simulators.cup.generator import generate, month_period
from tests.integration.outage_loader import start_at_the_end
from tests.isolation import LOCK_WAITERS, REPO, logged_process, scratch_database
from tests.log_capture import json_lines
from tests.stack_urls import KAFKA, free_port, reserve_first

pytestmark = pytest.mark.integration

# 12 loads: every entity the platform knows (contracts/data/structures.csv has 9) in August, three again in
# September: 12 different (ente, period) instances.
LOADS = [(e, "2020-08") for e in ("201", "202", "203", "204", "205", "206", "207", "901", "902")] + \
        [(e, "2020-09") for e in ("201", "202", "203")]
SERVICES_PER_LOAD = 150
# Each load waits this long after its snapshot, so the loads overlap. (Both loaders take some because each holds half
# of the partitions; loader-1's third load waits for the kill in the hold, below, whatever this is.)
PAUSE_S = 0.3
KILL_IN_LOAD = 3  # loader-1 is killed in its third load (it finished two), held after its snapshot until then
KINDS: dict[type[SourceModel], str] = {DeliveredService: "delivered-service", PaymentDocument: "payment-document",
         IntramoeniaBooking: "intramoenia-booking"}
LOAD_EVENTS = [flows.TYPE_OF[flows.LoadRunning], flows.TYPE_OF[flows.LoadChecked]]
FORMAT_EVENTS = [flows.TYPE_OF[flows.FormatRequested], flows.TYPE_OF[flows.FormattingStarted],
                 flows.TYPE_OF[flows.Formatted]]


@dataclass
class Replica:
    name: str
    service: str
    log: Path
    health_port: int
    process: asyncio.subprocess.Process

    def lines(self, event: str) -> list[dict[str, Any]]:
        """The replica's JSON log lines of `event` (structlog's "event" key)."""
        return json_lines(self.log, event)


def _by_kind(records: Iterable[SourceModel]) -> dict[type[SourceModel], list[SourceModel]]:
    batches: dict[type[SourceModel], list[SourceModel]] = {model: [] for model in KINDS}
    for record in records:
        batches[type(record)].append(record)
    return batches


async def _seed(url: str) -> None:
    """The source data of the 12 loads, stored as intake stores it (the loads are what this test is about)."""
    conn = await asyncpg.connect(url)
    try:
        for n, (ente, month) in enumerate(LOADS):
            for model, batch in _by_kind(generate(ente, month, SERVICES_PER_LOAD, seed=1000 + n)).items():
                await store(conn, KINDS[model], batch)
    finally:
        await conn.close()


def _spread_requests() -> list[flows.LoadRequested]:
    """One request per load, their ids (the message keys) chosen so that every partition of
    flows.load-requested holds two: each loader's share of the partitions holds half the loads."""
    partitions = list(range(Settings().topic_partitions))
    per_partition: Counter[int] = Counter()
    requests = []
    for ente, month in LOADS:
        while True:
            request_id = uuid.uuid4()
            partition = DefaultPartitioner()(str(request_id).encode(), partitions, partitions)
            if per_partition[partition] < len(LOADS) // len(partitions):
                per_partition[partition] += 1
                break
        start, end = month_period(month)
        requests.append(flows.LoadRequested(request_id=request_id, flow_type=flows.FlowType.FLUSSO_C, ente=ente,
                                            period=flows.Period(start=start, end=end), requested_by="test.replicas"))
    return requests


async def _assigned_partitions(session: aiohttp.ClientSession, health_port: int) -> int:
    """The partitions a replica's consumers hold once it is ready (its /readyz), else -1."""
    try:
        async with session.get(f"http://127.0.0.1:{health_port}/readyz") as response:
            if response.status != 200:
                return -1
            detail = (await response.json())["checks"]["consumers"]["detail"]
    except (aiohttp.ClientError, OSError):
        return -1
    match = re.search(r"(\d+) partition", detail)
    return int(match.group(1)) if match else -1


async def _wait_for_the_groups(replicas: list[Replica]) -> None:
    """Every replica ready with a share of its group's partitions: both members of each group joined. A hang guard:
    four replicas' starts and joins took 12.7 s at load 6-9, which 120 s did not leave ten times over."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with asyncio.timeout(180):
            while True:
                for r in replicas:
                    assert r.process.returncode is None, f"{r.name} exited:\n{r.log.read_text()[-3000:]}"
                shares = [await _assigned_partitions(session, r.health_port) for r in replicas]
                if all(s > 0 for s in shares):
                    return
                await asyncio.sleep(0.5)


async def _held(health_port: int, topic: str) -> set[int]:
    """The partitions of ``topic`` a ready replica holds, as its /readyz lists them."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(f"http://127.0.0.1:{health_port}/readyz") as response:
            detail = (await response.json())["checks"]["consumers"]["detail"]
    match = re.search(re.escape(topic) + r" ([\d,]+)", detail)
    return {int(p) for p in match.group(1).split(",")} if match else set()


async def _states(url: str) -> dict[int, str]:
    conn = await asyncpg.connect(url)
    try:
        return {int(r["instance"]): r["state"] for r in await conn.fetch("SELECT instance, state FROM instance_list")}
    finally:
        await conn.close()


async def _snapshot_committed(url: str, snapshot_id: int) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT true FROM source_snapshot WHERE snapshot_id = $1", snapshot_id))
    finally:
        await conn.close()


def _tails(replicas: list[Replica]) -> str:
    """The end of each replica's log, without the intake's batch lines."""
    return "\n".join(f"--- {r.name}\n" + "\n".join(line[:400] for line in r.log.read_text().splitlines()
                                                  if "batch.stored" not in line)[-6000:] for r in replicas)


async def _wait_for(url: str, state: InstanceState, count: int, replicas: list[Replica], limit_s: float) -> None:
    states: dict[int, str] = {}
    try:
        async with asyncio.timeout(limit_s):
            while True:
                states = await _states(url)
                if len(states) == count and set(states.values()) == {state.value}:
                    return
                for r in replicas:
                    if r.name != "loader-1":  # the one the test kills
                        assert r.process.returncode is None, f"{r.name} exited:\n{r.log.read_text()[-3000:]}"
                await asyncio.sleep(0.3)
    except TimeoutError:
        raise AssertionError(f"not all {count} {state.value} within {limit_s:.0f} s: {states}\n"
                             f"{_tails(replicas)}") from None


async def _events(url: str) -> list[dict[str, Any]]:
    """Every event of the instance streams, data and metadata decoded."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT stream_id, version, event_id, type, data::text AS data, "
                                "metadata::text AS metadata FROM events "
                                "WHERE stream_id LIKE 'instance-%' ORDER BY stream_id, version")
    finally:
        await conn.close()
    return [{**dict(r), "data": json.loads(r["data"]), "metadata": json.loads(r["metadata"])} for r in rows]


async def _store_month(url: str, ente: str, seed: int) -> None:
    """One load's source data (ente, August 2020), stored as intake stores it."""
    conn = await asyncpg.connect(url)
    try:
        for model, batch in _by_kind(generate(ente, "2020-08", SERVICES_PER_LOAD, seed=seed)).items():
            await store(conn, KINDS[model], batch)
    finally:
        await conn.close()


async def _start_replicas(running: contextlib.AsyncExitStack, url: str, tmp_path: Path, suffix: str,
                          names: list[tuple[str, str]], ports_from: int, **env: str) -> list[Replica]:
    """The processes (name, service) of tests/integration/replica_service.py in the test's own groups, which start
    at the end of their topics (not at the session's whole history), each ready with its share of the partitions.
    `env`: more environment (FLOWS_TEST_LOAD_PAUSE_S, FLOWS_TEST_LOAD_HOLD_DIR)."""
    await start_at_the_end(KAFKA, f"loader-{suffix}", ["flows.load-requested"])
    await start_at_the_end(KAFKA, f"loader-sources-{suffix}", [t.name for t in INTAKE_TOPICS])
    await start_at_the_end(KAFKA, f"formatter-{suffix}", ["flows.format-requested"])
    replicas: list[Replica] = []
    for n, (name, service) in enumerate(names):
        port = free_port(ports_from + 20 * n, ports_from + 20 * n + 20)
        environment = {**os.environ, "DATABASE_URL": url, "FLOWS_KAFKA_BOOTSTRAP": KAFKA, "FLOWS_LOG_FORMAT": "json",
                       "FLOWS_FILES_DIR": str(tmp_path / "files"), "FLOWS_REPLICA": name,
                       "FLOWS_HEALTH_PORT": str(port), "PYTHONUNBUFFERED": "1", **env}
        log = tmp_path / f"{name}.log"
        process = await running.enter_async_context(
            logged_process(log, "-m", "tests.integration.replica_service", service, suffix, env=environment))
        replicas.append(Replica(name, service, log, port, process))
    await _wait_for_the_groups(replicas)
    return replicas


async def _request_load(ente: str) -> None:
    """A Flusso C load of August 2020 for `ente`."""
    start, end = month_period("2020-08")
    await send_command(KAFKA, "flows.load-requested", flows.LoadRequested(
        request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente=ente,
        period=flows.Period(start=start, end=end), requested_by="test.replicas"), key=ente)


async def test_two_loaders_and_two_formatters_share_12_loads_and_one_finishes_the_load_of_a_killed_one(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wall_started = time.monotonic()
    suffix = uuid.uuid4().hex[:8]
    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / "hold").touch()  # every run waits after its snapshot until go-<snapshot>: `releasing` writes them
    async with scratch_database("t_replicas") as url, contextlib.AsyncExitStack() as running:
        await _seed(url)
        replicas = await _start_replicas(
            running, url, tmp_path, suffix, [("loader-1", "loader"), ("loader-2", "loader"),
                                             ("formatter-1", "formatter"), ("formatter-2", "formatter")],
            600, FLOWS_TEST_LOAD_PAUSE_S=str(PAUSE_S), FLOWS_TEST_LOAD_HOLD_DIR=str(holds))
        loader_1, loader_2 = replicas[0], replicas[1]
        ready_s = time.monotonic() - wall_started

        async def releasing() -> None:
            """Every run goes on after its snapshot but loader-1's KILL_IN_LOAD-th, which waits there for the kill:
            the kill lands after its snapshot and before its checks however long the test takes to aim (a pause
            alone was a window of 1.5 s, which a loaded machine can miss: the load Checked before the kill)."""
            while True:
                for replica in (loader_1, loader_2):
                    for n, line in enumerate(replica.lines("load.started")):
                        if not (replica is loader_1 and n == KILL_IN_LOAD - 1):
                            (holds / f"go-{line['snapshot']}").touch()
                await asyncio.sleep(0.1)

        release = asyncio.create_task(releasing())

        async def stop_releasing() -> None:
            release.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await release
        running.push_async_callback(stop_releasing)

        # 12 load requests at once, spread over every partition (6 for each loader's share).
        requests = _spread_requests()
        await asyncio.gather(*(send_command(KAFKA, "flows.load-requested", r, key=str(r.request_id))
                               for r in requests))

        # loader-1 is killed in its third load: after the snapshot, before the checks and the outcome.
        try:
            async with asyncio.timeout(90):  # a hang guard, no speed target
                while len(started := loader_1.lines("load.started")) < KILL_IN_LOAD:
                    assert loader_1.process.returncode is None, loader_1.log.read_text()[-3000:]
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"loader-1 never started its load {KILL_IN_LOAD}: "
                                 f"{len(loader_1.lines('load.started'))} started") from None
        victim = int(started[KILL_IN_LOAD - 1]["instance"])
        first_snapshot = int(started[KILL_IN_LOAD - 1]["snapshot"])
        # "load.started" comes before the snapshot: the kill waits for its commit, and lands in the hold after it
        # (killed sooner, the snapshot's transaction is rolled back, and there is no dead run to drop)
        async with asyncio.timeout(60):  # a hang guard, no speed target
            while not await _snapshot_committed(url, first_snapshot):
                assert loader_1.process.returncode is None, loader_1.log.read_text()[-3000:]
                await asyncio.sleep(0.02)
        os.kill(loader_1.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert await loader_1.process.wait() == -signal.SIGKILL
        assert (await _states(url))[victim] == InstanceState.RUNNING.value  # killed in the middle of it
        assert not [r for r in loader_1.lines("load.finished") if int(r["instance"]) == victim]

        try:
            async with asyncio.timeout(120):  # the other loader takes the load over (a hang guard, no speed target)
                while not [r for r in loader_2.lines("load.started") if int(r["instance"]) == victim]:
                    assert loader_2.process.returncode is None, loader_2.log.read_text()[-3000:]
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"loader-2 never took over the load of instance {victim} after loader-1 was killed:"
                                 f"\n{loader_2.log.read_text()[-3000:]}") from None
        takeover_s = time.monotonic() - killed_at
        # a hang guard: this wait took 11.9 s at load 6-9 (all 12 Checked 13.9 s after the kill, printed below)
        await _wait_for(url, InstanceState.CHECKED, len(LOADS), replicas, limit_s=180)
        all_checked_s = time.monotonic() - killed_at

        # then a format request for each, at once: the two formatters share them
        instances = sorted(await _states(url))
        await asyncio.gather(*(send_command(KAFKA, "flows.format-requested",
                                            flows.FormatRequested(instance=i, requested_by="test.replicas"),
                                            key=str(i)) for i in instances))
        await _wait_for(url, InstanceState.FORMATTED, len(LOADS), replicas, limit_s=90)
        # which formatter holds which partition of the format requests (no formatter died: no rebalance)
        formatter_share = {r.name: await _held(r.health_port, "flows.format-requested")
                           for r in replicas if r.service == "formatter"}

        events = await _events(url)
        conn = await asyncpg.connect(url)
        try:
            snapshots = {int(r["instance"]): sorted(r["ids"]) for r in await conn.fetch(
                "SELECT instance, array_agg(snapshot_id) AS ids FROM source_snapshot GROUP BY instance")}
            dead_rows = await conn.fetchval("SELECT count(*) FROM snapshot_service WHERE snapshot_id = $1",
                                            first_snapshot)
        finally:
            await conn.close()
        replay = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.cli.main", "replay", "--all", "--verify"],
            capture_output=True, text=True, cwd=REPO, timeout=120,
            env={**os.environ, "DATABASE_URL": url, "FLOWS_KAFKA_BOOTSTRAP": KAFKA, "COLUMNS": "200"})
        show = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.cli.main", "show", str(victim)],
            capture_output=True, text=True, cwd=REPO, timeout=120,
            env={**os.environ, "DATABASE_URL": url, "FLOWS_KAFKA_BOOTSTRAP": KAFKA, "COLUMNS": "250"})
        logs = {r.name: r.log.read_text(errors="replace") for r in replicas}
    wall_s = time.monotonic() - wall_started

    by_instance: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        by_instance.setdefault(int(e["stream_id"].removeprefix("instance-")), []).append(e)
    loaded_by = Counter(e["metadata"].get("replica") for e in events if e["type"] == LOAD_EVENTS[1])
    formatted_by = Counter(e["metadata"].get("replica") for e in events if e["type"] == FORMAT_EVENTS[-1])
    victim_events = {e["type"]: e for e in by_instance[victim]}
    print(f"\nreplicas: ready after {ready_s:.1f} s; loads Checked by {dict(loaded_by)}, Formatted by "
          f"{dict(formatted_by)}; loader-1 killed in the load of instance {victim}: loader-2 started it again "
          f"{takeover_s:.1f} s after the kill, all 12 Checked {all_checked_s:.1f} s after it; wall {wall_s:.1f} s")

    # Every instance went through its states exactly once: no event written twice, none missing.
    assert sorted(by_instance) == instances and len(instances) == len(LOADS)
    for instance, history in by_instance.items():
        assert [e["type"] for e in history] == LOAD_EVENTS + FORMAT_EVENTS, (instance, [e["type"] for e in history])
        assert [e["version"] for e in history] == list(range(1, len(history) + 1))
    assert len({e["event_id"] for e in events}) == len(events)
    assert sorted((e["data"]["ente"], e["data"]["period"]["start"][:7]) for e in events
                  if e["type"] == LOAD_EVENTS[0]) == sorted((ente, month) for ente, month in LOADS)
    # Both loaders and both formatters did part of the work.
    assert set(loaded_by) == {"loader-1", "loader-2"} and sum(loaded_by.values()) == len(LOADS)
    # The format requests are keyed by instance number, which the sequence hands out as the loads interleave:
    # in 1 run in 2,048 all 12 fall on one formatter's partitions, and only that one is sure to work. (Not an
    # exact share: a formatter's periodic pass may take over a request the other has not reached yet.)
    partitions = list(range(Settings().topic_partitions))
    owner = {p: name for name, held in formatter_share.items() for p in held}
    assert sorted(owner) == partitions, formatter_share
    by_partition = Counter(owner[DefaultPartitioner()(str(i).encode(), partitions, partitions)] for i in instances)
    if len(by_partition) == 2:
        assert set(formatted_by) == {"formatter-1", "formatter-2"}, (formatted_by, by_partition)
    else:
        print(f"all 12 format requests on the partitions of {set(by_partition)}: 'both worked' not asserted")
    assert set(formatted_by) <= {"formatter-1", "formatter-2"} and sum(formatted_by.values()) == len(LOADS)
    # The killed load: begun by loader-1, finished by loader-2 from a snapshot of its own.
    assert victim_events[LOAD_EVENTS[0]]["metadata"]["replica"] == "loader-1"
    assert victim_events[LOAD_EVENTS[1]]["metadata"]["replica"] == "loader-2"
    assert victim_events[LOAD_EVENTS[1]]["data"]["source_instance"] != first_snapshot
    # whose snapshot (dead with loader-1) loader-2 dropped before taking its own: no rows left behind
    assert dead_rows == 0 and [r["snapshot"] for r in loader_2.lines("load.dead_run_dropped")] == [first_snapshot]
    # every instance keeps one snapshot: the one its outcome names
    assert snapshots == {i: [next(e for e in by_instance[i] if e["type"] == LOAD_EVENTS[1])["data"]["source_instance"]]
                         for i in instances}, snapshots
    # and the operator sees it: `flows show` names the replica beside the actor
    rows = {line.split("│")[3].strip(): line for line in show.stdout.splitlines() if line.count("│") > 5}
    assert "test.replicas (loader-1)" in rows[LOAD_EVENTS[0]] and "loader (loader-2)" in rows[LOAD_EVENTS[1]], \
        show.stdout
    # Nothing was dead-lettered, no replica died but the one killed.
    for name, text in logs.items():
        assert "message.dead_lettered" not in text and "service.loop_failed" not in text, name
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "every hash chain verifies" in replay.stdout and "equal the live ones" in replay.stdout, replay.stdout


def _logged(replicas: list[Replica], event: str, **match: Any) -> list[dict[str, Any]]:
    """`event` lines of every replica whose fields hold `match`, each with the replica's name under "replica"."""
    return [{**r, "replica": rep.name} for rep in replicas for r in rep.lines(event)
            if all(r.get(k) == v for k, v in match.items())]


async def _until_logged(replicas: list[Replica], event: str, limit_s: float,
                        where: Callable[[dict[str, Any]], bool] = lambda line: True, **match: Any) -> dict[str, Any]:
    """The first `event` line of the replicas that holds `match` and `where`, once one is written."""
    try:
        async with asyncio.timeout(limit_s):  # a hang guard, no speed target
            while not (found := [line for line in _logged(replicas, event, **match) if where(line)]):
                for r in replicas:
                    assert r.process.returncode is None, f"{r.name} exited:\n{r.log.read_text()[-3000:]}"
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"no {event} {match} within {limit_s:.0f} s\n{_tails(replicas)}") from None
    return found[0]


async def test_a_loader_that_lost_its_lock_writes_nothing_over_the_run_that_took_its_load_over(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A loader holds its lock on an instance through one PostgreSQL session. A cut of that one connection (here
    `pg_terminate_backend`, as a DBA, an idle-session timeout or a proxy would do it) frees the lock while the
    loader works on. The next pass of a loader then takes the load over and drops the snapshot it finds, the
    first run's. The first run must not write its outcome when it ends: it would name a snapshot that no longer
    exists (a Checked load with no rows; the formatter would write empty files)."""
    suffix = uuid.uuid4().hex[:8]
    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / "hold").touch()  # every run waits after its snapshot until the test writes go-<snapshot>
    async with scratch_database("t_lock_lost") as url, contextlib.AsyncExitStack() as running:
        await _store_month(url, "201", seed=77)
        replicas = await _start_replicas(running, url, tmp_path, suffix,
                                         [("loader-1", "loader"), ("loader-2", "loader")], 620,
                                         FLOWS_TEST_LOAD_HOLD_DIR=str(holds))
        await _request_load("201")
        first = await _until_logged(replicas, "load.started", 60)
        instance, first_snapshot = int(first["instance"]), int(first["snapshot"])

        conn = await asyncpg.connect(url)
        try:  # the first run's lock goes with its connection; the run itself waits on, unaware
            cut = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = $1 AND objid = $2 AND objsubid = 2", LOAD_LOCK, instance)
        finally:
            await conn.close()
        assert cut == 1, "no session held the load's lock"
        dropped = await _until_logged(replicas, "load.dead_run_dropped", 60, instance=instance)
        # the run that dropped it takes its own snapshot next (its line comes after the drop's: waited for, not
        # read at once, which could fall between the two lines)
        await _until_logged(replicas, "load.started", 60, lambda r: r["snapshot"] != first_snapshot,
                            instance=instance)
        seconds = [r for r in _logged(replicas, "load.started", instance=instance) if r["snapshot"] != first_snapshot]
        assert len(seconds) == 1 and seconds[0]["replica"] == dropped["replica"], seconds
        second = seconds[0]
        second_snapshot = int(second["snapshot"])

        (holds / f"go-{first_snapshot}").touch()  # the first run goes on: its checks, its feedback, its outcome
        refused = await _until_logged(replicas, "load.taken_over", 60, instance=instance)
        assert (await _states(url))[instance] == InstanceState.RUNNING.value
        between = [e["type"] for e in await _events(url)]

        (holds / f"go-{second_snapshot}").touch()
        await _wait_for(url, InstanceState.CHECKED, 1, replicas, limit_s=60)
        events = await _events(url)
        conn = await asyncpg.connect(url)
        try:
            snapshots = [(int(r["snapshot_id"]), int(r["rows"])) for r in await conn.fetch(
                "SELECT s.snapshot_id, (SELECT count(*) FROM snapshot_service x WHERE x.snapshot_id = s.snapshot_id) "
                "AS rows FROM source_snapshot s WHERE s.instance = $1", instance)]
        finally:
            await conn.close()

    print(f"\nlock lost: run 1 (snapshot {first_snapshot}, {first['replica']}) cut off, run 2 (snapshot "
          f"{second_snapshot}, {second['replica']}) dropped it; run 1's outcome refused: {refused['reason']}")
    assert dropped["snapshot"] == first_snapshot and second_snapshot != first_snapshot
    assert refused["snapshot"] == first_snapshot, refused
    assert between == [LOAD_EVENTS[0]], between  # nothing written by the run that lost its lock
    assert [e["type"] for e in events] == LOAD_EVENTS, [e["type"] for e in events]
    checked = events[-1]["data"]
    assert checked["source_instance"] == second_snapshot and checked["counts"]["services"] > 0, checked
    assert snapshots == [(second_snapshot, checked["counts"]["services"])], snapshots
    for r in replicas:
        text = r.log.read_text(errors="replace")
        assert "message.dead_lettered" not in text and "service.loop_failed" not in text, r.name


async def _cut_sessions_waiting_on_a_lock(url: str) -> int:
    """Terminates (pg_terminate_backend) the sessions of `url`'s database that wait on a lock (LOCK_WAITERS), once
    there are any. Asked from a connection of its own, outside the blocking transaction."""
    async with asyncio.timeout(60):  # a hang guard
        while True:
            conn = await asyncpg.connect(url)
            try:
                cut = await conn.fetchval(
                    f"SELECT count(pg_terminate_backend(pid)) FROM ({LOCK_WAITERS}) waiting")
            finally:
                await conn.close()
            if cut:
                return int(cut)
            await asyncio.sleep(0.05)


# The services' periodic pass, shortened for the tests that wait for it (production: loader 2 s, formatter 5 s, the
# first retry of interrupted work at the next one): the same pass, sooner.
QUICK_PASS = {"FLOWS_PASS_S": "0.5"}


async def test_a_connection_cut_under_a_load_leaves_it_running_and_the_next_pass_finishes_it(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The loader's connection is cut in the middle of a statement of a load (pg_terminate_backend of the session
    running it, while it waits on a lock the test holds): PostgreSQL's fault, not the load's. The instance stays
    Running (no Failed loading the operator would have to request again) and the loader's next pass takes the
    load again, from a snapshot of its own, to its real outcome."""
    suffix = uuid.uuid4().hex[:8]
    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / "hold").touch()
    async with scratch_database("t_conn_cut") as url, contextlib.AsyncExitStack() as running:
        await _store_month(url, "202", seed=78)
        replicas = await _start_replicas(running, url, tmp_path, suffix, [("loader-1", "loader")], 700,
                                         FLOWS_TEST_LOAD_HOLD_DIR=str(holds), **QUICK_PASS)
        await _request_load("202")
        first = await _until_logged(replicas, "load.started", 60)
        instance, first_snapshot = int(first["instance"]), int(first["snapshot"])

        blocker = await asyncpg.connect(url)
        try:
            blocking = blocker.transaction()
            await blocking.start()
            await blocker.execute("LOCK TABLE load_problem IN ACCESS EXCLUSIVE MODE")  # the checks write there
            (holds / f"go-{first_snapshot}").touch()  # the run goes on into its checks, and waits on the lock
            cut = await _cut_sessions_waiting_on_a_lock(url)
            interrupted = await _until_logged(replicas, "load.interrupted", 60, instance=instance)
            between = [(e["type"], e["version"]) for e in await _events(url)]
            state_between = (await _states(url))[instance]
            await blocking.rollback()
        finally:
            await blocker.close()

        # the next pass (every 0.5 s here, QUICK_PASS) takes the load again, from a snapshot of its own
        again = await _until_logged(replicas, "load.dead_run_dropped", 60, instance=instance)
        await _until_logged(replicas, "load.started", 60, lambda r: r["snapshot"] != first_snapshot,
                            instance=instance)  # its line comes after the drop's
        seconds = [r for r in _logged(replicas, "load.started", instance=instance) if r["snapshot"] != first_snapshot]
        assert len(seconds) == 1, seconds
        (holds / f"go-{seconds[0]['snapshot']}").touch()
        await _wait_for(url, InstanceState.CHECKED, 1, replicas, limit_s=60)
        events = await _events(url)

    print(f"\nconnection cut: {cut} session(s) ended under the load of instance {instance}: "
          f"{interrupted['error'][:120]}; taken again from snapshot {seconds[0]['snapshot']}")
    assert cut >= 1
    assert state_between == InstanceState.RUNNING.value and between == [(LOAD_EVENTS[0], 1)], between
    assert interrupted["snapshot"] == first_snapshot and again["snapshot"] == first_snapshot
    assert [e["type"] for e in events] == LOAD_EVENTS, [e["type"] for e in events]
    assert events[-1]["data"]["source_instance"] == seconds[0]["snapshot"]
    assert events[-1]["data"]["counts"]["services"] > 0


@contextlib.asynccontextmanager
async def _format_held_at_its_snapshot(url: str, instance: int) -> AsyncIterator[asyncpg.Connection]:
    """A format request for `instance`, sent while the test's connection (yielded) holds snapshot_service, what the
    formatter reads, in ACCESS EXCLUSIVE mode: the format waits on that lock until the block ends."""
    blocker = await asyncpg.connect(url)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("LOCK TABLE snapshot_service IN ACCESS EXCLUSIVE MODE")
        await send_command(KAFKA, "flows.format-requested", flows.FormatRequested(
            instance=instance, requested_by="test.replicas"), key=str(instance))
        yield blocker
        await blocking.rollback()
    finally:
        await blocker.close()


async def test_a_connection_cut_under_a_format_leaves_it_formatting_and_the_next_pass_finishes_it(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The formatter's connection is cut while it reads the snapshot (pg_terminate_backend of the session, while
    it waits on a lock the test holds): the instance stays Formatting in progress, not Format failed, and the
    formatter's next pass writes its files."""
    suffix = uuid.uuid4().hex[:8]
    async with scratch_database("t_conn_cut_fmt") as url, contextlib.AsyncExitStack() as running:
        await _store_month(url, "203", seed=79)
        replicas = await _start_replicas(running, url, tmp_path, suffix,
                                         [("loader-1", "loader"), ("formatter-1", "formatter")], 740, **QUICK_PASS)
        await _request_load("203")
        await _wait_for(url, InstanceState.CHECKED, 1, replicas, limit_s=60)
        [instance] = await _states(url)

        async with _format_held_at_its_snapshot(url, instance):
            cut = await _cut_sessions_waiting_on_a_lock(url)
            interrupted = await _until_logged(replicas, "format.interrupted", 60, instance=instance)
            state_between = (await _states(url))[instance]
        await _wait_for(url, InstanceState.FORMATTED, 1, replicas, limit_s=60)
        events = await _events(url)

    print(f"\nconnection cut under a format: {cut} session(s) ended: {interrupted['error'][:100]}")
    assert cut >= 1 and state_between == InstanceState.FORMATTING.value, state_between
    assert [e["type"] for e in events] == LOAD_EVENTS + FORMAT_EVENTS, [e["type"] for e in events]
    assert {f["kind"] for f in events[-1]["data"]["files"]} >= {"C1", "C2"}, events[-1]["data"]


async def test_a_formatter_killed_in_the_middle_of_a_format_leaves_it_to_the_other_which_formats_it_once(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two formatters; the one that takes a format request is killed with SIGKILL while it formats (it holds the
    instance's lock and waits on its snapshot's read, held up by a lock the test takes). Its session and lock end
    with it (the server notices when the read goes on), and the other formatter's pass takes the instance over: one
    Formatting in progress, one Formatted, written by the survivor, with the files it names in the store."""
    suffix = uuid.uuid4().hex[:8]
    async with scratch_database("t_fmt_kill") as url, contextlib.AsyncExitStack() as running:
        await _store_month(url, "204", seed=80)
        replicas = await _start_replicas(running, url, tmp_path, suffix, [
            ("loader-1", "loader"), ("formatter-1", "formatter"), ("formatter-2", "formatter")], 780, **QUICK_PASS)
        await _request_load("204")
        await _wait_for(url, InstanceState.CHECKED, 1, replicas, limit_s=60)
        [instance] = await _states(url)

        async with _format_held_at_its_snapshot(url, instance) as blocker:
            started = await _until_logged(replicas, "format.started", 60, instance=instance)
            async with asyncio.timeout(60):  # its read of the snapshot waits on the test's lock
                while not await blocker.fetchval(f"SELECT count(*) FROM ({LOCK_WAITERS}) waiting"):
                    await asyncio.sleep(0.1)
            victim = next(r for r in replicas if r.name == started["replica"])
            victim.process.send_signal(signal.SIGKILL)
            assert await victim.process.wait() == -signal.SIGKILL
            state_between = (await _states(url))[instance]
        survivors = [r for r in replicas if r is not victim]
        await _wait_for(url, InstanceState.FORMATTED, 1, survivors, limit_s=60)
        events = await _events(url)
        starts = _logged(replicas, "format.started", instance=instance)
        files_dir = tmp_path / "files"

    assert state_between == InstanceState.FORMATTING.value, state_between
    assert [e["type"] for e in events] == LOAD_EVENTS + FORMAT_EVENTS, [e["type"] for e in events]
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    survivor = next(r.name for r in survivors if r.service == "formatter")
    assert events[-1]["metadata"]["replica"] == survivor, events[-1]["metadata"]
    assert sorted(r["replica"] for r in starts) == sorted([victim.name, survivor]), starts
    files = events[-1]["data"]["files"]
    assert {f["kind"] for f in files} >= {"C1", "C2"}, files
    for f in files:  # each file named is in the store, whole
        data = (files_dir / "sha256" / f["sha256"][:2] / f["sha256"][2:]).read_bytes()
        assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"], f["name"]


def _free_run(count: int) -> int:
    """A port base whose next `count` ports are free, in this stack's own range (base + 700 .. + 900)."""
    own = int(os.environ["FLOWS_KAFKA_PORT_BASE"])
    got = reserve_first(range(base, base + count + 1) for base in range(own + 700, own + 900 - count, count + 1))
    if got is None:
        raise AssertionError(f"no {count} free ports in {own + 700}..{own + 900}")
    return got[0]


def _flows_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "COLUMNS": "250"}, timeout=timeout)


def test_stack_up_with_replicas_runs_each_consumer_twice_in_its_group_and_scales_down(
        private_stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`flows stack up --replicas 2` on a stack of its own: two processes of each consumer, each with its own
    log and health port, both members of the group (3 of the 6 partitions each); `flows stack status` lists
    every replica; `up --replicas 1` stops the second ones."""
    monkeypatch.setenv("FLOWS_OBSERVABILITY_PORT_BASE", str(_free_run(12)))
    # (no `flows stack down` at the end: `private_stack` kills the whole stack, however the test ended)
    up = _flows_cli("stack", "up", "--replicas", "2")
    assert up.returncode == 0, up.stdout + up.stderr
    services = json.loads(_flows_cli("stack", "status", "--json").stdout)["services"]
    replicated = ("loader", "formatter", "ts-gateway", "onboarding")
    for name in [*replicated, *(f"{s}-2" for s in replicated), "audit", "console", "ts-simulator"]:
        assert services[name]["running"], (name, services[name])
    assert not [n for n in services if n.startswith(("audit-", "console-", "ts-simulator-"))]
    logs = {services[n]["log"] for n in services}
    ports = {services[n]["health_port"] for n in services if n != "ts-simulator"}
    assert len(logs) == len(services) and len(ports) == len(services) - 1
    table = _flows_cli("stack", "status").stdout
    for name in ("loader-2", "formatter-2", "ts-gateway-2", "onboarding-2"):
        row = next(line for line in table.splitlines() if f" {name} " in line)
        assert "running" in row and f"127.0.0.1:{services[name]['health_port']}" in row, row

    partitions = Settings().topic_partitions

    async def shares() -> dict[str, int]:
        """Each replica's share, once both members of each group hold one and the two add up to the topic.
        The four are read one after the other, and `stack up` does not wait for the groups: a rebalance may end
        between two reads and show a moment's mix. A replica starved past its session on a loaded machine is
        dropped from its group, the other one takes every partition, and the starved one, running again,
        answers with its old share before it learns it was dropped (loader 3, loader-2 6); the second replica
        joining late does the same the other way (loader 6, loader-2 3). Such a reading is taken again.
        Replicas that are not one group never add up (6 and 6): the deadline fails them, naming what they
        held."""
        found: dict[str, int] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            try:
                async with asyncio.timeout(120):
                    while True:
                        found = {}
                        for name in ("loader", "loader-2", "formatter", "formatter-2"):
                            found[name] = await _assigned_partitions(session, services[name]["health_port"])
                        if all(v > 0 for v in found.values()) and found["loader"] + found["loader-2"] == \
                                partitions == found["formatter"] + found["formatter-2"]:
                            return found
                        await asyncio.sleep(1)
            except TimeoutError:
                raise AssertionError(f"the replicas never shared their groups' {partitions} partitions in "
                                     f"120 s: {found}") from None
    split = asyncio.run(shares())
    assert split["loader"] + split["loader-2"] == partitions == split["formatter"] + split["formatter-2"], split

    down = _flows_cli("stack", "up", "--replicas", "1")
    assert down.returncode == 0, down.stdout + down.stderr
    after = json.loads(_flows_cli("stack", "status", "--json").stdout)["services"]
    assert not [n for n in after if n.endswith("-2")], sorted(after)
    assert all(after[s]["running"] for s in replicated)

