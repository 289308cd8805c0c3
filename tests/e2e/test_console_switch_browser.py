"""A structure asks its switch from the console in real Chromium: the form sent from the keyboard, a slot
that breaks a rule refused with the earliest valid slot, that slot taken with one button; axe-core clean."""

from __future__ import annotations

import pytest
from axe_playwright_python.async_playwright import Axe

from tests.console_support import browser_of, italian_context, running_console
from tests.e2e.test_console_browser import _axe_clean, _log_in
from tests.integration.test_console_onboarding import _complete_switch_request, _san_gennaro
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e


async def test_a_structure_takes_the_proposed_switch_slot_in_the_browser(fresh_db, tmp_path, chromium) -> None:  # type: ignore[no-untyped-def]
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await console.add_users()
        await _complete_switch_request(console, "ONB-SWITCH")
        try:
            page = await (await italian_context(browser)).new_page()
            await _log_in(page, console.url, "st.1")
            await page.goto(console.url + "/onboarding/ONB-SWITCH")
            await _axe_clean(page, Axe(), "30-switch-modulo")
            day = _san_gennaro()
            await page.fill("#switch-data", day.isoformat())
            await page.focus("#switch-dalle")
            await page.keyboard.type("0900")  # Chromium's time field takes the digits
            await page.focus("#switch-alle")
            await page.keyboard.type("1000")
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            refusal = await page.inner_text("#esito")
            assert f"{day:%d/%m/%Y} è la festa del santo patrono di Napoli (San Gennaro)" in refusal, refusal
            assert "Prima data valida:" in refusal, refusal
            await _axe_clean(page, Axe(), "31-switch-rifiutato")
            async with page.expect_navigation():
                await page.click("#switch-proposto button")
            assert "Switch pianificato per" in await page.inner_text("#esito")
            events = await console.store.read_stream("onboarding-ONB-SWITCH")
            assert [e.type for e in events[-2:]] == ["onboarding.switch-refused", "onboarding.switch-scheduled"]
            assert events[-1].actor == "st.1" and events[-1].data["switch_date"] == events[-2].data["proposed_date"]
        finally:
            await browser.close()
