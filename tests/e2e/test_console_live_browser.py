"""The live instance page in real Chromium: a change that arrives while the page is still fetching the state of
the previous one is not lost.

The page learns of a change from its event stream and then fetches the instance's fresh state (console.js). A load
that finishes while that fetch is on its way (a small load, a slow network, a busy browser) sends its next event
while the page is waiting: the page must fetch again afterwards, or it stays on the older state with nothing more
to come. Here the fetch is really slow: the browser's own network layer holds the answer (Playwright's route), the
console answered it before the second change, and the second change's event reaches the page while the first
answer is held.
"""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Route, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from contracts import flows
from services.runtime.eventstore import NewEvent
from services.runtime.outbox import OutboxRelay
from services.runtime.read_models import instance_stream
from tests.console_support import running_console
from tests.e2e.test_console_browser import CHROMIUM, _log_in
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e

BADGE = "() => document.querySelector('#stato .badge')?.dataset.state"
# A second subscription to the same stream, in the page: it counts the change events the page's own one receives.
SHADOW = """url => new Promise(resolve => {
  window.__changes = 0;
  const shadow = new EventSource(url);
  shadow.addEventListener("change", () => { window.__changes += 1; });
  shadow.addEventListener("ready", () => resolve(true));
})"""


async def test_a_change_during_a_slow_refresh_is_not_lost(fresh_db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, async_playwright() as pw:
        await console.add_users()
        instance = await console.instance("201")  # Running
        relay = OutboxRelay(console.pool, KAFKA, poll_interval=0.5)  # the loader's and formatter's relay
        stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(stop))
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = await (await browser.new_context(locale="it-IT")).new_page()
            await _log_in(page, console.url, "op.201")
            holding = False
            held, release = asyncio.Event(), asyncio.Event()

            async def slow_network(route: Route) -> None:
                if not holding:
                    await route.continue_()
                    return
                answer = await route.fetch()  # the console renders the state of this moment
                held.set()
                await release.wait()
                await route.fulfill(response=answer)

            await page.route("**/stato", slow_network)
            await page.goto(f"{console.url}/istanze/{instance}")
            # Subscribed, and the refresh that follows the subscription is done (it announces the state).
            await page.wait_for_function("() => document.getElementById('annuncio').textContent.startsWith('Stato')")
            assert await page.evaluate(BADGE) == "Running"
            assert await page.evaluate(SHADOW, f"/istanze/{instance}/eventi")

            holding = True
            checked = flows.LoadChecked(instance=instance, source_instance=instance + 1, counts={"services": 3})
            await console.store.append(instance_stream(instance), [
                NewEvent("flows.load-checked", checked.model_dump(mode="json"), actor="loader")],
                expected_version=1, key=str(instance))
            async with asyncio.timeout(30):
                await held.wait()  # the page is fetching; the console answered "Checked"
            await console.store.append(instance_stream(instance), [
                NewEvent("flows.formatting-started", {"instance": instance}, actor="formatter")],
                expected_version=2, key=str(instance))
            # The formatting's event reaches the page while the answer about the check is still on its way.
            await page.wait_for_function("() => window.__changes >= 2", timeout=30_000)
            await page.wait_for_timeout(300)  # the page's own subscription got it too (the shadow's may come first)
            release.set()

            try:
                await page.wait_for_function("s => document.querySelector('#stato .badge')?.dataset.state === s",
                                             arg="Formatting in progress", timeout=30_000)
            except PlaywrightTimeout:
                pytest.fail(f"the page stayed on {await page.evaluate(BADGE)!r} after the formatting began")
            assert await page.evaluate("() => window.__changes") == 2
        finally:
            release.set()
            await browser.close()
            stop.set()
            await relay_task
