"""Where `flows audit report N` puts its PDF without --out (services/runtime/audit_report.py `write`)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from deploy.localstack import StackInfo
from services.cli.common import settings, stack_environment
from services.runtime.audit_report import default_name


def test_an_audit_report_goes_by_default_to_the_stacks_reports_folder_named_by_instance_and_utc_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """<state>/audit/reports/report-N-<UTC time>.pdf, whatever folder the command runs from (it used to write into
    whichever folder the operator stood in)."""
    info = StackInfo(tmp_path / "stack", "127.0.0.1:1", "postgresql://postgres@127.0.0.1:2/flows", 1, False)
    assert stack_environment(info)["FLOWS_REPORTS_DIR"] == str(tmp_path / "stack" / "audit" / "reports")
    monkeypatch.setenv("FLOWS_REPORTS_DIR", str(tmp_path / "elsewhere"))  # a deployment's own setting wins
    assert settings().reports_dir == tmp_path / "elsewhere"
    when = datetime(2026, 12, 7, 20, 5, 3, tzinfo=timezone(timedelta(hours=1)))  # Italian time: named in UTC
    assert default_name(1947, when) == "report-1947-20261207-190503.pdf"
    assert default_name(1947, when, 2) == "report-1947-20261207-190503-2.pdf"
