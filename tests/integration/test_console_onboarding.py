"""The console's onboarding pieces over HTTP, on the real app, PostgreSQL and Kafka: a request's document
downloaded by the desk and by its own structure (the bytes as received, each download in the access
log with who, when, what and from where), 404 to everyone else and for a document of another request."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.console_support import ROLE_USERS, STRUCTURE, RunningConsole, running_console
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

PDF = b"%PDF-1.4\n% autorizzazione SUAP del Laboratorio Vesuvio, firmata dal dott. Esposito\n"


@pytest.fixture
async def console(fresh_db, tmp_path):  # type: ignore[no-untyped-def]
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as running:
        await running.add_users()
        yield running


@contextlib.asynccontextmanager
async def _client(console: RunningConsole, role: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
        assert (await console.login(client, ROLE_USERS[role][0])).status_code == 303
        yield client


async def _downloads(console: RunningConsole) -> list[dict]:
    rows = await console.pool.fetch("SELECT actor, recorded_at, data FROM events WHERE stream_id LIKE 'access-%' "
                                    "AND data->>'what' = 'onboarding-document-download' ORDER BY recorded_at")
    return [{"actor": r["actor"], "at": r["recorded_at"], **r["data"]} for r in rows]


async def test_a_document_is_downloaded_by_the_desk_and_its_structure_only_and_each_download_is_logged(
        console: RunningConsole) -> None:
    own = await console.onboarding_request("ONB-VESUVIO", STRUCTURE)
    other = await console.onboarding_request("ONB-VOMERO", "150321", "Centro Vomero")
    document = await console.onboarding_document(own, "autorizzazione SUAP.pdf", PDF)
    foreign = await console.onboarding_document(other, "altro.pdf", b"%PDF-1.4 another structure's act")
    url = f"{console.url}/onboarding/{own}/documenti/{document}"

    for role in ("desk", "structure"):
        async with _client(console, role) as client:
            page = await client.get(f"{console.url}/onboarding/{own}")
            assert f'href="/onboarding/{own}/documenti/{document}"' in page.text, role  # the page links it
            got = await client.get(url)
            assert got.status_code == 200, role
            assert got.content == PDF and got.headers["content-type"] == "application/pdf"
            assert "autorizzazione%20SUAP.pdf" in got.headers["content-disposition"]
            # the structure's own request only; a document id of another request is not found in this one
            assert (await client.get(f"{console.url}/onboarding/{own}/documenti/{foreign}")).status_code == 404
            assert (await client.get(f"{console.url}/onboarding/{own}/documenti/..%2F..%2Fetc%2Fpasswd")
                    ).status_code == 404
    logged = await _downloads(console)
    assert [(d["actor"], d["role"], d["request"], d["document"], d["file"]) for d in logged] == [
        ("desk.1", "desk", own, document, "autorizzazione SUAP.pdf"),
        ("st.1", "structure", own, document, "autorizzazione SUAP.pdf")]
    assert all(d["address"] == "127.0.0.1" and d["at"] is not None for d in logged)

    for role in ("operator", "ops", "auditor", "admin"):
        async with _client(console, role) as client:
            assert (await client.get(url)).status_code == 404, role
            page = await client.get(f"{console.url}/onboarding/{own}")
            assert f"/documenti/{document}" not in page.text, role  # no link to what it may not download
    async with _client(console, "structure") as client:  # another structure's request: 404, exists or not
        assert (await client.get(f"{console.url}/onboarding/{other}/documenti/{foreign}")).status_code == 404
    assert len(await _downloads(console)) == 2  # refused downloads leave no access record
    assert await console.store.verify_all() == []  # the access stream is hash-chained like every stream
