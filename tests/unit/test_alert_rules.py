"""deploy/observability/alerts.yml: `promtool check rules` passes and `promtool test rules` fires each
alert on sample series and keeps it silent on healthy ones; every figure the rules use is exported."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: ./run installs it (apt-get install -y prometheus); never skipped"
    return found


def test_the_alert_rules_are_valid():
    done = subprocess.run([_promtool(), "check", "rules", "alerts.yml"], cwd=OBSERVABILITY, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 12 rules found" in done.stdout


def test_every_alert_fires_on_its_samples_and_stays_silent_on_healthy_ones():
    done = subprocess.run([_promtool(), "test", "rules", "alerts.test.yml"], cwd=OBSERVABILITY,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    rules = re.findall(r"^\s+- alert: (\w+)", (OBSERVABILITY / "alerts.yml").read_text(), re.M)
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", (OBSERVABILITY / "alerts.test.yml").read_text())
    assert len(rules) == 12, rules  # the 12 promtool counts: the loop below must not run over nothing
    for rule in rules:
        assert (rule, "") in cases, f"no case where {rule} fires"
        assert (rule, " []") in cases, f"no case where {rule} stays silent"


def test_every_figure_the_rules_and_the_dashboard_use_is_exported():
    exported = set(re.findall(r'"(flows_\w+)"', (ROOT / "services" / "runtime" / "opsmetrics.py").read_text()))
    # each service's own figure of its file store (on its /metrics)
    exported |= set(re.findall(r'"(flows_\w+)"', (ROOT / "services" / "runtime" / "filestore.py").read_text()))
    # the loader's and the formatter's figures of their interrupted work
    exported |= set(re.findall(r'"(flows_\w+)"', (ROOT / "services" / "runtime" / "backoff.py").read_text()))
    used = set(re.findall(r"\b(flows_[a-z_]+)\b", (OBSERVABILITY / "alerts.yml").read_text()))
    used |= set(re.findall(r"\b(flows_[a-z_]+)\b", (OBSERVABILITY / "grafana-dashboard.json").read_text()))
    assert used and used <= exported, used - exported
