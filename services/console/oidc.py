"""OpenID Connect login, the console's production option (the regional identity provider behind SPID/CIE).

Authorization code flow with PKCE (S256), `state` and `nonce`, through authlib: its OAuth2 client builds
the authorization URL and exchanges the code (client secret by HTTP Basic), its JOSE decodes the ID token
against the provider's published keys (JWKS), and its OIDC claims class checks issuer, audience, expiry,
issue time and nonce. Only asymmetric signatures are accepted (never `none` nor HMAC, so a public key can
never be used as a shared secret).

The login in progress is a row of `console_oidc_login` found by the SHA-256 of its state, used once and
valid 10 minutes; the browser also carries the state in a Lax cookie scoped to /login/oidc, and the
callback requires both (so nobody can finish a login started in another browser: no login CSRF).

The user is who the claims say: the user-name claim (a console user name), the role claim (one of the
roles), the enti claim (a list, or a string of codes separated by spaces or commas) and the structure
claim, their names being settings. They go through the same checks as `flows users add`
(auth.check_user) and into console_user with origin 'oidc', refreshed at every login; a local user's name
is never taken over, and a user an admin disabled stays disabled.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.jose import JsonWebKey, JsonWebToken
from authlib.jose.errors import BadSignatureError, JoseError
from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oidc.core import CodeIDToken

from services.console import auth
from services.runtime.settings import Settings

LOGIN_TTL_S = 600
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
METADATA_TTL_S = 3600
BAD_TOKEN = "Accesso non riuscito: il token d'identità non è valido."


class OidcRefused(Exception):
    """The login cannot be completed; `italian` says why to the user (never a secret, never a token)."""

    def __init__(self, italian: str, detail: str = "") -> None:
        super().__init__(detail or italian)
        self.italian = italian


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    enti: list[str]
    structure: str | None


def enabled(settings: Settings) -> bool:
    return bool(settings.console_oidc_metadata_url and settings.console_oidc_client_id)


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class OidcLogin:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: dict[str, Any] | None = None

    def _client(self, redirect_uri: str) -> AsyncOAuth2Client:
        secret = self.settings.console_oidc_client_secret
        return AsyncOAuth2Client(client_id=self.settings.console_oidc_client_id,
                                 client_secret=secret.get_secret_value() if secret else None,
                                 scope=self.settings.console_oidc_scope, redirect_uri=redirect_uri,
                                 code_challenge_method="S256", token_endpoint_auth_method="client_secret_basic",
                                 timeout=15)

    async def metadata(self, refresh: bool = False) -> dict[str, Any]:
        if self._metadata is None or refresh or time.monotonic() - self._metadata_at > METADATA_TTL_S:
            url = self.settings.console_oidc_metadata_url
            assert url is not None
            try:
                async with httpx.AsyncClient(timeout=15) as http:
                    response = await http.get(url)
                    response.raise_for_status()
                    found = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise OidcRefused("Il fornitore di identità non risponde: riprovi più tardi.",
                                  f"OIDC metadata {url}: {type(exc).__name__}") from None
            expected = self.settings.console_oidc_issuer or found.get("issuer")
            if not expected or found.get("issuer") != expected:
                raise OidcRefused("Il fornitore di identità non è quello configurato.",
                                  f"OIDC metadata issuer {found.get('issuer')!r}, expected {expected!r}")
            self._metadata, self._metadata_at, self._jwks = found, time.monotonic(), None
        return self._metadata

    async def _key_set(self, refresh: bool = False) -> Any:
        if self._jwks is None or refresh:
            metadata = await self.metadata()
            async with httpx.AsyncClient(timeout=15) as http:
                response = await http.get(metadata["jwks_uri"])
                response.raise_for_status()
                self._jwks = response.json()
        return JsonWebKey.import_key_set(self._jwks)

    async def start(self, pool: asyncpg.Pool, redirect_uri: str, next_url: str) -> tuple[str, str]:
        """(the provider's authorization URL to send the browser to, the state for its cookie)."""
        metadata = await self.metadata()
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
        async with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(metadata["authorization_endpoint"], state=state, nonce=nonce,
                                                     code_verifier=verifier)
        await pool.execute("DELETE FROM console_oidc_login WHERE expires_at < now()")
        await pool.execute("INSERT INTO console_oidc_login (state_sha256, nonce, code_verifier, next_url, expires_at) "
                           "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
                           _sha256(state), nonce, verifier, next_url, float(LOGIN_TTL_S))
        return url, state

    async def finish(self, pool: asyncpg.Pool, redirect_uri: str, state: str, cookie_state: str | None,
                     code: str) -> tuple[Identity, str]:
        """The identity the provider vouches for, and where the user was going."""
        if not state or not cookie_state or not secrets.compare_digest(state, cookie_state):
            raise OidcRefused("Accesso non riuscito: la richiesta non è partita da questo browser. Riprovi.",
                              "OIDC callback: state does not match this browser's")
        row = await pool.fetchrow("DELETE FROM console_oidc_login WHERE state_sha256 = $1 RETURNING nonce, "
                                  "code_verifier, next_url, expires_at > now() AS valid", _sha256(state))
        if row is None or not row["valid"]:
            raise OidcRefused("Accesso scaduto o già usato: riprovi.", "OIDC callback: unknown or expired state")
        metadata = await self.metadata()
        try:
            async with self._client(redirect_uri) as client:
                token = await client.fetch_token(metadata["token_endpoint"], code=code,
                                                 code_verifier=row["code_verifier"], grant_type="authorization_code")
        except (OAuth2Error, httpx.HTTPError, ValueError) as exc:
            raise OidcRefused("Il fornitore di identità ha rifiutato l'accesso.",
                              f"OIDC token exchange: {type(exc).__name__}") from None
        if "id_token" not in token:
            raise OidcRefused("Il fornitore di identità non ha dato un token d'identità.", "OIDC: no id_token")
        claims = await self._claims(token, row["nonce"], metadata)
        return self.identity(claims), str(row["next_url"])

    async def _claims(self, token: dict[str, Any], nonce: str, metadata: dict[str, Any]) -> dict[str, Any]:
        algs = [a for a in metadata.get("id_token_signing_alg_values_supported") or ["RS256"] if a in ASYMMETRIC]
        jwt = JsonWebToken(algs or ["RS256"])
        options = {"iss": {"essential": True, "values": [metadata["issuer"]]}}
        params = {"nonce": nonce, "client_id": self.settings.console_oidc_client_id,
                  "access_token": token.get("access_token")}
        for refresh in (False, True):  # a key the provider rotated in: the key set is read again, once
            try:
                claims = jwt.decode(token["id_token"], key=await self._key_set(refresh), claims_cls=CodeIDToken,
                                    claims_options=options, claims_params=params)
                claims.validate(leeway=60)
                return dict(claims)
            except (BadSignatureError, ValueError) as exc:  # a wrong signature, or no key with the token's kid
                if refresh:
                    raise OidcRefused(BAD_TOKEN, f"OIDC id_token refused: {type(exc).__name__}") from None
            except JoseError as exc:
                raise OidcRefused(BAD_TOKEN, f"OIDC id_token refused: {exc.error}") from None
        raise AssertionError("unreachable")

    def identity(self, claims: dict[str, Any]) -> Identity:
        s = self.settings
        name, role = claims.get(s.console_oidc_username_claim), claims.get(s.console_oidc_role_claim)
        raw_enti = claims.get(s.console_oidc_enti_claim) or []
        enti = raw_enti.replace(",", " ").split() if isinstance(raw_enti, str) else [str(e) for e in raw_enti]
        structure = claims.get(s.console_oidc_structure_claim) or None
        if not isinstance(name, str) or not isinstance(role, str):
            raise OidcRefused("Il suo profilo non indica utente e ruolo per questa console: si rivolga "
                              "all'amministratore.", "OIDC claims: no user name or role")
        try:
            auth.check_user(name, role, enti, str(structure) if structure else None, "x" * 12)
        except auth.UserInputError as exc:
            rule = exc.italian[:1].lower() + exc.italian[1:].rstrip(".")  # a sentence of its own on the users page
            raise OidcRefused(f"Il suo profilo non è valido per questa console ({rule}): si rivolga "
                              "all'amministratore.", str(exc)) from None
        return Identity(name, role, sorted(set(enti)), str(structure) if structure else None)


async def upsert_user(pool: asyncpg.Pool, who: Identity) -> None:
    """The OIDC user as console_user (origin oidc), its role, enti and structure as the claims say now."""
    row = await pool.fetchrow(
        "INSERT INTO console_user (name, role, enti, structure, password_hash, origin) "
        "VALUES ($1, $2, $3, $4, '!oidc', 'oidc') ON CONFLICT (name) DO UPDATE "
        "SET role = EXCLUDED.role, enti = EXCLUDED.enti, structure = EXCLUDED.structure "
        "WHERE console_user.origin = 'oidc' RETURNING disabled", who.name, who.role, who.enti, who.structure)
    if row is None:
        raise OidcRefused("Accesso non riuscito: il nome utente appartiene a un utente locale della console. "
                          "Si rivolga all'amministratore.",
                          f"OIDC user {who.name}: a local user has that name")
    if row["disabled"]:
        raise OidcRefused("Il suo utente è disattivato in questa console: si rivolga all'amministratore.",
                          f"OIDC user {who.name} is disabled")
