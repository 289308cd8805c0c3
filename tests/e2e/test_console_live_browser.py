"""The live instance page in real Chromium: a change that arrives while the page is still fetching the state of
the previous one is not lost; a stream that ends while PostgreSQL is down comes back by itself once it is up; a
logout in another tab and an administrator's disable end an open page's stream at once.

The page learns of a change from its event stream and then fetches the instance's fresh state (console.js). A load
that finishes while that fetch is on its way (a small load, a slow network, a busy browser) sends its next event
while the page is waiting: the page must fetch again afterwards, or it stays on the older state with nothing more
to come. Here the fetch is really slow: the browser's own network layer holds the answer (Playwright's route), the
console answered it before the second change, and the second change's event reaches the page while the first
answer is held.

That the page's own subscription got the second change before the answer is released is what makes the case: had
it come after, the page would fetch afresh and show the new state whether or not it fetches again, and the test
would pass without testing anything. Nothing on the page shows that a change arrived while a fetch is pending (the
page only notes it), so the test learns it from the browser: Chromium's DevTools protocol reports each message the
page's event stream dispatches (Network.eventSourceMessageReceived, sent from the renderer just before it runs the
page's listeners, in the same task). The held answer reaches the page in a later task, so the page's listener has
run by then, at any speed of the machine.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import CDPSession, Page, Route
from playwright.async_api import TimeoutError as PlaywrightTimeout

from contracts import flows
from services.console import instance_pages
from services.runtime.eventstore import NewEvent
from services.runtime.outbox import OutboxRelay
from services.runtime.read_models import instance_stream
from tests.console_support import PASSWORD, browser_of, italian_context, running_console
from tests.e2e.test_console_browser import _log_in
from tests.pg_outage import postgres_down
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.e2e

BADGE = "() => document.querySelector('#stato .badge')?.dataset.state"


class StreamMessages:
    """The messages the page's event streams (requests to `.../eventi`) dispatched, by event name, as Chromium's
    DevTools protocol reports them; `arrived` is set at each one. Started before the page opens its stream."""

    def __init__(self) -> None:
        self.streams: set[str] = set()
        self.names: list[str] = []
        self.arrived = asyncio.Event()

    async def start(self, cdp: CDPSession) -> None:
        cdp.on("Network.requestWillBeSent", self._request)
        cdp.on("Network.eventSourceMessageReceived", self._message)
        await cdp.send("Network.enable")

    def _request(self, event: dict[str, Any]) -> None:
        if event["request"]["url"].endswith("/eventi"):
            self.streams.add(event["requestId"])

    def _message(self, event: dict[str, Any]) -> None:
        if event["requestId"] in self.streams:
            self.names.append(event["eventName"])
            self.arrived.set()

    def count(self, name: str) -> int:
        return self.names.count(name)

    async def until(self, name: str, count: int, timeout: float = 30) -> None:
        try:
            async with asyncio.timeout(timeout):
                while self.count(name) < count:
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            pytest.fail(f"the page's stream dispatched {self.names} in {timeout:.0f} s, not {count} {name!r}")


async def test_a_change_during_a_slow_refresh_is_not_lost(fresh_db, tmp_path, chromium) -> None:  # type: ignore[no-untyped-def]
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await console.add_users()
        instance = await console.instance("201")  # Running
        relay = OutboxRelay(console.pool, KAFKA, poll_interval=0.5)  # the loader's and formatter's relay
        stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(stop))
        try:
            page = await (await italian_context(browser)).new_page()
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
            messages = StreamMessages()
            await messages.start(await page.context.new_cdp_session(page))
            await page.goto(f"{console.url}/istanze/{instance}")
            # Subscribed, and the refresh that follows the subscription is done (it announces the state).
            await page.wait_for_function("() => document.getElementById('annuncio').textContent.startsWith('Stato')")
            assert await page.evaluate(BADGE) == "Running"
            await messages.until("ready", 1)  # the browser's report may come after the page's own doings
            assert messages.names == ["ready"], messages.names

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
            # The formatting's event reaches the page's own stream while the answer about the check is still held:
            # the page's listener runs before the answer can reach it (module docstring).
            await messages.until("change", 2)
            release.set()

            try:
                await page.wait_for_function("s => document.querySelector('#stato .badge')?.dataset.state === s",
                                             arg="Formatting in progress", timeout=30_000)
            except PlaywrightTimeout:
                pytest.fail(f"the page stayed on {await page.evaluate(BADGE)!r} after the formatting began")
            assert messages.names == ["ready", "change", "change"], messages.names  # no third change showed it
        finally:
            release.set()
            await browser.close()
            stop.set()
            await relay_task


LIVE = "() => document.getElementById('istanza').dataset.live"


async def test_the_page_comes_back_live_after_postgresql_was_down_and_says_so_meanwhile(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path, monkeypatch, chromium) -> None:
    """PostgreSQL stops for real while an instance page is open. The stream's next check of its session cannot be
    made, so the stream ends; the browser reconnects and the console answers 503 (the guard cannot read the
    session). A browser does not reconnect a stream by itself after such an answer: before, the page then stayed
    still for good, showing an old state as if it were current. Now the page says that its updates stopped and
    tries again, backed off; once PostgreSQL is up it is live again and shows the next change without a reload."""
    monkeypatch.setattr(instance_pages, "STREAM_CHECK_S", 0.5)  # production: 15 s, the keep-alive
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await console.add_users()
        instance = await console.instance("201")  # Running
        relay_task, stop = None, asyncio.Event()
        try:
            page = await (await italian_context(browser)).new_page()
            await _log_in(page, console.url, "op.201")
            await page.goto(f"{console.url}/istanze/{instance}")
            await page.wait_for_function(f"() => ({LIVE})() === 'ready'", timeout=30_000)
            assert await page.is_hidden("#aggiornamento")

            async with postgres_down():
                await page.wait_for_function(f"() => ({LIVE})() === 'closed'", timeout=60_000)
                notice = await page.inner_text("#aggiornamento")
                assert await page.is_visible("#aggiornamento")
            assert notice.startswith("Aggiornamento automatico interrotto: nuovo tentativo tra "), notice

            await page.wait_for_function(f"() => ({LIVE})() === 'ready'", timeout=120_000)  # back by itself
            assert await page.is_hidden("#aggiornamento")
            relay = OutboxRelay(console.pool, KAFKA, poll_interval=0.5)  # the loader's and formatter's relay
            relay_task = asyncio.create_task(relay.run(stop))
            checked = flows.LoadChecked(instance=instance, source_instance=instance + 1, counts={"services": 3})
            await console.store.append(instance_stream(instance), [
                NewEvent("flows.load-checked", checked.model_dump(mode="json"), actor="loader")],
                expected_version=1, key=str(instance))
            try:
                await page.wait_for_function("s => document.querySelector('#stato .badge')?.dataset.state === s",
                                             arg="Checked", timeout=30_000)
            except PlaywrightTimeout:
                pytest.fail(f"the page stayed on {await page.evaluate(BADGE)!r} after PostgreSQL came back")
        finally:
            await browser.close()
            stop.set()
            if relay_task is not None:
                await relay_task


# The keep-alive check of an open stream an hour away: what ends a stream within these tests is the database's notice
# (services/console/access_watch.py), never that check. The waits below are conditions with deadlines.
AN_HOUR = 3600.0


# Counts the event streams the page opens (each retry is one), in the page itself, where console.js's timers run.
COUNT_STREAMS = """window.__streamsOpened = 0;
window.EventSource = class extends window.EventSource {
  constructor(url, init) { super(url, init); window.__streamsOpened += 1; }
};"""


def _subscriptions(page: Page) -> list[str]:
    """The URLs of the event streams the page opens from now on (each reconnection is one more)."""
    opened: list[str] = []
    page.on("request", lambda request: opened.append(request.url) if request.url.endswith("/eventi") else None)
    return opened


async def test_an_open_stream_ends_when_its_session_is_logged_out(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path, monkeypatch, chromium) -> None:
    """Every request checks its session in the database; an event stream lives for hours. The user logs out in
    another tab: the open page's stream ends at once (before, it went on feeding a logged-out page for up to the
    15 s of its keep-alive check: here that check is an hour away, so the logout's NOTIFY is what ends it); the page
    says the session ended, does not try again, and links to the login, which brings the operator back to the
    instance, live again."""
    monkeypatch.setattr(instance_pages, "STREAM_CHECK_S", AN_HOUR)
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await console.add_users()
        instance = await console.instance("201")
        try:
            context = await italian_context(browser)
            page = await context.new_page()
            await _log_in(page, console.url, "op.201")
            subscriptions = _subscriptions(page)
            await page.add_init_script(COUNT_STREAMS)
            await page.goto(f"{console.url}/istanze/{instance}")
            await page.wait_for_function(f"() => ({LIVE})() === 'ready'", timeout=30_000)

            other = await context.new_page()  # another tab of the same browser: the same session
            await other.goto(f"{console.url}/istanze")
            async with other.expect_navigation():
                await other.click("form[action='/logout'] button")
            assert "/login" in other.url

            await page.wait_for_function(f"() => ({LIVE})() === 'ended'", timeout=30_000)
            notice = await page.inner_text("#aggiornamento")
            assert notice.startswith("Aggiornamento automatico terminato: la sessione è scaduta o chiusa."), notice
            # The server said `ended` and the page asked why at once: no reconnection of the browser's own came first.
            assert subscriptions == [f"{console.url}/istanze/{instance}/eventi"], subscriptions
            again = page.locator("#aggiornamento a")
            assert await again.get_attribute("href") == f"/login?next=%2Fistanze%2F{instance}"
            # A retry would open a stream 2 s after the page said `ended` (console.js's first delay), from a timer set
            # before the test saw it: a timer of the page's own of 3 s, set now, fires after that one at any speed
            # (timers of one page run in the order they fall due). The page's state cannot show a retry: a refused one
            # ends `ended` again.
            await page.evaluate("() => new Promise(resolve => setTimeout(resolve, 3000))")
            assert await page.evaluate("() => window.__streamsOpened") == 1, "an ended session is tried again"
            assert await page.evaluate(LIVE) == "ended"

            async with page.expect_navigation():  # back in, then to the instance it was on
                await again.click()
            await page.fill("#utente", "op.201")
            await page.fill("#password", PASSWORD)
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            assert page.url == f"{console.url}/istanze/{instance}", page.url
            await page.wait_for_function(f"() => ({LIVE})() === 'ready'", timeout=30_000)
        finally:
            await browser.close()


async def test_an_administrators_disable_ends_an_operators_open_stream_at_once(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path, monkeypatch, chromium) -> None:
    """An operator has an instance page open, live; the administrator disables it on the users page (another
    browser). The operator's stream ends at once (its keep-alive check is an hour away) and its page says so."""
    monkeypatch.setattr(instance_pages, "STREAM_CHECK_S", AN_HOUR)
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await console.add_users()
        instance = await console.instance("201")
        try:
            operator = await (await italian_context(browser)).new_page()
            await _log_in(operator, console.url, "op.201")
            subscriptions = _subscriptions(operator)
            await operator.goto(f"{console.url}/istanze/{instance}")
            await operator.wait_for_function(f"() => ({LIVE})() === 'ready'", timeout=30_000)

            admin = await (await italian_context(browser)).new_page()
            await _log_in(admin, console.url, "adm.1")
            async with admin.expect_navigation():
                await admin.click("tr[data-utente='op.201'] button")
            assert "Utente op.201 disattivato" in await admin.inner_text("#esito")

            await operator.wait_for_function(f"() => ({LIVE})() === 'ended'", timeout=30_000)
            notice = await operator.inner_text("#aggiornamento")
            assert notice.startswith("Aggiornamento automatico terminato: la sessione è scaduta o chiusa."), notice
            assert len(subscriptions) == 1, subscriptions
        finally:
            await browser.close()


async def test_a_stream_ended_by_a_lost_ente_says_so_and_leads_back_to_the_list(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path, monkeypatch, chromium) -> None:
    """An operator of enti 201 and 203 has an instance of 203 open, live; 203 is taken from the user (psql, or an OIDC
    login with other claims). The stream ends at once, and the page says the instance is no longer readable, with a
    way back to the list: it said the session had ended and offered a login, which would not help."""
    from services.console import auth

    monkeypatch.setattr(instance_pages, "STREAM_CHECK_S", AN_HOUR)
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, browser_of(chromium) as browser:
        await auth.add_user(console.pool, "op.201.203", "operator", ["201", "203"], None, PASSWORD, by="test")
        instance = await console.instance("203")
        try:
            page = await (await italian_context(browser)).new_page()
            await _log_in(page, console.url, "op.201.203")
            await page.goto(f"{console.url}/istanze/{instance}")
            await page.wait_for_function(f"() => ({LIVE})() === 'ready'", timeout=30_000)

            await console.pool.execute("UPDATE console_user SET enti = '{201}' WHERE name = 'op.201.203'")

            await page.wait_for_function(f"() => ({LIVE})() === 'ended'", timeout=30_000)
            notice = await page.inner_text("#aggiornamento")
            assert notice.startswith("Aggiornamento automatico terminato: questa istanza non è più accessibile con le "
                                     "sue autorizzazioni, o non esiste più."), notice
            back = page.locator("#aggiornamento a")
            assert await back.get_attribute("href") == "/istanze" and "sessione" not in notice
            async with page.expect_navigation():
                await back.click()
            assert page.url == f"{console.url}/istanze"  # still signed in: the list, not the login page
        finally:
            await browser.close()
