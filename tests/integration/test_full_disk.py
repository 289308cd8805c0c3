"""A REAL full disk under the file store (tests/fault_disk.py: a small tmpfs as FLOWS_FILES_DIR), with the real
loader and formatter processes (tests/integration/replica_service.py, groups of their own).

What an operator of a regional system expects, and what these tests hold the services to:
- the work is not lost and not marked failed: the instance stays Formatting in progress / Running (no Format
  failed, no Failed loading for a full disk) and finishes by itself once space is freed (the tmpfs is grown);
- no partial or temporary file is left in the store to fill the disk further (its tmp/ folder is empty
  between attempts, every file under sha256/ is whole: its content hashes to its name);
- the log says that the store is full, where (path) and for which instance, one line per attempt, the
  attempts backed off (the line count stays small, the retry delays grow);
- the rest of the service goes on: another instance whose files fit is done while the first one waits;
- once space is freed the files are complete: sha256, bytes and record counts match the bytes in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from contracts import flows
from contracts.sources import DeliveredService, IntramoeniaBooking, PaymentDocument, SourceModel
from contracts.states import InstanceState
from contracts.topics import INTAKE_TOPICS
from services.loader.handlers import LOAD_NOT_COMPLETED
from services.loader.intake import store
from services.runtime.commands import send_command
from simulators.cup.generator import generate, month_period
from tests.fault_disk import SmallDisk, small_disk
from tests.integration.outage_loader import start_at_the_end
from tests.isolation import logged_process, scratch_database
from tests.log_capture import json_lines
from tests.scrape import scraped
from tests.stack_urls import KAFKA, free_port

pytestmark = pytest.mark.integration

KINDS: dict[type[SourceModel], str] = {DeliveredService: "delivered-service", PaymentDocument: "payment-document",
                                       IntramoeniaBooking: "intramoenia-booking"}
ROOMY_KB = 16 * 1024  # what the disk grows to once the test "frees space"
# The services' pass and first wait for space, shortened (production: a pass every 2 s / 5 s, a first wait of 5 s
# doubling): the same attempts, backed off the same way (1, 2, 4 s ...), in less time.
QUICK = {"FLOWS_PASS_S": "0.25", "FLOWS_SPACE_WAIT_INITIAL_S": "1"}
WAIT_S = 4.0  # how long the test watches the full disk before freeing space: three attempts or so (1 + 2 s apart)
# Log timestamps (wall clock, when a line is written) against the service's monotonic clock (when it decided):
# the spacing's lower bound allows this much for the moments each is read. Not a speed target.
CLOCKS_S = 0.05
FORMAT_BEGUN = ("format.started",)  # the line each attempt of a format writes first
LOAD_BEGUN = ("load.started", "load.feedback_again")  # the line each attempt of a load writes first


@dataclass
class Service:
    name: str
    log: Path
    health_port: int
    process: asyncio.subprocess.Process

    def lines(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines of `event` (structlog's "event" key)."""
        return json_lines(self.log, event)

    def tail(self) -> str:
        return f"--- {self.name}\n" + "\n".join(line[:500] for line in self.log.read_text(errors="replace")
                                                .splitlines() if "batch.stored" not in line)[-6000:]


async def _seed(url: str, loads: list[tuple[str, str, int, int]]) -> None:
    """Source data as intake stores it: (ente, month, services, bad records) per load."""
    conn = await asyncpg.connect(url)
    try:
        for n, (ente, month, services, bad) in enumerate(loads):
            batches: dict[type[SourceModel], list[SourceModel]] = {model: [] for model in KINDS}
            for record in generate(ente, month, services, seed=700 + n, bad=bad):
                batches[type(record)].append(record)
            for model, batch in batches.items():
                await store(conn, KINDS[model], batch)
    finally:
        await conn.close()


class Services(dict[str, Service]):
    """The real loader / formatter processes of a test, by name; `restart` kills one with SIGKILL and starts
    another in its place (same groups, same store)."""

    def __init__(self, running: contextlib.AsyncExitStack, url: str, files: Path, tmp_path: Path) -> None:
        super().__init__()
        self.running, self.url, self.files, self.tmp_path = running, url, files, tmp_path
        self.suffix = uuid.uuid4().hex[:8]
        self.started = 0

    async def start(self, name: str) -> Service:
        port = free_port(300 + 20 * self.started, 320 + 20 * self.started)
        self.started += 1
        env = {**os.environ, "DATABASE_URL": self.url, "FLOWS_KAFKA_BOOTSTRAP": KAFKA, "FLOWS_LOG_FORMAT": "json",
               "FLOWS_FILES_DIR": str(self.files), "FLOWS_REPLICA": name, "FLOWS_HEALTH_PORT": str(port),
               "PYTHONUNBUFFERED": "1", **QUICK}
        log = self.tmp_path / f"{name}-{self.started}.log"
        process = await self.running.enter_async_context(
            logged_process(log, "-m", "tests.integration.replica_service", name, self.suffix, env=env))
        self[name] = service = Service(name, log, port, process)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with asyncio.timeout(120):
                while True:
                    assert service.process.returncode is None, service.tail()
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with session.get(f"http://127.0.0.1:{service.health_port}/readyz") as response:
                            if response.status == 200:
                                return service
                    await asyncio.sleep(0.5)

    async def restart(self, name: str) -> Service:
        old = self[name]
        old.process.kill()
        assert await old.process.wait() == -signal.SIGKILL
        return await self.start(name)


@contextlib.asynccontextmanager
async def _services(url: str, files: Path, tmp_path: Path, *names: str) -> AsyncIterator[Services]:
    """The real loader / formatter processes on `url` and the file store `files`, ready (their /readyz)."""
    async with contextlib.AsyncExitStack() as running:
        services = Services(running, url, files, tmp_path)
        await start_at_the_end(KAFKA, f"loader-{services.suffix}", ["flows.load-requested"])
        await start_at_the_end(KAFKA, f"loader-sources-{services.suffix}", [t.name for t in INTAKE_TOPICS])
        await start_at_the_end(KAFKA, f"formatter-{services.suffix}", ["flows.format-requested"])
        for name in names:
            await services.start(name)
        yield services


async def _instances(url: str) -> dict[int, tuple[str, str, str]]:
    """instance -> (state, ente, flow type) from the read model."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT instance, state, ente, flow_type FROM instance_list")
    finally:
        await conn.close()
    return {int(r["instance"]): (r["state"], r["ente"], r["flow_type"]) for r in rows}


async def _events(url: str, instance: int) -> list[tuple[str, dict[str, Any]]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT type, data::text AS data FROM events WHERE stream_id = $1 ORDER BY version",
                                f"instance-{instance}")
    finally:
        await conn.close()
    return [(r["type"], json.loads(r["data"])) for r in rows]


async def _until(what: str, check: Any, services: dict[str, Service], limit_s: float) -> Any:
    """Polls `check()` (async) until it returns something truthy; fails naming `what`, with the logs."""
    try:
        async with asyncio.timeout(limit_s):
            while True:
                found = await check()
                if found:
                    return found
                for service in services.values():
                    assert service.process.returncode is None, service.tail()
                await asyncio.sleep(0.2)
    except TimeoutError:
        tails = "\n".join(s.tail() for s in services.values())
        raise AssertionError(f"{what}: not within {limit_s:.0f} s\n{tails}") from None


def _in_state(url: str, state: InstanceState, ente: str) -> Any:
    async def check() -> int | None:
        return next((i for i, (s, e, _) in (await _instances(url)).items() if e == ente and s == state.value), None)
    return check


def _full_or_done(url: str, loader: Service, ente: str) -> Any:
    """A check for _until: the loader found the store full (its first store.full line), or the ente's load ended."""
    async def check() -> Any:
        found = {e: s for s, e, _ in (await _instances(url)).values()}
        if found.get(ente) not in (None, InstanceState.RUNNING.value):
            return True
        return next((r for r in loader.lines("store.full")), None)
    return check


def _full_lines(service: Service, instance: int) -> list[dict[str, Any]]:
    return [r for r in service.lines("store.full") if r.get("instance") == instance]


def _store_is_whole(disk: SmallDisk) -> None:
    """No temporary file, and every stored file's content hashes to its address (nothing partial)."""
    assert disk.files("tmp") == [], f"temporary files left in the store: {disk.files('tmp')}"
    for path in disk.files("sha256"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.parent.name + path.name, path


def _assert_backed_off(lines: list[dict[str, Any]], disk: SmallDisk, instance: int) -> None:
    """One line per attempt, naming the path and the instance, the retry delays growing, and each attempt no sooner
    than the delay its predecessor announced. A hot loop would write a line every pass (here every 0.25 s) or more: the
    spacing catches it at any speed. (A count of lines in the test's window would not: a loaded machine stretches
    the window, and with it the count of attempts that are on time.)"""
    assert lines, "no store.full line"
    for line in lines:
        assert line["path"] == str(disk.path) and line["instance"] == instance, line
        assert line["level"] == "warning" and "No space left on device" in line["error"], line
    delays = [line["retry_in_s"] for line in lines]
    assert delays == sorted(delays) and (len(delays) == 1 or delays[-1] > delays[0]), delays
    for before, after in itertools.pairwise(lines):  # an attempt's line comes after the attempt ran
        assert _at(after) >= _at(before) + before["retry_in_s"] - CLOCKS_S, \
            [(line["timestamp"], line["retry_in_s"]) for line in lines]


def _at(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"]).timestamp()


def _attempts(service: Service, instance: int, began: tuple[str, ...]) -> tuple[int, int]:
    """(attempts begun, attempts that met the full store) of `instance`, as `service` has logged them so far."""
    begun = sum(1 for event in began for line in service.lines(event) if line.get("instance") == instance)
    return begun, len(_full_lines(service, instance))


async def _between_attempts(what: str, service: Service, instance: int, began: tuple[str, ...], look: Any,
                            services: dict[str, Service], limit_s: float = 120) -> Any:
    """`look()` (its asserts, what it returns) taken while `instance` rests between two attempts: every attempt
    begun so far has met the full store (its store.full line comes after its temporary files are gone) and none
    began while `look` ran. An attempt running meanwhile rightly holds a temporary file and the space it wrote, and
    has not written its line yet; when one comes (the service's pass meets its time whenever the test looks, on a
    loaded machine too), the test looks again once it is over."""
    try:
        async with asyncio.timeout(limit_s):  # a hang guard, no speed target
            while True:
                before = _attempts(service, instance, began)
                if before[0] == before[1]:
                    try:
                        found = look()
                        if inspect.isawaitable(found):
                            found = await found
                    except AssertionError:
                        if _attempts(service, instance, began) == before:
                            raise  # nothing ran meanwhile: what `look` saw is the rest between attempts
                    else:
                        if _attempts(service, instance, began) == before:
                            return found
                for running in services.values():
                    assert running.process.returncode is None, running.tail()
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"{what}: instance {instance} never between two attempts within {limit_s:.0f} s\n"
                             f"{service.tail()}") from None


async def _waiting_figure(service: Service, disk: SmallDisk) -> float | None:
    """flows_file_store_waiting{path=<the store>} on the service's /metrics (what FileStoreFull alerts on)."""
    return await scraped(service.health_port, f'flows_file_store_waiting{{path="{disk.path}"}}')


async def _snapshots(url: str, instance: int) -> list[tuple[int, int]]:
    """(snapshot, its rows left in load_problem) of every source snapshot the instance has."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT snapshot_id, (SELECT count(*) FROM load_problem p WHERE p.snapshot_id = "
                                "s.snapshot_id) AS problems FROM source_snapshot s WHERE instance = $1 "
                                "ORDER BY snapshot_id", instance)
    finally:
        await conn.close()
    return [(int(r["snapshot_id"]), int(r["problems"])) for r in rows]


def _stored_size(disk: SmallDisk, ref: dict[str, Any]) -> int:
    """The space a stored file takes on the tmpfs (whole pages)."""
    return (disk.path / "sha256" / ref["sha256"][:2] / ref["sha256"][2:]).stat().st_blocks * 512


def _file_checks(disk: SmallDisk, ref: dict[str, Any]) -> bytes:
    path = disk.path / "sha256" / ref["sha256"][:2] / ref["sha256"][2:]
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == ref["sha256"] and len(data) == ref["bytes"], ref
    return data


async def test_the_formatter_waits_for_space_on_a_full_store_and_finishes_the_files_once_it_is_freed(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Flusso C of 3,000 services (C1 + C2 ~1.4 MB) on a 256 KB store: it waits; one of 20 services fits and is
    Formatted meanwhile; the store grows to 16 MB and the first one is Formatted with whole, correct files."""
    async with scratch_database("t_fulldisk_fmt") as url, contextlib.AsyncExitStack() as context:
        disk = context.enter_context(small_disk(tmp_path / "files", size_kb=256))  # unmounted after the services
        services = await context.enter_async_context(_services(url, disk.path, tmp_path, "loader", "formatter"))
        await _seed(url, [("201", "2020-08", 3000, 0), ("202", "2020-08", 20, 0)])
        for ente in ("201", "202"):
            start, end = month_period("2020-08")
            await send_command(KAFKA, "flows.load-requested", flows.LoadRequested(
                request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente=ente,
                period=flows.Period(start=start, end=end), requested_by="test.fulldisk"), key=ente)
        big = await _until("the big load Checked", _in_state(url, InstanceState.CHECKED, "201"), services, 120)
        small = await _until("the small load Checked", _in_state(url, InstanceState.CHECKED, "202"), services, 60)
        formatter = services["formatter"]
        free_before = disk.free_bytes()

        await send_command(KAFKA, "flows.format-requested", flows.FormatRequested(
            instance=big, requested_by="test.fulldisk"), key=str(big))

        async def full_or_failed() -> Any:
            state = (await _instances(url))[big][0]
            return _full_lines(formatter, big) or state not in (InstanceState.CHECKED.value,
                                                               InstanceState.FORMATTING.value)
        await _until("the formatter finding the store full", full_or_failed, services, 90)
        full_at = time.monotonic()
        history = await _events(url, big)
        assert (await _instances(url))[big][0] == InstanceState.FORMATTING.value, history[-1]

        def whole_and_given_back() -> None:
            _store_is_whole(disk)
            # nor space held by a file removed but still open: the failed attempt gave all of it back
            assert disk.free_bytes() == free_before
        await _between_attempts("the store after a failed format", formatter, big, FORMAT_BEGUN,
                                whole_and_given_back, services)

        # the rest of the service goes on: a small instance's files fit, it is Formatted while the big one waits
        await send_command(KAFKA, "flows.format-requested", flows.FormatRequested(
            instance=small, requested_by="test.fulldisk"), key=str(small))
        await _until("the small instance Formatted", _in_state(url, InstanceState.FORMATTED, "202"), services, 60)
        assert (await _instances(url))[big][0] == InstanceState.FORMATTING.value
        small_files = (await _events(url, small))[-1][1]["files"]

        await asyncio.sleep(max(0.0, WAIT_S - (time.monotonic() - full_at)))
        assert (await _instances(url))[big][0] == InstanceState.FORMATTING.value

        def whole_then_lines() -> list[dict[str, Any]]:
            _store_is_whole(disk)
            return _full_lines(formatter, big)
        lines = await _between_attempts("the store after the formats that waited", formatter, big, FORMAT_BEGUN,
                                        whole_then_lines, services)
        _assert_backed_off(lines, disk, big)
        assert flows.TYPE_OF[flows.FormatFailed] not in [t for t, _ in await _events(url, big)]
        assert await _waiting_figure(formatter, disk) == 1.0  # the operator's alert (FileStoreFull)

        # The wait is this process's memory: a formatter killed while it waits (kill -9, between two attempts)
        # loses no work: its successor finds the instance Formatting in progress and waits the same way.
        formatter = await services.restart("formatter")

        async def full_again() -> Any:
            return _full_lines(formatter, big)
        await _until("the new formatter finding the store full", full_again, services, 60)
        assert (await _instances(url))[big][0] == InstanceState.FORMATTING.value

        def whole_with_the_small_files() -> None:
            _store_is_whole(disk)
            assert disk.free_bytes() == free_before - sum(_stored_size(disk, ref) for ref in small_files)
        await _between_attempts("the store after the new formatter's attempt", formatter, big, FORMAT_BEGUN,
                                whole_with_the_small_files, services)

        disk.grow(ROOMY_KB)
        freed_at = time.monotonic()
        await _until("the big instance Formatted once space is freed",
                     _in_state(url, InstanceState.FORMATTED, "201"), services, 60)
        resumed_s = time.monotonic() - freed_at
        history = await _events(url, big)
        resumed = [r for r in formatter.lines("store.space_again") if r.get("instance") == big]
        waited_again = _full_lines(formatter, big)
        assert await _waiting_figure(formatter, disk) == 0.0
        snapshot = next(d for t, d in history if t == flows.TYPE_OF[flows.LoadChecked])["source_instance"]
        conn = await asyncpg.connect(url)
        try:
            services_n, prescriptions = await conn.fetchrow(
                "SELECT count(*), count(DISTINCT prescription_id) FROM snapshot_service WHERE snapshot_id = $1",
                snapshot)
        finally:
            await conn.close()
        files = {f["kind"]: f for f in history[-1][1]["files"]}
        stored = {kind: _file_checks(disk, ref) for kind, ref in files.items()}

    print(f"\nfull disk (formatter): {len(lines)} store.full lines in {WAIT_S:.0f} s "
          f"(retry_in_s {[r['retry_in_s'] for r in lines]}); Formatted {resumed_s:.1f} s after the space was freed")
    types = [t for t, _ in history]
    assert flows.TYPE_OF[flows.FormatFailed] not in types
    assert types[-1] == flows.TYPE_OF[flows.Formatted] and types.count(flows.TYPE_OF[flows.Formatted]) == 1
    assert resumed and resumed[0]["attempts"] == len(waited_again), resumed
    assert sorted(files) == ["C1", "C2"]
    for kind, ref in files.items():
        data = stored[kind]
        # every service has its record, every prescription its row 99
        assert data.count(b"\n") == ref["records"] == services_n + prescriptions, (ref, services_n, prescriptions)


async def test_the_loader_waits_for_space_to_write_a_feedback_and_fails_the_load_only_for_its_records(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A load with 600 bad records (a feedback of ~100 KB) on a 48 KB store: it stays Running, with its snapshot
    and checks kept; a load with 10 bad records fails meanwhile with its feedback; the store grows and the first
    load becomes Failed loading with a whole feedback naming every problem."""
    async with scratch_database("t_fulldisk_load") as url, contextlib.AsyncExitStack() as context:
        disk = context.enter_context(small_disk(tmp_path / "files", size_kb=48))  # unmounted after the services
        services = await context.enter_async_context(_services(url, disk.path, tmp_path, "loader"))
        await _seed(url, [("201", "2020-08", 2000, 600), ("202", "2020-08", 230, 10)])
        loader = services["loader"]
        start, end = month_period("2020-08")

        async def load(ente: str) -> None:
            await send_command(KAFKA, "flows.load-requested", flows.LoadRequested(
                request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente=ente,
                period=flows.Period(start=start, end=end), requested_by="test.fulldisk"), key=ente)

        free_before = disk.free_bytes()
        await load("201")

        await _until("the loader finding the store full", _full_or_done(url, loader, "201"), services, 90)
        full_at = time.monotonic()
        big = next(i for i, (_, e, _) in (await _instances(url)).items() if e == "201")
        history = await _events(url, big)
        assert (await _instances(url))[big][0] == InstanceState.RUNNING.value, history[-1]

        def whole_and_given_back() -> None:
            _store_is_whole(disk)
            assert disk.free_bytes() == free_before  # no space held by a removed but open file either
        await _between_attempts("the store after a failed feedback", loader, big, LOAD_BEGUN, whole_and_given_back,
                                services)

        await load("202")  # not blocked behind the waiting load
        small = await _until("the small load Failed loading", _in_state(url, InstanceState.FAILED_LOADING, "202"),
                             services, 60)
        small_feedback = (await _events(url, small))[-1][1]["feedback"]
        assert small_feedback is not None and (await _instances(url))[big][0] == InstanceState.RUNNING.value

        await asyncio.sleep(max(0.0, WAIT_S - (time.monotonic() - full_at)))
        assert (await _instances(url))[big][0] == InstanceState.RUNNING.value

        def whole_then_lines() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
            _store_is_whole(disk)
            return (_full_lines(loader, big), [r for r in loader.lines("load.started") if r.get("instance") == big],
                    len([r for r in loader.lines("load.feedback_again") if r.get("instance") == big]))
        lines, started, again = await _between_attempts("the store after the feedbacks that waited", loader, big,
                                                        LOAD_BEGUN, whole_then_lines, services)
        _assert_backed_off(lines, disk, big)
        assert await _waiting_figure(loader, disk) == 1.0
        assert len(started) == 1, f"the load was started again (a new snapshot) instead of waiting: {started}"
        assert again == len(lines) - 1

        # A loader killed while it waits (kill -9, between two attempts) loses no work: its successor finds the
        # load Running and its snapshot checked (recorded in the database), and waits to write only the feedback:
        # no new snapshot, no new checks.
        first_snapshot = started[0]["snapshot"]
        loader = await services.restart("loader")

        async def full_again() -> Any:
            return _full_lines(loader, big)
        await _until("the new loader finding the store full", full_again, services, 60)
        assert (await _instances(url))[big][0] == InstanceState.RUNNING.value

        def whole_with_the_small_feedback() -> None:
            _store_is_whole(disk)
            assert disk.free_bytes() == free_before - _stored_size(disk, small_feedback)
        await _between_attempts("the store after the new loader's attempt", loader, big, LOAD_BEGUN,
                                whole_with_the_small_feedback, services)
        assert [r for r in loader.lines("load.started") if r.get("instance") == big] == [], \
            "the new loader took a new snapshot instead of finishing the checked one"
        assert [r["snapshot"] for r in loader.lines("load.feedback_again") if r.get("instance") == big][:1] == \
            [first_snapshot]

        disk.grow(ROOMY_KB)
        freed_at = time.monotonic()
        await _until("the big load Failed loading once space is freed",
                     _in_state(url, InstanceState.FAILED_LOADING, "201"), services, 60)
        resumed_s = time.monotonic() - freed_at
        history = await _events(url, big)
        resumed = [r for r in loader.lines("store.space_again") if r.get("instance") == big]
        waited_again = _full_lines(loader, big)
        _store_is_whole(disk)
        ref = history[-1][1]["feedback"]
        data = _file_checks(disk, ref)
        snapshots = await _snapshots(url, big)

    print(f"\nfull disk (loader): {len(lines)} store.full lines in {WAIT_S:.0f} s (retry_in_s "
          f"{[r['retry_in_s'] for r in lines]}); Failed loading {resumed_s:.1f} s after the space was freed")
    failed = history[-1][1]
    assert [t for t, _ in history] == [flows.TYPE_OF[flows.LoadRunning], flows.TYPE_OF[flows.LoadFailed]]
    assert failed["source_instance"] == first_snapshot  # the first loader's, checked, kept, finished by the second
    assert snapshots == [(first_snapshot, 0)], snapshots  # one snapshot; its problems are in the feedback file now
    # the planted problems (a few bad records fall on the same prescription, one error for them all)
    assert failed["errors"] >= 500 and LOAD_NOT_COMPLETED not in failed["summary"], failed
    assert resumed and resumed[0]["attempts"] == len(waited_again), resumed
    lines_in_file = data.decode().splitlines()
    assert lines_in_file[0] == "record_key;field;code;severity;message"
    assert len(lines_in_file) - 1 == ref["records"] == failed["errors"] + failed["warnings"], ref


async def _crash_postgres(url: str) -> None:
    """A real crash of the session's PostgreSQL: one of its backends killed with SIGKILL. The postmaster then ends
    every other backend and runs crash recovery, which empties every UNLOGGED table (load_problem among them), as
    after a power cut. Returns once it accepts connections again AFTER the crash: a witness connection, opened
    before the kill, is ended by the postmaster when it reacts to the crash; until then the server still takes
    connections as if nothing had happened (on a loaded machine the reaction comes late, and a connection made in
    between said "up" just before recovery mode refused the next one: CI, 2026-12-05)."""
    witness = await asyncpg.connect(url)
    conn = await asyncpg.connect(url)
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await conn.close(timeout=2)
    async with asyncio.timeout(60):
        while True:  # the postmaster has reacted once the witness's backend is gone
            try:
                # a wide timeout: one that runs out is taken for the reaction, and a SELECT 1 slower than 5 s on a
                # loaded machine was not one (the next connection could then land before the recovery again)
                await witness.fetchval("SELECT 1", timeout=30)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                break
            await asyncio.sleep(0.05)
        witness.terminate()
        while True:
            try:
                conn = await asyncpg.connect(url, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            await conn.close()
            return


async def test_a_postgres_crash_while_a_load_waits_for_space_makes_the_loader_check_again_not_pass_it(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The problems of a checked snapshot wait in load_problem, an UNLOGGED table, until the feedback file holds
    them. A crash of PostgreSQL while the load waits for space empties that table: finishing the load from the
    checked snapshot would then write an outcome with no problem (a Checked load of 600 bad records). The loader
    must see that the problems are gone, drop that snapshot and take the load again: Failed loading, every problem
    in its feedback, one snapshot left."""
    async with scratch_database("t_fulldisk_crash") as url, contextlib.AsyncExitStack() as context:
        disk = context.enter_context(small_disk(tmp_path / "files", size_kb=48))
        services = await context.enter_async_context(_services(url, disk.path, tmp_path, "loader"))
        await _seed(url, [("201", "2020-08", 2000, 600)])
        loader = services["loader"]
        start, end = month_period("2020-08")
        await send_command(KAFKA, "flows.load-requested", flows.LoadRequested(
            request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente="201",
            period=flows.Period(start=start, end=end), requested_by="test.fulldisk"), key="201")

        await _until("the loader finding the store full", _full_or_done(url, loader, "201"), services, 90)
        big = next(iter(await _instances(url)))
        assert (await _instances(url))[big][0] == InstanceState.RUNNING.value
        [(first_snapshot, problems)] = await _snapshots(url, big)
        assert problems >= 500

        # The snapshot and its checked mark commit without waiting for the WAL flush (services/loader/snapshot.py):
        # the WAL writer flushes them within ~0.6 s, a CHECKPOINT at once, so the crash below falls after it
        # whatever this machine's load (tests/integration/test_load_crash_commits.py crashes before it).
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()
        await _crash_postgres(url)
        # Crash recovery emptied load_problem: the checked snapshot has lost its problems. Its row may already be gone,
        # and a new snapshot taken, checked and stopped by the full store again: the loader's next attempt (1, 2, 4 s
        # after the first) can fall between the restart and this query (CI, 2026-12-06: [(1949, 600)], no 1948). Its
        # load.checked_problems_lost line (asserted below: this snapshot, 0 found) says what it found either way.
        after = await _snapshots(url, big)
        assert (first_snapshot, 0) in after or first_snapshot not in dict(after), "crash recovery kept load_problem"
        disk.grow(ROOMY_KB)
        final = await _until("the load ended", _in_state(url, InstanceState.FAILED_LOADING, "201"), services, 120)
        history = await _events(url, big)
        snapshots = await _snapshots(url, big)
        lost = [r for r in loader.lines("load.checked_problems_lost") if r.get("instance") == big]
        dropped = [r for r in loader.lines("load.dead_run_dropped") if r.get("instance") == big]
        ref = history[-1][1]["feedback"]
        data = _file_checks(disk, ref)

    assert final == big
    failed = history[-1][1]
    assert [t for t, _ in history] == [flows.TYPE_OF[flows.LoadRunning], flows.TYPE_OF[flows.LoadFailed]], history
    assert failed["errors"] >= 500 and LOAD_NOT_COMPLETED not in failed["summary"], failed
    assert lost and lost[0]["snapshot"] == first_snapshot and lost[0]["found"] == 0, lost
    assert [r["snapshot"] for r in dropped] == [first_snapshot], dropped
    assert failed["source_instance"] != first_snapshot and snapshots == [(failed["source_instance"], 0)], snapshots
    assert len(data.decode().splitlines()) - 1 == ref["records"] == failed["errors"] + failed["warnings"], ref
