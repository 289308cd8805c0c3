"""The console's HTTP server protocol: uvicorn's httptools protocol, with an answer of known length written in one
`write()` (its head and its body together) instead of two.

uvicorn writes an answer's head as soon as the app sends `http.response.start`, and its body at
`http.response.body`: two system calls, and on the client's side two wake-ups and two reads, for a page that fits
in one. Here the head of an answer with a Content-Length (every page and JSON answer; not a streamed one, which
keeps its head written at once: an event stream's client waits for it; nor a HEAD's, which has no body) is held
until the body's first message and written in front of it. The bytes sent are uvicorn's, in the same order
(tests/unit/test_console_server.py).
"""

from __future__ import annotations

from typing import Any

from uvicorn._types import ASGISendEvent, HTTPResponseBodyEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class _Kept:
    """A stand-in for the transport while uvicorn builds an answer's head: keeps what it writes."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, the head of an answer with a Content-Length written with its body."""

    held: bytes | None = None  # the head, built by uvicorn, not yet written

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start" and not self.response_started and not self.disconnected:
            if self.flow.write_paused:
                await self.flow.drain()  # as uvicorn's send does first: the stand-in below is only there while
                # uvicorn's send runs without awaiting anything (the cycle's receive() meanwhile sees the transport)
            transport, kept = self.transport, _Kept()
            self.transport = kept  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            if self.chunked_encoding is False and self.expected_content_length > 0 and self.scope["method"] != "HEAD":
                self.held = kept.data  # a body follows: written with it
            else:
                transport.write(kept.data)  # streamed, HEAD, empty: as uvicorn writes it
            return
        head = self.held
        if head is None:
            await super().send(message)
            return
        self.held = None
        body = message.get("body", b"") if message["type"] == "http.response.body" else b""
        if (self.disconnected or self.flow.write_paused or not body or not isinstance(body, bytes)
                or len(body) > self.expected_content_length):
            # Anything uncommon goes as uvicorn sends it: the head first, then uvicorn's own handling.
            if not self.disconnected:
                self.transport.write(head)
            await super().send(message)
            return
        self.transport.write(head + body)
        self.expected_content_length -= len(body)
        rest: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"",
                                       "more_body": bool(message.get("more_body", False))}
        await super().send(rest)  # uvicorn's bookkeeping: the length left, completion, keep-alive, close


class ConsoleHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, each request's cycle a OneWriteCycle."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        cycle.__class__ = OneWriteCycle
        super()._start_asgi_task(cycle, app)
