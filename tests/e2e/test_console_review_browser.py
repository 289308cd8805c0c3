"""The console as its Italian users meet it, in real Chromium, on the real app, PostgreSQL and Kafka: the defects a
user-eye review found, each checked where the user reads it. A page's parameter it cannot read answers an Italian page
(not FastAPI's English JSON) naming the parameter, with the header and a way back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

from tests.console_support import RunningConsole, italian_context, running_console
from tests.e2e.test_console_browser import CHROMIUM, _log_in
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e

FEEDBACK = (b"record_key;field;code;severity;message\n"
            b"S1;patient_cf;CF_CHECK_CHAR;error;il carattere di controllo dovrebbe essere J, non K\n")


@pytest.fixture
async def console(fresh_db: str, tmp_path: Path) -> AsyncIterator[RunningConsole]:
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as running:
        await running.add_users()
        yield running


@contextlib.asynccontextmanager
async def signed_in(console: RunningConsole, user: str) -> AsyncIterator[Page]:
    """A Chromium page of an Italian browser, signed in as `user` (a console_support user)."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = await (await italian_context(browser)).new_page()
            await _log_in(page, console.url, user)
            yield page
        finally:
            await browser.close()


async def _failed_load(console: RunningConsole, records: bytes = FEEDBACK, count: int = 1) -> int:
    feedback = console.file_ref("feedback.csv", "feedback", records, count, "text/csv")
    return await console.instance("201", [("flows.load-failed", {"errors": count, "summary": f"{count} errori",
                                                                 "feedback": feedback})])


async def test_a_page_parameter_it_cannot_read_gets_an_italian_page_naming_it(console: RunningConsole) -> None:
    instance = await _failed_load(console)
    async with signed_in(console, "op.201") as page:
        answer = await page.goto(f"{console.url}/istanze/{instance}/feedback?da=abc")
        assert answer is not None and answer.status == 422
        assert "Input should be" not in await page.content()  # FastAPI's English JSON, no page at all
        text = await page.inner_text("main")
        assert "«da»" in text and "'abc'" in text and "numero intero" in text, text
        # the header with the user and the menu, and a way back: not a dead end
        assert "op.201" in await page.inner_text("header")
        assert await page.locator("main a", has_text="Torna indietro").count() == 1
