"""The fixed-width files' line end is a setting (spec/flusso-c.md: "CRLF or LF as configured (default LF)"): the
formatter's handlers write what FLOWS_FIXED_WIDTH_LINE_END says. The writer could write CRLF before, but no setting
reached the deployed formatter: it always wrote LF."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts import flows
from contracts.states import InstanceState
from services.formatter import handlers as formatter_handlers
from services.loader import handlers as loader_handlers
from services.runtime.filestore import FileStore
from services.runtime.settings import Settings
from tests.handlers_inline import formatter_on, loader_on_services
from tests.integration.test_interruptions import _running

pytestmark = pytest.mark.integration


def test_the_setting_takes_lf_or_crlf_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().fixed_width_line_end == "LF"
    monkeypatch.setenv("FLOWS_FIXED_WIDTH_LINE_END", "CRLF")
    assert Settings().fixed_width_line_end == "CRLF"
    monkeypatch.setenv("FLOWS_FIXED_WIDTH_LINE_END", "CR")
    with pytest.raises(ValidationError, match="fixed_width_line_end"):
        Settings()


@pytest.mark.parametrize("line_end", ["CRLF", "LF"])
async def test_a_flusso_c_is_written_with_the_configured_line_end(line_end: str, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with loader_on_services(f"t_line_end_{line_end.lower()}", tmp_path / "files", "test-line-end",
                                  services=60, seed=44) as (pool, loader):
        instance = await _running(loader, "204")
        await loader_handlers.run_instance(instance, loader)
        checked = await loader.instances.read(instance)
        assert checked.state is InstanceState.CHECKED, checked.state
        formatter = formatter_on(pool, tmp_path / "files", "test-line-end", line_end=line_end)
        await formatter.instances.append(checked, flows.FormattingStarted(instance=instance))
        await formatter_handlers.format_instance(instance, formatter)
        formatted = await formatter.instances.read(instance)
        assert formatted.state is InstanceState.FORMATTED, formatted.state
        for ref in formatted.files:
            data = FileStore(tmp_path / "files").path(ref.sha256).read_bytes()
            lines = data.split(b"\n")[:-1]
            assert len(lines) == ref.records and lines, ref.name
            assert all(line.endswith(b"\r") for line in lines) == (line_end == "CRLF"), ref.name
            assert not any(line.endswith(b"\r") for line in lines) == (line_end == "LF"), ref.name
