"""A small but real OpenID Connect provider for the console's tests, on a local port of the test stack's
range: discovery document, JWKS, an authorization endpoint (no login form: it vouches for `next_claims`,
as if the user had logged in at SPID/CIE), and a token endpoint that checks the client secret (HTTP Basic),
the code, its redirect URI and the PKCE verifier, then issues an RS256-signed ID token with the nonce.
`sign_with_other_key` makes it sign with a key it does not publish (under the published kid)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from authlib.jose import JsonWebKey, jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.stack_urls import free_port


@dataclass
class Provider:
    url: str
    client_id: str
    client_secret: str
    key: Any = field(default_factory=lambda: JsonWebKey.generate_key("RSA", 2048, is_private=True,
                                                                    options={"kid": "k1"}))
    other_key: Any = field(default_factory=lambda: JsonWebKey.generate_key("RSA", 2048, is_private=True,
                                                                          options={"kid": "k1"}))
    next_claims: dict[str, Any] = field(default_factory=dict)
    sign_with_other_key: bool = False
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens_issued: int = 0

    @property
    def metadata_url(self) -> str:
        return self.url + "/.well-known/openid-configuration"

    async def discovery(self, request: Request) -> Response:
        return JSONResponse({"issuer": self.url, "authorization_endpoint": self.url + "/authorize",
                             "token_endpoint": self.url + "/token", "jwks_uri": self.url + "/jwks",
                             "response_types_supported": ["code"], "subject_types_supported": ["public"],
                             "id_token_signing_alg_values_supported": ["RS256"],
                             "code_challenge_methods_supported": ["S256"],
                             "token_endpoint_auth_methods_supported": ["client_secret_basic"]})

    async def jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [self.key.as_dict(is_private=False)]})

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != self.client_id or q.get("response_type") != "code" or \
                "openid" not in (q.get("scope") or "").split() or q.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = secrets.token_urlsafe(24)
        self.codes[code] = {"redirect_uri": q["redirect_uri"], "nonce": q.get("nonce"),
                            "challenge": q["code_challenge"], "claims": dict(self.next_claims)}
        target = q["redirect_uri"] + "?" + urllib.parse.urlencode({"code": code, "state": q.get("state", "")})
        return RedirectResponse(target, status_code=302)

    async def token(self, request: Request) -> Response:
        form = await request.form()
        basic = request.headers.get("authorization", "")
        given = base64.b64decode(basic[6:]).decode() if basic.startswith("Basic ") else ""
        client_id, _, secret = given.partition(":")
        if urllib.parse.unquote(client_id) != self.client_id or urllib.parse.unquote(secret) != self.client_secret:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        grant = self.codes.pop(str(form.get("code")), None)  # a code is used once
        verifier = str(form.get("code_verifier") or "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"] or challenge != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(time.time())
        claims = {"iss": self.url, "aud": self.client_id, "sub": "sub-" + str(grant["claims"].get(
            "preferred_username")), "iat": now, "exp": now + 300, "nonce": grant["nonce"], **grant["claims"]}
        key = self.other_key if self.sign_with_other_key else self.key
        id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key).decode()
        self.tokens_issued += 1
        return JSONResponse({"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 300,
                             "id_token": id_token})


@contextlib.asynccontextmanager
async def running_provider(client_id: str = "console", client_secret: str = "") -> AsyncIterator[Provider]:
    port = free_port(400, 500)
    provider = Provider(f"http://127.0.0.1:{port}", client_id, client_secret or secrets.token_urlsafe(24))
    app = Starlette(routes=[Route("/.well-known/openid-configuration", provider.discovery),
                            Route("/jwks", provider.jwks), Route("/authorize", provider.authorize),
                            Route("/token", provider.token, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
        yield provider
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
