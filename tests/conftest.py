"""Shared fixtures. Integration and e2e tests run against a REAL Kafka and PostgreSQL: `stack` starts them
once per session and raises, failing the test, when it can't. FLOWS_TEST_STACK chooses where they run
(deploy/localstack/containers.py): the local stack (default, or DATABASE_URL for PostgreSQL), or with
`containers` Docker containers through testcontainers; asked for containers without a Docker daemon
answering, the session stops at its start with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from deploy import localstack
from deploy.localstack import containers
from services.runtime.settings import Settings
from tests import stack_urls  # sets the test stack's folder and ports before anything starts

STACK_MODE = pytest.StashKey[containers.Mode]()

if os.environ.get("PYTEST_XDIST_WORKER"):
    # A pytest-xdist worker is started by the controller after the controller imported readline (pdb does), which
    # sets COLUMNS=80 and LINES=24 in the C environment when there is no terminal: the worker then has them in
    # os.environ, where the session run in one process never does, and the CLI's rich consoles (made at import) would
    # stay 80 columns wide whatever COLUMNS a test sets. The worker's environment as the one-process session's.
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)


def pytest_configure(config: pytest.Config) -> None:
    """Decides the stack before any test runs: FLOWS_TEST_STACK=containers with no Docker daemon answering
    stops the session here, with the reason, instead of falling back to the local stack."""
    try:
        config.stash[STACK_MODE] = containers.select()
    except localstack.StackError as exc:
        raise pytest.UsageError(str(exc)) from exc


# The test files that take longest, longest first (their tests' setup, call and teardown summed, `--durations=0` of a
# whole run on 2 cores: 1,900 s of work in 989 s); a file not named here comes after them, in collection order.
# `./run tests` hands pytest-xdist whole files in this order (--dist loadfile --no-loadscope-reorder): xdist's own
# order, the files with the most tests first, started these few-test files last, and the run ended with one worker
# busy for minutes, the other idle. Longest first, the short files fill the end. Only an order: a test in or out of
# this list runs the same.
LONGEST_FIRST = (
    "integration/test_replicas.py", "integration/test_stack_process_commands.py",
    "integration/test_three_broker_faults.py", "integration/test_stack_observability.py", "e2e/test_console_browser.py",
    "integration/test_localstack.py", "e2e/test_console_review_browser.py", "integration/test_loader_checks.py",
    "integration/test_outbox.py", "e2e/test_ts_730.py", "integration/test_console_security.py",
    "integration/test_full_disk.py", "integration/test_outage.py", "integration/test_contract_fuzz.py",
    "integration/test_interruptions.py", "e2e/test_console_ops_browser.py", "e2e/test_console_pages_browser.py",
    "e2e/test_console_users_browser.py", "integration/test_cli_access_log.py",
    "e2e/test_console_onboarding_facts_browser.py",
)
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first (LONGEST_FIRST), each file's tests in their own order (a stable sort)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> int:
        try:
            return rank.get(item.path.relative_to(TESTS).as_posix(), len(rank))
        except ValueError:  # a test outside tests/ (given by path)
            return len(rank)
    items.sort(key=key)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The scratch databases' template (tests/isolation.py) dropped, when the session made one."""
    from tests import isolation

    if isolation.template_made():
        try:
            asyncio.run(isolation.drop_template())
        except (OSError, asyncpg.PostgresError) as exc:  # the server is gone: it goes with the stack
            print(f"the session's template database was not dropped: {exc}")


def uses_session_stack(item: pytest.Item) -> bool:
    """Whether a test works on the session's stack (its Kafka, its PostgreSQL, the e2e platform): an integration or
    e2e test, unless it runs on stacks of its own (`private_stack`, test_two_stacks.py's `two_stacks`)."""
    if "/integration/" not in str(item.path) and "/e2e/" not in str(item.path):
        return False
    return not {"private_stack", "two_stacks"} & set(getattr(item, "fixturenames", ()))


@pytest.fixture(autouse=True)
def _session_stack(request: pytest.FixtureRequest) -> None:
    """The session's stack for every test that works on it (`uses_session_stack`), even one that only reads
    tests.stack_urls; never for the others: a pytest-xdist worker given none of them starts no stack."""
    if uses_session_stack(request.node):
        request.getfixturevalue("stack")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """The ports the test reserved (tests/stack_urls.py) released once its fixtures are torn down."""
    try:
        return (yield)
    finally:
        stack_urls.release_reserved()


@pytest.fixture(scope="session")
def stack(request):  # type: ignore[no-untyped-def]
    """The test stack, started once per session, at the first test that works on it: the one ./run started, or a
    pytest-xdist worker's own (tests/stack_urls.py), which stays running as the first does (./run tests-down stops
    both)."""
    from services.runtime.topics_admin import apply_topics

    if request.config.stash[STACK_MODE] == "containers":
        running = containers.start(progress=lambda line: None)
        request.addfinalizer(running.stop)
        info = running.info
    else:
        if not (localstack.state_dir() / "kafka" / "libs").exists():
            link_session_jars(localstack.state_dir())  # a worker's first stack: no Maven run
        info = localstack.up(progress=lambda line: None)
    # The brokers never auto-create topics: the tests run on the registry's topics, provisioned as
    # `flows stack up` provisions them.
    localstack._run_async(lambda: apply_topics(info.bootstrap_servers, Settings().topic_partitions))
    return info


@pytest.fixture(scope="session")
def settings(stack, tmp_path_factory) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(database_url=stack.database_url, kafka_bootstrap=stack.bootstrap_servers,
                    files_dir=tmp_path_factory.mktemp("files"), log_format="console")


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
async def fresh_db(stack) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """A new, migrated database for one test; dropped afterwards (kept with FLOWS_KEEP_TEST_DB)."""
    from tests.isolation import scratch_database

    async with scratch_database("t", keep=bool(os.environ.get("FLOWS_KEEP_TEST_DB"))) as url:
        yield url


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    """The runtime's pool (services.runtime.db: jsonb as text, as the services use it) on `fresh_db`.
    A module that needs another pool defines its own `pool`, which takes precedence."""
    from services.runtime.db import create_pool

    pool = await create_pool(fresh_db, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def conn(fresh_db: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to `fresh_db` (asyncpg's own codecs)."""
    connection = await asyncpg.connect(fresh_db)
    try:
        yield connection
    finally:
        await connection.close()


# ---------------------------------------------------------------- private stacks (fault tests)
def free_stack_ports(brokers: int) -> tuple[int, int]:
    """A Kafka port base (2 ports per node), its TS simulator port (base + 8), a PostgreSQL port (base + 10) and
    a console port (base + 12: `private_stack`), all currently free and now reserved for the test, within the test
    stack's own range (FLOWS_KAFKA_PORT_BASE + 100 .. + 900): parallel sessions on one machine, each with its own
    port base, never pick the same ports."""
    own = int(os.environ["FLOWS_KAFKA_PORT_BASE"])
    got = stack_urls.reserve_first(
        [base + i for i in range(2 * brokers)] + [localstack.ts_sim_port(base), base + 10, base + 12]
        for base in range(own + 108, own + 900, 20))
    if got is None:
        raise AssertionError(f"no free ports in {own + 108}-{own + 900}")
    return got[0], got[0] + 10


def link_session_jars(state: Path) -> None:
    """The session stack's Kafka jars (and their pom.sha256) hard-linked into a new state folder, as up() itself does
    from the default .stack/: up() finds them current and does not run Maven (~2 s a private stack; .stack/ is
    absent on a fresh clone, whose tests run in .stack-test/). Nothing to link (a container session): Maven, as
    before."""
    session_libs = stack_urls.SESSION_STACK_DIR / "kafka" / "libs"
    if not (session_libs / "pom.sha256").is_file():
        return
    libs = state / "kafka" / "libs"
    libs.mkdir(parents=True)
    for path in session_libs.iterdir():
        try:
            os.link(path, libs / path.name)
        except OSError:
            shutil.copy2(path, libs / path.name)


@pytest.fixture
def private_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throw-away state folder on free ports. Deliberately NOT under pytest's tmp_path: every pytest
    session start chmods /tmp/pytest-of-<user> back to 0700, which would lock the PostgreSQL user out of
    its data folder if another session starts while this test runs."""
    base, pg_port = free_stack_ports(brokers=3)
    state = Path(tempfile.mkdtemp(prefix="flows-stack-test-"))
    link_session_jars(state)
    monkeypatch.setenv("FLOWS_STACK_DIR", str(state))
    monkeypatch.setenv("FLOWS_KAFKA_PORT_BASE", str(base))
    monkeypatch.setenv("FLOWS_PG_PORT", str(pg_port))
    # The console of a stack with services binds FLOWS_CONSOLE_PORT (default 18080): the platform's own stack
    # (`./run platform`) may hold that one on this machine.
    monkeypatch.setenv("FLOWS_CONSOLE_PORT", str(base + 12))
    for name in ("DATABASE_URL", "FLOWS_DATABASE_URL", "FLOWS_KAFKA_BOOTSTRAP", "FLOWS_TS_SIM_PORT"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield state
    finally:
        # Whatever the test did, leave nothing running. Killed, not stopped: the stack and its data are thrown away
        # here, and no test proves anything with this stop (one that tests down() calls it itself). A graceful
        # down() of 3 brokers and 7 services took 8-33 s of waiting (controlled shutdowns, services one by one).
        localstack.down(progress=lambda _msg: None, hard=True)
        shutil.rmtree(state, ignore_errors=True)
