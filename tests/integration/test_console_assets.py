"""The console's static assets carry the fingerprint of their content (services/console/assets.py), on the real
app over uvicorn: every /static URL of every page names the current content; such a URL answers immutable; the
same file without its fingerprint, or with a stale one, answers no-cache; a changed file gets a new fingerprint
(and, while the old app still runs, its old fingerprint no longer answers immutable)."""

from __future__ import annotations

import shutil
import urllib.parse

import httpx
import pytest

from services.console.access import ROUTE_TABLE
from services.console.web import STATIC, VENDOR
from services.formatter.layouts import LayoutRegistry
from tests.console_support import (
    DIRECTORY_URL,
    FILE_URL,
    ROLE_USERS,
    RunningConsole,
    file_fingerprint,
    running_console,
    stale_static_urls,
    static_urls,
)
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

IMMUTABLE = "public, max-age=31536000, immutable"
FONT = "fonts/Titillium_Web/titillium-web-v10-latin-ext_latin-regular.woff2"
FEEDBACK = b"record_key;field;code;severity;message\nS1@P1/01;patient_cf;CF_CHECK_CHAR;warning;RSSMRA80A01H501U\n"


async def _pages(console: RunningConsole) -> dict[str, str]:
    """Every HTML page the console answers to a GET, by URL (and the role that asked): the login form, every page
    route for every role it allows, an error page."""
    feedback = console.file_ref("esito.csv", "feedback", FEEDBACK, 1, "text/csv")
    instance = await console.instance("201", [("flows.load-checked", {"source_instance": 1, "counts": {"services": 1},
                                                                      "warnings": 1, "feedback": feedback})])
    request = await console.onboarding_request("REQ-ASSETS-1", "150123")
    flow_type, version = next((f, v) for f, v in LayoutRegistry().available() if f == "FLUSSO_C")
    params = {"{instance}": str(instance), "{name}": "esito.csv", "{request}": request, "{letter}": "nessuna",
              "{tipo}": flow_type, "{versione}": version}
    pages: dict[str, str] = {}
    async with httpx.AsyncClient(follow_redirects=False) as anonymous:
        pages["anonymous /login"] = (await anonymous.get(console.url + "/login")).text
    for role, (user, _) in ROLE_USERS.items():
        async with httpx.AsyncClient(follow_redirects=False) as client:
            assert (await console.login(client, user)).status_code == 303
            for route in ROUTE_TABLE.values():
                if route.method != "GET" or route.kind != "page" or role not in route.rule.roles:
                    continue
                path = route.path
                for name, value in params.items():
                    path = path.replace(name, urllib.parse.quote(value))
                response = await client.get(console.url + path)
                if response.is_redirect:  # "/" sends each role to its first page
                    continue
                assert response.status_code < 500 and response.headers["content-type"].startswith("text/html"), \
                    (role, path, response.status_code)
                pages[f"{role} {path}"] = response.text
            # an error page (a 404 or 409 of the app's own handler)
            error = await client.get(console.url + "/istanze/999999999/invia-ts")
            assert error.status_code in (404, 409) and "<html" in error.text, (role, error.status_code)
            pages[f"{role} error page"] = error.text
    return pages


async def test_every_static_url_of_every_page_carries_the_current_fingerprint(console: RunningConsole) -> None:
    pages = await _pages(console)
    print(f"{len(pages)} pages:", ", ".join(pages))
    assert len(pages) > 25
    for name, page in pages.items():
        if "<html" in page:  # every full page links the styles and scripts (the instance fragment has none)
            assert len(static_urls(page)) == 5, (name, static_urls(page))
        assert stale_static_urls(page) == [], name


async def test_a_fingerprinted_asset_is_immutable_and_one_without_the_current_fingerprint_no_cache(
        console: RunningConsole) -> None:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        login = (await client.get(console.url + "/login")).text
        urls = static_urls(login)
        files = sorted(u for u in urls if FILE_URL.match(u))
        assert len(files) == 4, urls
        [vendor] = [u for u in urls if DIRECTORY_URL.match(u)]
        for url in [*files, f"{vendor}/{FONT}", f"{vendor}/css/bootstrap-italia.min.css"]:
            response = await client.get(console.url + url)
            assert response.status_code == 200, url
            assert response.headers["cache-control"] == IMMUTABLE, url
            # the middleware's headers are still there
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "default-src 'self'" in response.headers["content-security-policy"]
            # a revalidation (a 304) says immutable too
            again = await client.get(console.url + url, headers={"if-none-match": response.headers["etag"]})
            assert again.status_code == 304 and again.headers["cache-control"] == IMMUTABLE, url
            plain = url.split("?")[0]
            if "@" in plain:
                prefix, rest = plain.split("@", 1)
                stale = [f"{prefix}/{rest.split('/', 1)[1]}", f"{prefix}@000000000000/{rest.split('/', 1)[1]}"]
            else:
                stale = [plain, f"{plain}?v=000000000000", f"{plain}?x=1"]
            for other in stale:
                answer = await client.get(console.url + other)
                assert answer.status_code == 200, other
                assert answer.content == response.content, other  # the same file, now
                assert answer.headers["cache-control"] == "no-cache", other
                assert answer.headers["x-frame-options"] == "DENY"
        # A page is never stored; a missing asset is an error page, not cached either.
        assert (await client.get(console.url + "/login")).headers["cache-control"] == "no-store"
        missing = await client.get(console.url + "/static/console.js.old?v=000000000000")
        assert missing.status_code == 404 and missing.headers["cache-control"] == "no-store"


async def test_a_changed_file_changes_its_fingerprint(fresh_db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    static = tmp_path / "static"
    shutil.copytree(STATIC, static)

    async def login_urls(c: RunningConsole) -> dict[str, str]:
        """The asset URLs of the login page, by path under /static: all of them current for the files as they are."""
        async with httpx.AsyncClient() as client:
            page = (await client.get(c.url + "/login")).text
        assert stale_static_urls(page, static) == []
        urls = {}
        for url in static_urls(page):
            match = FILE_URL.match(url) or DIRECTORY_URL.match(url)
            assert match is not None, url
            urls[match["rel"]] = url
        return urls

    async with running_console(fresh_db, KAFKA, tmp_path / "files", static_dir=static) as before:
        old = await login_urls(before)
        assert old["console.js"] == f"/static/console.js?v={file_fingerprint(STATIC / 'console.js')}"
        # A release changes console.js and one font of Bootstrap Italia.
        with (static / "console.js").open("a") as script:
            script.write("\n// release 2\n")
        with (static / VENDOR / FONT).open("ab") as font:
            font.write(b"\0")
        async with httpx.AsyncClient() as client:
            # the running app never vouches for the old fingerprint of a file changed under it
            for url in (old["console.js"], f"{old[VENDOR]}/{FONT}"):
                answer = await client.get(before.url + url)
                assert answer.status_code == 200 and answer.headers["cache-control"] == "no-cache", url
            assert (await client.get(before.url + old["console.css"])).headers["cache-control"] == IMMUTABLE
        async with running_console(fresh_db, KAFKA, tmp_path / "files", static_dir=static) as after:
            new = await login_urls(after)
            assert new["console.js"] == f"/static/console.js?v={file_fingerprint(static / 'console.js')}"
            assert new["console.js"] != old["console.js"]
            assert new[VENDOR] != old[VENDOR]  # a font changed beneath it
            assert new["console.css"] == old["console.css"]  # unchanged, still cached by the browsers
            async with httpx.AsyncClient() as client:
                for url, rel in ((new["console.js"], "console.js"), (f"{new[VENDOR]}/{FONT}", f"{VENDOR}/{FONT}")):
                    answer = await client.get(after.url + url)
                    assert answer.headers["cache-control"] == IMMUTABLE, url
                    assert answer.content == (static / rel).read_bytes()
                # the old release's URLs still get the file, never pinned
                for url in (old["console.js"], f"{old[VENDOR]}/{FONT}"):
                    assert (await client.get(after.url + url)).headers["cache-control"] == "no-cache", url
