"""What `flows stack up` compares a running process with (its command and the environment the stack gives it, not the
caller's whole environment), which health port it gives each process, and `flows stack status` printed whole without
a terminal. (The same on a real stack: tests/integration/test_stack_process_commands.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deploy import localstack
from deploy.localstack.services import _unkeyed_fingerprint, _why_restarted, fingerprint, fingerprint_key
from services.cli import stack

REPO = Path(__file__).resolve().parents[2]


def _info(state: Path, ts_port: int = 27108) -> localstack.StackInfo:
    return localstack.StackInfo(state_dir=state, bootstrap_servers="127.0.0.1:27092",
                                database_url="postgresql://postgres@127.0.0.1:27432/flows", brokers=1,
                                external_database=False, ts_port=ts_port)


KEY = bytes(range(32))


def _print(info: localstack.StackInfo, service: str = "loader", name: str = "loader", port: int | None = None) -> str:
    return fingerprint(*stack.process_spec(info, service, name, port), KEY)


@pytest.fixture
def caller(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The caller's environment without any platform setting of the machine's own."""
    for name in list(os.environ):
        if stack.service_setting(name):
            monkeypatch.delenv(name)
    return monkeypatch


def test_what_the_caller_s_shell_has_besides_the_settings_changes_no_fingerprint(caller: pytest.MonkeyPatch,
                                                                                 tmp_path: Path) -> None:
    """The runbook audit's `up --observability` restarted every service: the fingerprint held the caller's whole
    environment, and a terminal's COLUMNS, another shell's PWD or OLDPWD, or the operator's name differ between two
    runs of the same `up`. Neither they nor the stack's own placement (turned into the addresses each service is
    given) are a service's settings."""
    info = _info(tmp_path)
    before = {name: _print(info, s, name, 27501) for s, name in stack.processes(2)}
    for name, value in {"COLUMNS": "250", "TERM": "dumb", "PWD": "/elsewhere", "OLDPWD": "/tmp", "SHLVL": "3",
                        "PATH": "/usr/local/bin:/usr/bin", "FLOWS_OPERATOR": "ops.verdi", "FLOWS_DEBUG": "1",
                        "FLOWS_KAFKA_PORT_BASE": "27092", "FLOWS_OBSERVABILITY_PORT_BASE": "27500",
                        "FLOWS_HEALTH_PORT": "1", "FLOWS_REPLICA": "someone"}.items():
        caller.setenv(name, value)
    assert {name: _print(info, s, name, 27501) for s, name in stack.processes(2)} == before
    # and what the service is given keeps the stack's own per-process values, not the caller's
    _, env = stack.process_spec(info, "loader", "loader-2", 27507)
    assert env["FLOWS_REPLICA"] == "loader-2" and env["FLOWS_HEALTH_PORT"] == "27507"
    assert "COLUMNS" not in env and "PATH" not in env and "FLOWS_OPERATOR" not in env


@pytest.mark.parametrize(("name", "value"), [
    ("FLOWS_PASS_S", "1"),  # a setting of the services
    ("FLOWS_LOG_LEVEL", "DEBUG"),
    ("FLOWS_CONSOLE_PORT", "27999"),  # the console's port, which the stack passes on
    ("FLOWS_OTLP_ENDPOINT", "http://collector:4318"),  # where the spans go
    ("TS_SIM_PASSWORD", "Altra456"),  # the TS simulator's account
    ("ARROW_DEFAULT_MEMORY_POOL", "system"),  # the formatter's allocator
])
def test_a_setting_the_services_receive_changes_their_fingerprint(caller: pytest.MonkeyPatch, tmp_path: Path,
                                                                  name: str, value: str) -> None:
    info = _info(tmp_path)
    before = _print(info)
    caller.setenv(name, value)
    assert _print(info) != before
    assert stack.process_spec(info, "loader", "loader", None)[1][name] == value


def test_a_port_or_address_the_stack_gives_changes_the_fingerprint(caller: pytest.MonkeyPatch, tmp_path: Path) -> None:
    info = _info(tmp_path)
    assert _print(info, port=27501) != _print(info, port=None) != _print(info, port=27511)
    simulator = _print(info, "ts-simulator", "ts-simulator")
    assert _print(_info(tmp_path, ts_port=27109), "ts-simulator", "ts-simulator") != simulator  # its --port
    assert _print(_info(tmp_path, ts_port=27109)) != _print(info)  # the gateway's FLOWS_TS_ENDPOINT, in every env


def test_the_fingerprint_is_keyed_by_the_stack_s_own_key(caller: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """stack.json keeps each service's fingerprint, and the environment it covers holds secrets (the TS simulator's
    password): a plain SHA-256 of it let whoever reads stack.json test a guessed password offline. The fingerprint is
    an HMAC with the stack's key, a file of its owner's only, made once and kept."""
    caller.setenv("TS_SIM_PASSWORD", "Segreta123")
    argv, env = stack.process_spec(_info(tmp_path), "ts-simulator", "ts-simulator", None)
    key = fingerprint_key(tmp_path)
    assert len(key) == 32 and fingerprint_key(tmp_path) == key  # made once, then read
    assert (tmp_path / "fingerprint.key").stat().st_mode & 0o777 == 0o600
    assert fingerprint_key(tmp_path / "other") != key  # each stack its own
    keyed = fingerprint(argv, env, key)
    assert keyed == fingerprint(argv, env, key) != fingerprint(argv, env, fingerprint_key(tmp_path / "other"))
    # a guess of the password checked as a plain hash allowed, with what stack.json shows: no match without the key
    assert _unkeyed_fingerprint(argv, env) not in keyed


def test_a_service_recorded_with_the_unkeyed_fingerprint_keeps_running_and_is_recorded_keyed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A stack started before the key: its next `up` finds each service with the same command and settings under
    the old, unkeyed fingerprint. It is the same run (not restarted), and its record is rewritten keyed, so the plain
    hash leaves stack.json."""
    from deploy.localstack.services import ensure_service, stop_service

    monkeypatch.setenv("FLOWS_STACK_DIR", str(tmp_path))
    argv, env = [sys.executable, "-c", "import time; time.sleep(60)"], {"TS_SIM_PASSWORD": "Segreta123"}
    first = ensure_service("sleeper", argv, env, supervised=False)
    try:
        state = json.loads((tmp_path / "stack.json").read_text())
        state["services"]["sleeper"]["fingerprint"] = _unkeyed_fingerprint(argv, env)  # as recorded before
        (tmp_path / "stack.json").write_text(json.dumps(state))
        again = ensure_service("sleeper", argv, env, supervised=False)
        assert (again.action, again.pid) == ("running", first.pid)
        text = (tmp_path / "stack.json").read_text()
        assert _unkeyed_fingerprint(argv, env) not in text
        recorded = json.loads(text)["services"]["sleeper"]["fingerprint"]
        assert recorded == fingerprint(argv, env, fingerprint_key(tmp_path))
        changed = ensure_service("sleeper", argv, {**env, "TS_SIM_PASSWORD": "Altra456"}, supervised=False)
        assert changed.action == "restarted" and changed.pid != first.pid
    finally:
        stop_service("sleeper", timeout=5)


def test_a_restart_says_what_changed_without_the_values() -> None:
    rec = {"argv": ["python", "-m", "services.loader"], "env_names": ["DATABASE_URL", "FLOWS_REPLICA"]}
    assert _why_restarted(rec, ["python", "-m", "services.formatter"], {}) == "its command changed"
    why = _why_restarted(rec, rec["argv"], {"DATABASE_URL": "postgresql://u:secret@h/db", "FLOWS_HEALTH_PORT": "1"})
    assert why == "its environment changed: FLOWS_HEALTH_PORT added; FLOWS_REPLICA removed"
    same_names = _why_restarted(rec, rec["argv"], {"DATABASE_URL": "x", "FLOWS_REPLICA": "loader"})
    assert same_names == "its environment changed: the value of one of its settings"
    assert "secret" not in why + same_names


def test_health_ports_a_scale_up_gives_the_new_replicas_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up --replicas 2` after a plain `up`: the first replicas run without a health port and keep running without
    one (giving them one would restart them); the new ones get theirs. `--observability` gives every process its port;
    a process recorded with one keeps it, also when a plain `up` starts it again."""
    monkeypatch.setenv("FLOWS_OBSERVABILITY_PORT_BASE", "27500")
    two = stack.observability_ports(2)
    running = {"supervisor_pid": 10, "running": True}
    assert stack.health_port("loader", two, running, observability=False) is None
    assert stack.health_port("loader-2", two, {}, observability=False) == 27507
    assert stack.health_port("loader", two, running, observability=True) == 27501
    assert stack.health_port("loader", {}, {"health_port": 27501, "supervisor_pid": None}, observability=False) == 27501
    assert stack.health_port("loader", {}, {**running, "health_port": 27501}, observability=False) == 27501
    assert stack.health_port("loader", {}, {}, observability=False) is None
    # a process started now (new, or stopped) with ports served gets its own
    assert stack.health_port("loader", two, {"supervisor_pid": None}, observability=False) == 27501
    assert stack.health_port("ts-simulator", two, {}, observability=True) is None


def _status_without_terminal(state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "services.cli.main", "stack", "status"], capture_output=True,
                          text=True, cwd=REPO, env={**env, "FLOWS_STACK_DIR": str(state)}, timeout=60, check=True)


def test_status_prints_paths_whole_without_a_terminal(tmp_path: Path) -> None:
    """Without a terminal rich fits a table in 80 columns and cut the logs' paths to `/tmp/pytest-of-…`. A stack
    recorded in a deep folder, nothing running (the records' pids are gone): every path whole, on its row."""
    state = tmp_path / "a-state-folder-deep-enough" / "that-its-paths-are-wider-than-any-default-terminal"
    logs = state / "logs"
    stopped_at = time.time()
    services: dict[str, dict[str, Any]] = {
        name: {"pid": None, "argv": [], "log": str(logs / f"{name}.log"), "service": name.split("-")[0],
               "status_file": str(state / "supervisor" / f"{name}.json"), "health_port": 27500 + i}
        for i, name in enumerate(["loader", "loader-2", "onboarding-2"], start=1)}
    services["loader-2"].update(stopped_by="ops.verdi", stopped_at=stopped_at)
    state.mkdir(parents=True)
    (state / "stack.json").write_text(json.dumps({
        "services": services, "kafka": {"nodes": {"1": {"pid": None, "port": 27092}}},
        "postgres": {"pid": None, "port": 27432, "database_url": "postgresql://postgres@127.0.0.1:27432/flows"}}))
    out = _status_without_terminal(state).stdout
    assert len(max(out.splitlines(), key=len)) > 80  # what it used to be cut to
    for name, rec in services.items():
        row = next(line for line in out.splitlines() if f" {name} " in line)
        assert rec["log"] in row and f"127.0.0.1:{rec['health_port']}" in row, row
    assert "postgresql://postgres@127.0.0.1:27432/flows" in out
    row = next(line for line in out.splitlines() if " loader-2 " in line)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stopped_at))
    assert re.search(rf"stopped by ops\.verdi at {when} UTC", row), row
    row = next(line for line in out.splitlines() if " loader " in line)
    assert re.search(r"│ stopped +│", row), row  # stopped, not by the operator (e.g. by `down`)
