"""OIDC login in real Chromium against the local provider (tests/oidc_provider.py): from the login page's
button through the provider and back, the user lands on the page it asked for, logged in as the claims
say. This is where SameSite matters: the Strict session cookie must reach the console after a navigation
that began on the provider's site. axe-core on the login page with its OIDC button."""

from __future__ import annotations

import pytest
from axe_playwright_python.async_playwright import Axe

from tests.console_support import browser_of, italian_context, running_console
from tests.e2e.test_console_browser import _axe_clean
from tests.oidc_provider import running_provider
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e


async def test_an_operator_logs_in_through_the_identity_provider(fresh_db, tmp_path, chromium) -> None:  # type: ignore[no-untyped-def]
    async with running_provider() as provider, running_console(
            fresh_db, KAFKA, tmp_path / "files", console_oidc_metadata_url=provider.metadata_url,
            console_oidc_client_id=provider.client_id, console_oidc_client_secret=provider.client_secret,
    ) as console, browser_of(chromium) as browser:
        own = await console.instance("201")
        provider.next_claims = {"preferred_username": "mario.rossi", "flows_role": "operator", "flows_enti": ["201"]}
        try:
            page = await (await italian_context(browser)).new_page()
            await page.goto(f"{console.url}/istanze/{own}")
            assert "/login" in page.url
            await _axe_clean(page, Axe(), "50-accesso-oidc")
            await page.click("#accedi-oidc")
            await page.wait_for_url(f"{console.url}/istanze/{own}")
            assert "mario.rossi (operatore: enti 201)" in await page.inner_text("header")
            assert await page.locator("h1").inner_text() == f"Istanza {own}"
        finally:
            await browser.close()
