"""What the operator sees when a command is given something wrong: one line (or typer's usage box)
that names the option or field and the value, never a Python repr, a class name or a stack trace.
These fail before any I/O, so they need no platform."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.main import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
NEVER = ("Traceback", "ValidationError", "ValueError", "errors.pydantic.dev", "BadParameter")


def _run(*args: str) -> tuple[int, str]:
    # A wide console: rich wraps long lines, and a word longer than the line (a path of pytest's temporary folder,
    # deeper under a pytest-xdist worker) is cut in two, which joining the lines again does not mend.
    result = runner.invoke(app, list(args), env={"FLOWS_DEBUG": "", "COLUMNS": "400"})
    text = re.sub(r"[\u2500-\u257f]", " ", result.output or "")  # the usage box's borders
    out = " ".join(text.split())  # rich wraps long lines
    for word in NEVER:
        assert word not in out, out
    return result.exit_code, out


@pytest.mark.parametrize("month", ["13-2026", "2026-13", "2026-1", "October"])
@pytest.mark.parametrize("command", [["deadlines"], ["sources", "generate", "--ente", "201", "--services", "5"]])
def test_a_month_that_is_not_yyyy_mm_is_a_usage_error_naming_the_option(command: list[str], month: str) -> None:
    code, out = _run(*command, "--month", month)
    assert code == 2
    assert "--month" in out and f"'{month}' is not a month: give YYYY-MM" in out


def test_an_entity_code_of_the_wrong_shape_names_the_field_and_the_value() -> None:
    code, out = _run("load", "--type", "FLUSSO_C", "--ente", "2x1", "--from", "2026-10-01", "--to", "2026-10-31",
                     "--no-wait")
    assert code == 1
    assert "error: ente: String should match pattern '^[0-9A-Z]{3}$' (got '2x1')" in out


def test_a_period_that_ends_before_it_starts_says_so() -> None:
    code, out = _run("load", "--type", "FLUSSO_C", "--ente", "201", "--from", "2026-10-31", "--to", "2026-10-01",
                     "--no-wait")
    assert code == 1
    assert "period end 2026-10-01 is before its start 2026-10-31" in out


def test_an_unknown_flow_type_lists_the_known_ones() -> None:
    code, out = _run("load", "--type", "FLUSSO_X", "--ente", "201", "--from", "2026-10-01", "--to", "2026-10-31")
    assert code == 2
    assert "'FLUSSO_X' is not one of FLUSSO_C, FLUSSO_C_PACC, FLUSSO_MEF, FLUSSO_ALPI_TA, FLUSSO_730" in out


def test_an_entity_without_structures_is_named_when_generating(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, out = _run("sources", "generate", "--ente", "999", "--month", "2026-10", "--services", "5",
                     "--out", str(tmp_path))
    assert code == 1
    assert out.startswith("error: ente 999: no structures in contracts/data/structures.csv")


@pytest.mark.parametrize("option", [["--services", "-5"], ["--services", "0"], ["--bad", "-1"]])
def test_a_negative_count_when_generating_is_a_usage_error_naming_the_option(tmp_path: Path,
                                                                            option: list[str]) -> None:
    code, out = _run("sources", "generate", "--ente", "201", "--month", "2026-10", *option, "--out", str(tmp_path))
    assert code == 2
    assert f"Invalid value for '{option[0]}'" in out
    assert not list(tmp_path.iterdir())  # nothing generated


def test_a_load_for_an_unknown_entity_is_refused_naming_it_before_sending_anything() -> None:
    code, out = _run("load", "--type", "FLUSSO_C", "--ente", "999", "--from", "2026-10-01", "--to", "2026-10-31",
                     "--no-wait")
    assert code == 1
    assert out.startswith("error: ente 999 is not a known entity (known: 201,")
    assert "cannot reach" not in out  # refused before any Kafka or PostgreSQL


def test_opening_a_request_with_a_bad_sts11_names_the_option_in_one_line() -> None:
    from services.cli.onboarding_cli import app as onboarding

    result = runner.invoke(onboarding, ["open", "--kind", "new-aggregation", "--name", "ASL X", "--sts11", "bad",
                                        "--municipality", "063049"], env={"FLOWS_DEBUG": ""})
    out = " ".join(result.output.split())
    for word in NEVER:
        assert word not in out, out
    assert result.exit_code == 1
    assert out == "error: open: --sts11: String should match pattern '^[0-9A-Z]{6}$' (got 'bad')"


@pytest.mark.parametrize(("content", "problem"), [
    (b"this is no workbook", "non è un archivio ZIP, come ogni file XLSX"),
    (b"", "non è un archivio ZIP, come ogni file XLSX"),
    ("zip without parts", "è un archivio ZIP ma non una cartella di lavoro XLSX (manca la parte [Content_Types].xml)"),
])
def test_a_corrupt_xlsx_is_one_line_naming_the_file_and_the_problem(content: bytes | str, problem: str) -> None:
    import io
    import zipfile

    from services.onboarding.tracciati import read_tables

    if isinstance(content, str):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("readme.txt", content)
        content = buf.getvalue()
    with pytest.raises(ValueError) as caught:
        read_tables("annex-a1.xlsx", content)
    message = str(caught.value)
    assert message.startswith("annex-a1.xlsx: non è leggibile come cartella di lavoro XLSX: ") and problem in message
    assert "\n" not in message


@pytest.mark.parametrize(("given", "meant"), [
    ("2026-12-06T06:00", "2026-12-06T05:00:00+00:00"),  # winter: Rome is UTC+1
    ("2026-07-06T06:00", "2026-07-06T04:00:00+00:00"),  # summer: UTC+2
])
def test_a_scheduled_time_without_a_zone_is_italian_time_as_in_the_console(
        monkeypatch: pytest.MonkeyPatch, given: str, meant: str) -> None:
    """`flows load --at 06:00` starts the load at 06:00 in Italy, as the console's Avvio pianificato does, whatever
    the host's zone (these hosts run in UTC: the CLI used to take 06:00 UTC, 07:00 in Rome)."""
    from datetime import UTC, datetime

    from services.cli import instances

    asked: list[datetime | None] = []

    async def load(*args: object) -> None:  # what the command hands on, before any I/O
        asked.append(args[5])  # type: ignore[arg-type]

    monkeypatch.setattr(instances, "load", load)
    code, out = _run("load", "--type", "FLUSSO_C", "--ente", "201", "--from", "2026-10-01", "--to", "2026-10-31",
                     "--at", given, "--no-wait")
    assert code == 0, out
    assert asked[0] is not None and asked[0].astimezone(UTC).isoformat() == meant


@pytest.mark.parametrize(("option", "value", "said"), [
    ("--type", "FLUSSO_X", "'FLUSSO_X' is not one of FLUSSO_C, FLUSSO_C_PACC, FLUSSO_MEF, FLUSSO_ALPI_TA, FLUSSO_730"),
    ("--state", "Checkd", "'Checkd' is not a state: one of Scheduled, Running, Checked, Failed loading,"),
])
def test_a_search_for_an_unknown_type_or_state_is_refused_not_answered_no_instance(option: str, value: str,
                                                                                   said: str) -> None:
    code, out = _run("instances", option, value)
    assert code == 2 and f"Invalid value for {option}: {said}" in out, out
    assert "no instance matches" not in out and "cannot reach" not in out  # refused before any query


def test_the_deadlines_of_an_unknown_entity_are_refused_naming_it() -> None:
    code, out = _run("deadlines", "--ente", "999", "--month", "2026-11")
    assert code == 2 and "Invalid value for --ente: ente 999 is not a known entity (known: 201," in out, out
    assert "due within 7 days" not in out and "cannot reach" not in out  # refused before any query


def test_an_export_to_a_file_names_the_option_not_an_unreachable_platform(tmp_path: Path) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    code, out = _run("export", "1947", "--out", str(existing))
    assert code == 1 and f"error: --out {existing} is a file, not a folder" in out, out
    assert "cannot reach the platform" not in out and existing.read_text() == "mine"


def _onboarding(*args: str) -> tuple[int, str]:
    from services.cli.onboarding_cli import app as onboarding

    result = runner.invoke(onboarding, list(args), env={"FLOWS_DEBUG": ""})
    out = " ".join(re.sub(r"[\u2500-\u257f]", " ", result.output or "").split())
    for word in NEVER:
        assert word not in out, out
    return result.exit_code, out


def test_an_onboarding_dashboard_state_it_does_not_know_is_refused_naming_the_known_ones() -> None:
    code, out = _onboarding("status", "--status", "non-conforme")
    assert code == 2 and "Invalid value for --status: 'non-conforme' is not a dashboard state: one of " \
                         "documents-awaited, incomplete, non-compliant," in out, out
    assert "onboarding requests (0)" not in out


@pytest.mark.parametrize("day", ["2026-13-01", "21/12/2026", "domani"])
def test_a_switch_day_that_is_no_date_names_the_option_and_the_value(day: str) -> None:
    code, out = _onboarding("switch", "R-1", "--date", day, "--window", "09:00-10:00")
    assert code == 2 and f"Invalid value for --date: '{day}' is not a day: give YYYY-MM-DD" in out, out


@pytest.mark.parametrize("at", ["tomorrow", "2026-11-02T25:00", "02/11/2026 06:00"])
def test_a_scheduled_time_that_is_no_time_names_the_value_and_the_form(at: str) -> None:
    code, out = _run("load", "--type", "FLUSSO_C", "--ente", "201", "--from", "2026-10-01", "--to", "2026-10-31",
                     "--at", at, "--no-wait")
    assert code == 2, out
    assert f"Invalid value for '--at': '{at}' is not a time: give YYYY-MM-DDTHH:MM, Italian time" in out, out


def _this_month() -> tuple[str, str]:
    """The Italian month of today: not over yet, whatever the day."""
    from contracts.deadlines import italian_today

    today = italian_today()
    start = today.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    return start.isoformat(), end.isoformat()


@pytest.mark.parametrize("period", ["this month", "next month"])
def test_a_load_of_a_period_not_over_is_refused_naming_the_period_end_before_sending_anything(
        monkeypatch: pytest.MonkeyPatch, period: str) -> None:
    """A month not ended (or not begun) was sent, and came back Checked with no record and a warning."""
    from services.cli import instances

    sent: list[object] = []

    async def load(*args: object) -> None:
        sent.append(args)

    monkeypatch.setattr(instances, "load", load)
    start, end = _this_month()
    if period == "next month":
        start = (date.fromisoformat(end) + timedelta(days=1)).isoformat()
        end = (date.fromisoformat(start) + timedelta(days=27)).isoformat()
    code, out = _run("load", "--type", "FLUSSO_C", "--ente", "201", "--from", start, "--to", end, "--no-wait")
    assert code == 1, out
    assert out.startswith(f"error: --to {end}: the period is not over on "), out
    assert "a period that has not ended cannot be loaded" in out
    assert sent == []  # refused before any Kafka or PostgreSQL


def test_a_load_of_this_month_scheduled_after_its_end_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked in advance, it runs once the month is over: the rule is about when the load runs, not when it is asked."""
    from services.cli import instances

    sent: list[tuple[object, ...]] = []

    async def load(*args: object) -> None:
        sent.append(args)

    monkeypatch.setattr(instances, "load", load)
    start, end = _this_month()
    after = f"{date.fromisoformat(end) + timedelta(days=1)}T06:00"
    code, out = _run("load", "--type", "FLUSSO_C", "--ente", "201", "--from", start, "--to", end, "--at", after,
                     "--no-wait")
    assert code == 0, out
    assert len(sent) == 1
    # scheduled on the period's last day, it would still run inside the period
    code, out = _run("load", "--type", "FLUSSO_C", "--ente", "201", "--from", start, "--to", end,
                     "--at", f"{end}T23:30", "--no-wait")
    assert code == 1 and f"error: --to {end}: the period is not over on {end} (its scheduled start" in out, out
    assert len(sent) == 1


def test_a_demo_of_a_month_not_over_is_refused_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its loads would be refused by the loader, and the demo would wait for instances that never come."""
    from services.cli import demo, stack

    started: list[str] = []
    monkeypatch.setattr(stack, "up", lambda **_: started.append("stack"))

    async def walk(*args: object) -> None:
        started.append("walk")

    monkeypatch.setattr(demo, "_walk", walk)
    month = _this_month()[0][:7]
    code, out = _run("demo", "--month", month)
    assert code == 1, out
    assert out.startswith(f"error: --month {month}: the period is not over on "), out
    assert started == []


def test_a_path_the_command_cannot_write_is_named_not_taken_for_the_platform_down(tmp_path: Path) -> None:
    """A file error is the path's (here: a folder asked under a file), said with the path; it was 'cannot reach
    the platform ... Is it running?', which sends the operator to a platform that is fine."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out = _run("sources", "generate", "--ente", "201", "--month", "2020-08", "--services", "5",
                     "--out", str(blocker / "csv"))
    assert code == 1
    assert "cannot reach the platform" not in out
    assert f"error: cannot use {blocker / 'csv'}" in out and "Not a directory" in out


@pytest.mark.parametrize("command", [["lag"], ["dlq", "list"], ["tail", "--since", "1m"]])
def test_kafka_down_is_one_line_naming_its_address_without_the_client_library_s_own(command: list[str]) -> None:
    """Kafka not running (nothing listens on the address): the command's line, naming where it looked, and not
    aiokafka's "Unable connect to ..." log line before it. Run as the operator runs it, in a process of its own:
    under pytest the root logger has pytest's handlers, so the last-resort handler that printed that line never
    would."""
    with socket.socket() as s:  # a port just freed: nothing listens on it
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k != "FLOWS_DEBUG"} | {"FLOWS_KAFKA_BOOTSTRAP": address,
                                                                           "COLUMNS": "400"}
    done = subprocess.run([sys.executable, "-c", "from services.cli.main import app; app()", *command],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.strip() == (f"error: cannot reach Kafka at {address}. Is the platform running? "
                                   "Try `flows stack up`.")
