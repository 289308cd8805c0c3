"""Fixtures shared by the integration tests (those of every test folder are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.console_support import RunningConsole, running_console
from tests.stack_urls import KAFKA


@pytest.fixture
def console_settings() -> dict[str, Any]:
    """Settings the `console` fixture starts the console with, over running_console's own: none here. A test module
    that needs others overrides this fixture (test_console_security.py: a login throttle of 3 failures)."""
    return {}


@pytest.fixture
async def console(fresh_db: str, tmp_path: Path, console_settings: dict[str, Any]) -> AsyncIterator[RunningConsole]:
    """The real console on a fresh database and the test stack's Kafka, with a user of every role
    (console_support.ROLE_USERS). test_console_oidc.py has its own (an OIDC provider, no local users)."""
    async with running_console(fresh_db, KAFKA, tmp_path / "files", **console_settings) as running:
        await running.add_users()
        yield running
