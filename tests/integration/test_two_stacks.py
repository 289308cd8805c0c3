"""Two local stacks on one machine, with different port bases: Kafka, PostgreSQL and the TS simulator of
each run side by side without a collision, and each answers only for itself (real processes, no mocks).

Both stacks take their ports inside the test stack's own range (tests/conftest.py free_stack_ports), so
parallel sessions on one machine do not collide either."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import pytest

from deploy import localstack
from services.cli.stack import SERVICES
from tests.conftest import free_stack_ports, link_session_jars
from tests.integration.test_localstack import _live, _roundtrip

pytestmark = pytest.mark.integration

ENV = ("FLOWS_STACK_DIR", "FLOWS_KAFKA_PORT_BASE", "FLOWS_PG_PORT")


def _use(monkeypatch: pytest.MonkeyPatch, state: Path, base: int, pg_port: int) -> None:
    """Point deploy.localstack at one stack (it reads the environment at call time)."""
    monkeypatch.setenv("FLOWS_STACK_DIR", str(state))
    monkeypatch.setenv("FLOWS_KAFKA_PORT_BASE", str(base))
    monkeypatch.setenv("FLOWS_PG_PORT", str(pg_port))


@pytest.fixture
def two_stacks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Path, int, int]]]:
    """Two state folders (not under tmp_path: see tests/conftest.py private_stack); each is taken down
    at the end whatever the test did."""
    for name in ("DATABASE_URL", "FLOWS_DATABASE_URL", "FLOWS_KAFKA_BOOTSTRAP", "FLOWS_TS_SIM_PORT"):
        monkeypatch.delenv(name, raising=False)
    own = {name: os.environ[name] for name in ENV}
    stacks: list[tuple[Path, int, int]] = []
    try:
        yield stacks
    finally:
        for state, base, pg_port in stacks:
            _use(monkeypatch, state, base, pg_port)
            localstack.down(progress=lambda _msg: None)
            shutil.rmtree(state, ignore_errors=True)
        for name, value in own.items():
            monkeypatch.setenv(name, value)


def _simulator_argv(info: localstack.StackInfo) -> list[str]:
    """The TS simulator exactly as `flows stack up` starts it for this stack."""
    args = [a.replace("{state}", str(info.state_dir)).replace("{ts_port}", str(info.ts_port))
            for a in SERVICES["ts-simulator"]]
    return [sys.executable, "-m", *args]


def _listener(port: int) -> int | None:
    """The pid listening on a local TCP port, waiting up to 30 s for one (a service binds after it starts):
    the port must be this stack's own process, not someone else's."""
    deadline = time.monotonic() + 30
    while True:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


async def _submissions(port: int) -> int:
    """The simulator's own listing answers on its port (HTTP 200): how many files it accepted."""
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/__sim/submissions") as response:
                    assert response.status == 200
                    return len((await response.json())["submissions"])
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def _mark_and_read(url: str, mark: str) -> list[str]:
    """Write this stack's mark into its own database and read back every mark it holds."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS two_stacks_mark (mark text)")
        await conn.execute("INSERT INTO two_stacks_mark VALUES ($1)", mark)
        return [r["mark"] for r in await conn.fetch("SELECT mark FROM two_stacks_mark ORDER BY mark")]
    finally:
        await conn.close()


def test_two_stacks_with_different_port_bases_run_side_by_side(
    two_stacks: list[tuple[Path, int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    infos: list[localstack.StackInfo] = []
    for _ in range(2):  # the second picks its ports once the first holds its own
        base, pg_port = free_stack_ports(brokers=1)
        state = Path(tempfile.mkdtemp(prefix="flows-two-stacks-"))
        link_session_jars(state)  # no Maven run for each (the second takes the first one's, linked from the session's)
        two_stacks.append((state, base, pg_port))
        _use(monkeypatch, state, base, pg_port)
        info = localstack.up(brokers=1, progress=lambda _msg: None)
        localstack.start_service("ts-simulator", _simulator_argv(info), {})
        localstack.wait_services_alive(["ts-simulator"], settle_s=1.0, timeout=60)
        infos.append(info)

    a, b = infos
    assert a.bootstrap_servers != b.bootstrap_servers and a.database_url != b.database_url
    assert [a.ts_port, b.ts_port] == [localstack.ts_sim_port(base) for _, base, _ in two_stacks]
    assert a.ts_port != b.ts_port

    # Kafka: the same topic name on both, each reads back only what was written to it
    assert asyncio.run(_roundtrip(a.bootstrap_servers, "two-stacks", count=3)) == [b"m0", b"m1", b"m2"]
    assert asyncio.run(_roundtrip(b.bootstrap_servers, "two-stacks", count=2)) == [b"m0", b"m1"]
    # PostgreSQL: each database holds only its own mark
    assert asyncio.run(_mark_and_read(a.database_url, "a")) == ["a"]
    assert asyncio.run(_mark_and_read(b.database_url, "b")) == ["b"]
    # the TS simulators: each serves on its stack's port, each with its own SanitelCF certificate
    for state, base, pg_port in two_stacks:
        _use(monkeypatch, state, base, pg_port)
        assert _listener(localstack.ts_sim_port(base)) == localstack.status()["services"]["ts-simulator"]["pid"]
    for info in infos:
        assert asyncio.run(_submissions(info.ts_port)) == 0
    certs = [(info.state_dir / "ts-sim" / "sanitel-cf.pem").read_bytes() for info in infos]
    assert certs[0] != certs[1]

    pids: list[int] = []
    for (state, base, pg_port), info in zip(two_stacks, infos, strict=True):
        _use(monkeypatch, state, base, pg_port)
        status = localstack.status()
        sim = status["services"]["ts-simulator"]
        assert sim["running"] and psutil.Process(sim["pid"]).cmdline()[-4:-2] == ["--port", str(info.ts_port)]
        assert status["kafka"]["running"] and status["postgres"]["running"]
        assert status["postgres"]["port"] == pg_port
        sim_b = sim["pid"]
        pids += [sim["pid"], sim["supervisor_pid"], status["postgres"]["pid"],
                 *(node["pid"] for node in status["kafka"]["nodes"].values())]

    # taking one down leaves the other whole
    _use(monkeypatch, *two_stacks[0])
    localstack.down(progress=lambda _msg: None)
    _use(monkeypatch, *two_stacks[1])
    assert asyncio.run(_roundtrip(b.bootstrap_servers, "two-stacks-after", count=1)) == [b"m0"]
    assert asyncio.run(_mark_and_read(b.database_url, "b2")) == ["b", "b2"]
    assert asyncio.run(_submissions(b.ts_port)) == 0
    assert _listener(b.ts_port) == sim_b
    localstack.down(progress=lambda _msg: None)
    deadline = time.monotonic() + 10
    while any(_live(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _live(p)]
