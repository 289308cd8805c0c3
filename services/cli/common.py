"""What every `flows` command shares: settings, a database pool, user-facing errors, tables.

A user error is printed as one red line that says what to do; never a Python repr or a stack
trace (set FLOWS_DEBUG=1 to see those).
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.table import Table

if TYPE_CHECKING:
    # Types only: every `flows` command imports this module, most never reach a database, pydantic's models nor
    # the local stack's code (`flows --help`, a usage error), so those load where they are used.
    import asyncpg
    import pydantic

    from deploy.localstack import StackInfo
    from services.runtime.settings import Settings

console = Console()
err = Console(stderr=True)
T = TypeVar("T")


class UserError(Exception):
    """Something the operator can fix; its message says how."""


def operator_name() -> str:
    """Who runs the command, as the history records them: FLOWS_OPERATOR, or the login name."""
    return os.environ.get("FLOWS_OPERATOR") or getpass.getuser()


def stack_environment(info: StackInfo) -> dict[str, str]:
    """The settings that point a process at one stack, as environment variables: what `flows stack up`
    gives the services it starts, and what every `flows` command resolves for itself (`settings`)."""
    return {
        "DATABASE_URL": info.database_url,
        "FLOWS_KAFKA_BOOTSTRAP": info.bootstrap_servers,
        "FLOWS_FILES_DIR": str(info.state_dir / "files"),
        "FLOWS_KEYS_DIR": str(info.state_dir / "keys"),
        "FLOWS_SANITEL_CERT": str(info.state_dir / "ts-sim" / "sanitel-cf.pem"),
        "FLOWS_TS_ENDPOINT": f"http://127.0.0.1:{info.ts_port}",
        "FLOWS_CHECKPOINT_KEY": str(info.state_dir / "audit" / "checkpoint-signing.key"),
        "FLOWS_CHECKPOINTS_DIR": str(info.state_dir / "audit" / "checkpoints"),
        "FLOWS_REPORTS_DIR": str(info.state_dir / "audit" / "reports"),
    }


def settings() -> Settings:
    """The one settings source of every `flows` command: the stack of FLOWS_STACK_DIR (the running one as
    its state file records it, else the one FLOWS_KAFKA_PORT_BASE / FLOWS_PG_PORT describe, see
    `localstack.endpoints`). A variable set explicitly (DATABASE_URL, FLOWS_KAFKA_BOOTSTRAP, ...) still
    wins: that is how a deployment without a local stack points the CLI at its cluster."""
    from deploy import localstack
    from services.runtime.settings import Settings

    values = stack_environment(localstack.endpoints())
    chosen: dict[str, Any] = {_field(name): value for name, value in values.items()
              if not os.environ.get(name) and not (name == "DATABASE_URL" and os.environ.get("FLOWS_DATABASE_URL"))}
    return Settings(**chosen)


def _field(env_name: str) -> str:
    """The keyword Settings takes for an environment variable (DATABASE_URL is an alias of its own)."""
    return env_name if env_name == "DATABASE_URL" else env_name.removeprefix("FLOWS_").lower()


def run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # not at import: `flows --help` and the usage errors never run a coroutine

    return asyncio.run(coro)


_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def month_option(value: str | None) -> str | None:
    """Typer callback of every `--month`: YYYY-MM with a month 01..12, or a usage error naming it."""
    if value is None:
        return None
    found = _MONTH.match(value)
    if not found or not 1 <= int(found.group(2)) <= 12:
        raise typer.BadParameter(f"{value!r} is not a month: give YYYY-MM, e.g. 2026-10")
    return value


def validation_message(exc: pydantic.ValidationError, names: dict[str, str] | None = None) -> str:
    """One line per invalid field, `field: what is wrong (got value)`, without pydantic's links;
    `names` renames a field as the operator knows it (e.g. `structure_sts11` -> `--sts11`)."""
    lines = []
    for e in exc.errors(include_url=False):
        loc = [str(part) for part in e["loc"]]
        if loc and names and loc[0] in names:
            loc[0] = names[loc[0]]
        where = ".".join(loc) or exc.title
        message = e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] == "value_error" or isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
        lines.append(f"{where}: {message}{got}")
    return "; ".join(lines)


def user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turns known failures into one clear line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        _quiet_client_logs()
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # usage errors: typer prints them with the command's usage
        except UserError as exc:
            _fail(str(exc))
        except Exception as exc:
            message = _known_failure(exc)
            if message is None:
                raise
            _fail(message)
        raise AssertionError("unreachable")

    return wrapper


def _known_failure(exc: Exception) -> str | None:
    """The one line `user_errors` prints for `exc`, or None to let it go up (FLOWS_DEBUG=1). pydantic and asyncpg
    are looked up in sys.modules, not imported: an exception of theirs exists only once they were imported, and
    importing them here would cost every command (`flows --help` included) their import time."""
    debug = bool(os.environ.get("FLOWS_DEBUG"))
    pydantic_core = sys.modules.get("pydantic_core")  # pydantic.ValidationError is pydantic_core's
    if pydantic_core is not None and isinstance(exc, pydantic_core.ValidationError):
        return validation_message(exc)
    if isinstance(exc, ValueError):  # our own checks of what the operator gave: the message says what is wrong
        return None if debug else str(exc)
    apg = sys.modules.get("asyncpg")
    if apg is not None and isinstance(exc, apg.UndefinedTableError):
        return None if debug else (f"the platform database has no such table ({exc}): it is not set up yet. "
                                   "Start the platform with `flows stack up`, which migrates it.")
    if isinstance(exc, OSError) or (apg is not None and isinstance(exc, (apg.PostgresConnectionError,
                                                                           apg.CannotConnectNowError))):
        if debug:
            return None
        if isinstance(exc, OSError) and exc.filename is not None:
            # A file or folder the command reads or writes (an --out that is a folder, a path under a file, no
            # permission), not the platform: a connection's errors name no file.
            return f"cannot use {exc.filename}: {exc.strerror or exc}"
        return f"cannot reach the platform ({type(exc).__name__}: {exc}). Is it running? Try `flows stack up`."
    if debug:
        return None
    name = type(exc).__name__
    if name in ("KafkaConnectionError", "KafkaTimeoutError"):
        return f"cannot reach Kafka{_kafka_address()}. Is the platform running? Try `flows stack up`."
    return f"{name}: {exc}"


def _kafka_address() -> str:
    """" at <bootstrap servers>" of the command's settings, for the "cannot reach Kafka" line; "" when the settings
    themselves cannot be read (that line must not fail in turn)."""
    try:
        return f" at {settings().kafka_bootstrap}"
    except Exception:
        return ""


def _quiet_client_logs() -> None:
    """aiokafka logs its own connection failures ("Unable connect to ..."); the CLI configures no logging, so
    Python's last-resort handler printed them on the operator's terminal before the command's own line, which says
    the same and what to do. A handler that drops them keeps them off; FLOWS_DEBUG=1 shows them again."""
    client = logging.getLogger("aiokafka")
    if not os.environ.get("FLOWS_DEBUG") and not any(isinstance(h, logging.NullHandler) for h in client.handlers):
        client.addHandler(logging.NullHandler())


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


@contextlib.asynccontextmanager
async def database(cfg: Settings | None = None) -> AsyncIterator[asyncpg.Pool]:
    import asyncpg

    from services.runtime.db import create_pool

    cfg = cfg or settings()
    try:
        pool = await create_pool(cfg.database_url, min_size=1, max_size=4, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise UserError(f"cannot reach PostgreSQL at {cfg.database_url.split('@')[-1]} ({exc}). "
                        "Start the platform with `flows stack up`.") from exc
    try:
        yield pool
    finally:
        await pool.close()


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(title=title, header_style="bold", show_lines=False)
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    return t


def print_whole(renderable: RenderableType) -> None:
    """Print `renderable` (a table) at its natural width when the console is narrower: rich fits a table to the
    console, 80 columns when stdout is no terminal (a pipe, a log, a test), and cuts its cells to fit (`/work/wt-s…`);
    a path or an address cut so names nothing. A terminal narrower than the table wraps its lines instead."""
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update(max_width=10_000), renderable).maximum
    if needed <= console.width:
        console.print(renderable)
        return
    wide = Console(file=console.file, width=needed, force_terminal=console.is_terminal, no_color=console.no_color,
                   color_system=console.color_system)  # type: ignore[arg-type]
    wide.print(renderable)


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()
