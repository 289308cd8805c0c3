"""OpenID Connect login of the console against a small real provider started in the test (tests/oidc_provider.py, RS256
ID tokens, PKCE, client secret): the user, its role and enti come from the claims (and change when the claims do),
from the claims the FLOWS_CONSOLE_OIDC_*_CLAIM settings name when they are not the defaults; a token signed with a
key the provider does not publish is refused, and so is a callback in a browser that did not start the login; the
client secret never reaches a log line."""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Iterator

import httpx
import pytest

from tests.console_support import RunningConsole, csrf_of, running_console, stale_static_urls, static_urls
from tests.log_capture import service_log_lines
from tests.oidc_provider import Provider, running_provider
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """The console's own structlog lines during the test: caplog holds only the standard library's records."""
    with service_log_lines() as lines:
        yield lines


@pytest.fixture
async def provider():  # type: ignore[no-untyped-def]
    async with running_provider() as running:
        yield running


# Its own console, not the shared one (tests/integration/conftest.py): signed in through the provider, with no
# local users.
@pytest.fixture
async def console(fresh_db, tmp_path, provider: Provider):  # type: ignore[no-untyped-def]
    async with running_console(fresh_db, KAFKA, tmp_path / "files", console_oidc_metadata_url=provider.metadata_url,
                               console_oidc_client_id=provider.client_id,
                               console_oidc_client_secret=provider.client_secret) as running:
        yield running


async def _oidc_login(console: RunningConsole, client: httpx.AsyncClient, next_url: str = "/istanze") -> httpx.Response:
    """The browser's path: the login page's link, the provider, back to the console's callback."""
    login = await client.get(f"{console.url}/login?next={next_url}")
    assert 'id="accedi-oidc"' in login.text
    return await client.get(f"{console.url}/login/oidc", params={"next": next_url}, follow_redirects=True)


async def test_oidc_login_takes_user_role_and_enti_from_the_claims(console: RunningConsole, provider: Provider,
                                                                   caplog: pytest.LogCaptureFixture,
                                                                   service_log: io.StringIO) -> None:
    caplog.set_level(logging.DEBUG)
    own, other = await console.instance("201"), await console.instance("202")
    provider.next_claims = {"preferred_username": "mario.rossi", "flows_role": "operator", "flows_enti": ["201"]}
    async with httpx.AsyncClient(timeout=20) as client:
        done = await _oidc_login(console, client)
        assert done.status_code == 200 and str(done.url).startswith(f"{console.url}/login/oidc/callback?code=")
        assert 'http-equiv="refresh" content="0;url=/istanze"' in done.text  # same-site hop to the page asked
        # a page of its own (oidc_done.html): its assets too carry their fingerprints (test_console_assets.py)
        assert len(static_urls(done.text)) == 5 and stale_static_urls(done.text) == []
        listed = await client.get(f"{console.url}/istanze")
        assert listed.status_code == 200 and "mario.rossi (operatore: enti 201)" in listed.text
        assert f'href="/istanze/{own}"' in listed.text and f'href="/istanze/{other}"' not in listed.text
        assert (await client.get(f"{console.url}/istanze/{other}")).status_code == 404
    user = await console.pool.fetchrow("SELECT role, enti, origin, password_hash FROM console_user "
                                       "WHERE name = 'mario.rossi'")
    assert (user["role"], list(user["enti"]), user["origin"]) == ("operator", ["201"], "oidc")

    # The provider now says auditor: the next login is an auditor, who sees every ente.
    provider.next_claims = {"preferred_username": "mario.rossi", "flows_role": "auditor"}
    async with httpx.AsyncClient(timeout=20) as client:
        assert (await _oidc_login(console, client)).status_code == 200
        listed = await client.get(f"{console.url}/istanze")
        assert "mario.rossi (revisore)" in listed.text and f'href="/istanze/{other}"' in listed.text
        # an OIDC user has no password: the local form never lets it in
        form = await client.get(f"{console.url}/login")
        assert "password" in form.text
    async with httpx.AsyncClient(timeout=20) as client:
        assert (await console.login(client, "mario.rossi", "!oidc")).status_code == 401
    assert provider.tokens_issued == 2
    assert provider.client_secret not in caplog.text and provider.client_secret not in service_log.getvalue()


async def test_a_token_with_a_bad_signature_or_a_foreign_callback_or_bad_claims_is_refused(
        console: RunningConsole, provider: Provider, service_log: io.StringIO) -> None:
    sessions = await console.pool.fetchval("SELECT count(*) FROM console_session")
    provider.next_claims = {"preferred_username": "eva.bianchi", "flows_role": "operator", "flows_enti": ["201"]}
    provider.sign_with_other_key = True  # same kid, a key the provider never published
    async with httpx.AsyncClient(timeout=20) as client:
        refused = await _oidc_login(console, client)
        assert refused.status_code == 401 and "il token d&#39;identità non è valido" in refused.text
        assert (await client.get(f"{console.url}/istanze")).status_code == 303  # not logged in
        # the refusal page's password form works as it is (its own login CSRF token)
        local = await client.post(f"{console.url}/login", data={"utente": "op.nessuno", "password": "x" * 12,
                                                                "csrf": csrf_of(refused.text)})
        assert local.status_code == 401 and "Utente o password non corretti" in local.text
    assert provider.tokens_issued == 1  # the token was issued, and the console refused it
    assert await console.pool.fetchval("SELECT count(*) FROM console_user WHERE name = 'eva.bianchi'") == 0

    # A callback opened in a browser that did not start the login (login CSRF): refused, the code unused.
    provider.sign_with_other_key = False
    async with httpx.AsyncClient(timeout=20) as victim, httpx.AsyncClient(timeout=20) as attacker:
        to_provider = await attacker.get(f"{console.url}/login/oidc", params={"next": "/"})
        back = await attacker.get(to_provider.headers["location"])
        callback = back.headers["location"]
        assert callback.startswith(f"{console.url}/login/oidc/callback?code=")
        foreign = await victim.get(callback)
        assert foreign.status_code == 401 and "non è partita da questo browser" in foreign.text

    # Claims that name no role of the console: refused with the reason.
    provider.next_claims = {"preferred_username": "eva.bianchi", "flows_role": "superuser"}
    async with httpx.AsyncClient(timeout=20) as client:
        refused = await _oidc_login(console, client)
        said = html.unescape(refused.text)
        assert refused.status_code == 401 and (
            "Il suo profilo non è valido per questa console (ruolo 'superuser' sconosciuto): si rivolga "
            "all'amministratore.") in said, said
    # An operator with a well-formed ente list as a string is let in (the claim may be either form).
    provider.next_claims = {"preferred_username": "eva.bianchi", "flows_role": "operator", "flows_enti": "201, 202"}
    async with httpx.AsyncClient(timeout=20) as client:
        assert (await _oidc_login(console, client)).status_code == 200
        assert "eva.bianchi (operatore: enti 201, 202)" in (await client.get(f"{console.url}/istanze")).text
    assert await console.pool.fetchval("SELECT count(*) FROM console_session") == sessions + 1
    # The refusals were logged, by the console's own logger, and not one line holds the client secret.
    assert service_log.getvalue().count('"console.oidc_refused"') >= 2, service_log.getvalue()[-3000:]
    assert provider.client_secret not in service_log.getvalue()


async def test_claim_names_set_in_the_environment_are_the_ones_read(fresh_db, tmp_path, provider: Provider,  # type: ignore[no-untyped-def]
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider whose claims are not named as the defaults: FLOWS_CONSOLE_OIDC_*_CLAIM name them, and the user,
    role, enti and structure come from those claims. Each token also carries the default names with other values:
    read, they would give another role, ente or structure."""
    for setting, claim in (("USERNAME", "codice_utente"), ("ROLE", "ruolo_flussi"), ("ENTI", "aziende"),
                           ("STRUCTURE", "struttura_sts11")):
        monkeypatch.setenv(f"FLOWS_CONSOLE_OIDC_{setting}_CLAIM", claim)
    decoys = {"preferred_username": "esca", "flows_role": "auditor", "flows_enti": ["201"], "flows_structure": "150321"}
    async with running_console(fresh_db, KAFKA, tmp_path / "files", console_oidc_metadata_url=provider.metadata_url,
                               console_oidc_client_id=provider.client_id,
                               console_oidc_client_secret=provider.client_secret) as console:
        assert console.settings.console_oidc_role_claim == "ruolo_flussi"
        own, other = await console.instance("202"), await console.instance("201")
        provider.next_claims = {**decoys, "codice_utente": "mario.rossi", "ruolo_flussi": "operator",
                                "aziende": "202"}
        async with httpx.AsyncClient(timeout=20) as client:
            assert (await _oidc_login(console, client)).status_code == 200
            listed = await client.get(f"{console.url}/istanze")
            assert listed.status_code == 200 and "mario.rossi (operatore: enti 202)" in listed.text
            assert f'href="/istanze/{own}"' in listed.text and f'href="/istanze/{other}"' not in listed.text
            assert (await client.get(f"{console.url}/istanze/{other}")).status_code == 404

        mine = await console.onboarding_request("ONB-CLAIM-OWN", "150123")
        theirs = await console.onboarding_request("ONB-CLAIM-OTHER", "150321", "Centro Vomero")
        provider.next_claims = {**decoys, "codice_utente": "lab.vesuvio", "ruolo_flussi": "structure",
                                "struttura_sts11": "150123"}
        async with httpx.AsyncClient(timeout=20) as client:
            assert (await _oidc_login(console, client, "/onboarding")).status_code == 200
            dashboard = await client.get(f"{console.url}/onboarding")
            assert dashboard.status_code == 200, dashboard.text
            assert f'href="/onboarding/{mine}"' in dashboard.text
            assert f'href="/onboarding/{theirs}"' not in dashboard.text
            assert (await client.get(f"{console.url}/onboarding/{theirs}")).status_code == 404
        users = {r["name"]: (r["role"], list(r["enti"]), r["structure"]) for r in await console.pool.fetch(
            "SELECT name, role, enti, structure FROM console_user WHERE origin = 'oidc'")}
        assert users == {"mario.rossi": ("operator", ["202"], None), "lab.vesuvio": ("structure", [], "150123")}
