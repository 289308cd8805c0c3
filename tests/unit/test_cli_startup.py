"""`flows` starts without importing what the command run does not use: `flows --help` and a usage error import no
database, Kafka, pydantic nor event-store code, and a group's module is imported only when that group runs. The
commands main.py does not define are listed from its LAZY table; these tests keep that table equal to the modules'
real commands and help, so the lazy start cannot change what `flows --help` shows."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.core
from typer.testing import CliRunner

from services.cli import main
from services.cli.main import app

REPO = Path(__file__).resolve().parents[2]

# `flows --help` as main.py's eager registration listed it (add_typer / ops_cli.register / app.command at import).
EVERY_COMMAND = [
    "tail", "lag", "access-log", "load", "instances", "show", "format", "files", "export", "feedback", "delete",
    "send-730", "deadlines", "replay", "demo", "stack", "sources", "ts", "topics", "audit", "dlq", "outbox", "users",
]
# Modules a command needs only once it talks to the platform, or that belong to one group.
HEAVY = ["aiokafka", "asyncpg", "pydantic", "structlog", "rich.progress", "contracts.flows", "contracts.states",
         "services.runtime.tracing", "services.runtime.settings", "services.runtime.eventstore", "deploy.localstack",
         "services.cli.instances", "services.cli.users", "services.cli.audit", "services.cli.dlq_cli",
         "services.cli.outbox_cli", "services.cli.ops_cli"]


def eager_app() -> typer.Typer:
    """`flows` registered as main.py did before the lazy table: every module imported, tail, lag and access-log
    before main's own commands, the audit, dlq, outbox and users groups after main's own groups."""
    from services.cli import audit, dlq_cli, ops_cli, outbox_cli, users

    eager = typer.Typer(help=app.info.help, **main.APP_SETTINGS)
    eager.command("tail")(ops_cli.tail)
    eager.command("lag")(ops_cli.lag)
    eager.command("access-log")(users.access_log)
    eager.registered_commands += app.registered_commands
    eager.registered_groups += app.registered_groups
    eager.add_typer(audit.audit_app, name="audit")
    eager.add_typer(dlq_cli.dlq_app, name="dlq")
    eager.add_typer(outbox_cli.outbox_app, name="outbox")
    eager.add_typer(users.users_app, name="users")
    return eager


def _help(application: typer.Typer, *args: str) -> str:
    result = CliRunner().invoke(application, [*args, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    return result.output


def _listed(help_text: str) -> list[str]:
    panel = help_text.split("─ Commands ")[1]
    return [line.split()[1] for line in panel.splitlines()[1:]
            if line.startswith("│ ") and not line.startswith("│  ")]


def test_flows_help_lists_every_command_with_its_help() -> None:
    assert _listed(_help(app)) == EVERY_COMMAND
    assert _help(app) == _help(eager_app())


@pytest.mark.parametrize("name", ["tail", "lag", "access-log", "audit", "dlq", "outbox", "users"])
def test_the_lazy_table_is_each_modules_real_command(name: str) -> None:
    real = main.load_lazy(name)
    first = inspect.cleandoc(real.short_help or real.help or "").split("\n\n")[0].strip()
    assert main.LAZY[name].help == first, f"LAZY[{name!r}].help differs from the help of {main.LAZY[name].module}"
    assert not real.hidden and not real.deprecated and not getattr(real, "rich_help_panel", None)
    assert isinstance(real, typer.core.TyperGroup) == main.LAZY[name].group
    assert _help(app, name) == _help(eager_app(), name)


def _imported_after(*argv: str) -> tuple[int, list[str]]:
    """Runs `flows ARGV` in a fresh interpreter, as the console script does, and answers its exit code and which of
    HEAVY it imported."""
    code = ("import sys\nfrom services.cli.main import app\nsys.argv = ['flows', *sys.argv[1:]]\n"
            "try:\n    app()\nexcept SystemExit as exc:\n    code = exc.code\n"
            f"import json\nprint(json.dumps({{'code': code, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}),"
            " file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, timeout=60)
    found = json.loads(done.stderr.strip().splitlines()[-1])
    return found["code"], found["heavy"]


def test_help_and_usage_errors_import_nothing_heavy() -> None:
    assert _imported_after("--help") == (0, [])
    assert _imported_after() == (2, [])  # no arguments: the help, exit 2
    # typer itself imports pydantic to report a usage error and to parse an option's value
    for argv in (["nosuch"], ["instance"], ["load", "--type", "BOGUS", "--ente", "201", "--from", "2026-10-01",
                                           "--to", "2026-10-31"], ["deadlines", "--month", "2026-13"]):
        assert _imported_after(*argv) == (2, ["pydantic"]), argv


CLI_MODULES = {"services.cli.instances", "services.cli.users", "services.cli.audit", "services.cli.dlq_cli",
               "services.cli.outbox_cli", "services.cli.ops_cli"}


@pytest.mark.parametrize(("argv", "module"), [(["dlq", "--help"], "services.cli.dlq_cli"),
                                              (["outbox", "--help"], "services.cli.outbox_cli"),
                                              (["audit", "--help"], "services.cli.audit"),
                                              (["users", "--help"], "services.cli.users"),
                                              (["access-log", "--help"], "services.cli.users"),
                                              (["lag", "--help"], "services.cli.ops_cli"),
                                              (["instances", "--help"], None)])
def test_a_command_imports_its_own_module_alone(argv: list[str], module: str | None) -> None:
    code, heavy = _imported_after(*argv)
    assert code == 0
    assert CLI_MODULES & set(heavy) == ({module} if module else set())


def test_reading_streams_imports_no_kafka_client_nor_tracing() -> None:
    """services.cli.users imports the console's auth, which imports the event store: reading or appending to
    PostgreSQL needs neither aiokafka nor structlog nor OpenTelemetry (the outbox relay and tracing do)."""
    code, heavy = _imported_after("users", "--help")
    assert code == 0
    assert {"services.runtime.eventstore", "services.cli.users"} <= set(heavy)
    assert not {"aiokafka", "structlog", "services.runtime.tracing"} & set(heavy)
