"""The console's HTTP protocol (services/console/server.py) writes an answer of known length in one `write()`, its
head in front of its body, and otherwise what uvicorn's own cycle writes, in the same order: the same bytes for every
shape of answer (a page, a HEAD, an empty 204, a streamed body, a body sent in parts, a closing connection), and the
same errors for an answer longer or shorter than its Content-Length."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from services.console.server import ConsoleHttpProtocol, OneWriteCycle


class Transport:
    """What a cycle writes, write by write, and whether it closed the connection (after which writes)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed_after: int | None = None

    def write(self, data: bytes) -> None:
        if data:  # uvloop's and asyncio's transports drop an empty write
            self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed_after = len(self.writes)

    def is_closing(self) -> bool:
        return self.closed_after is not None

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def cycle(kind: type[RequestResponseCycle], method: str = "GET", keep_alive: bool = True
          ) -> tuple[RequestResponseCycle, Transport, list[int]]:
    transport, completed = Transport(), []
    scope: Any = {"type": "http", "method": method, "path": "/", "http_version": "1.1", "headers": []}
    made = kind(scope=scope, transport=transport, flow=FlowControl(transport),  # type: ignore[arg-type]
                logger=logging.getLogger("test"), access_logger=logging.getLogger("test.access"), access_log=False,
                default_headers=[(b"date", b"Sun, 06 Dec 2026 15:00:00 GMT")], message_event=asyncio.Event(),
                expect_100_continue=False, keep_alive=keep_alive, on_response=lambda: completed.append(1))
    return made, transport, completed


def start(status: int = 200, length: int | None = None) -> Any:  # an ASGI message
    headers = [(b"content-type", b"text/html; charset=utf-8")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": status, "headers": headers}


def body(data: bytes, more: bool = False) -> Any:
    return {"type": "http.response.body", "body": data, "more_body": more}


PAGE = b"<!doctype html><p>Istanze di flusso</p>"
ANSWERS: dict[str, tuple[str, bool, list[Any]]] = {
    "page": ("GET", True, [start(length=len(PAGE)), body(PAGE)]),
    "page, connection closing": ("GET", False, [start(length=len(PAGE)), body(PAGE)]),
    "page in parts": ("GET", True, [start(length=len(PAGE)), body(PAGE[:10], True), body(PAGE[10:])]),
    "page, an empty first part": ("GET", True, [start(length=len(PAGE)), body(b"", True), body(PAGE)]),
    "HEAD": ("HEAD", True, [start(length=len(PAGE)), body(b"")]),
    "HEAD, the app sending the body anyway": ("HEAD", True, [start(length=len(PAGE)), body(PAGE)]),
    "204": ("GET", True, [start(204), body(b"")]),
    "empty, length 0": ("GET", True, [start(length=0), body(b"")]),
    "streamed": ("GET", True, [start(), body(b"event: ready\n\n", True), body(b"event: change\n\n", True), body(b"")]),
}


@pytest.mark.parametrize("name", ANSWERS)
async def test_the_same_bytes_as_uvicorns_cycle(name: str) -> None:
    method, keep_alive, messages = ANSWERS[name]
    ours, written, completed = cycle(OneWriteCycle, method, keep_alive)
    theirs, expected, expected_completed = cycle(RequestResponseCycle, method, keep_alive)
    for message in messages:
        await ours.send(message)
        await theirs.send(message)
    assert b"".join(written.writes) == b"".join(expected.writes)
    assert ours.response_complete and theirs.response_complete
    assert completed == expected_completed == [1]
    # Closed after everything was written, as uvicorn's cycle closes it.
    assert (written.closed_after, expected.closed_after) == ((len(written.writes), len(expected.writes))
                                                               if not keep_alive else (None, None))


async def test_a_page_is_one_write_and_a_stream_keeps_its_head_first() -> None:
    page, written, _ = cycle(OneWriteCycle)
    await page.send(start(length=len(PAGE)))
    assert written.writes == []  # held for the body
    await page.send(body(PAGE))
    assert len(written.writes) == 1 and written.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert written.writes[0].endswith(b"\r\n\r\n" + PAGE)

    stream, written, _ = cycle(OneWriteCycle)
    await stream.send(start())
    assert len(written.writes) == 1 and written.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")


@pytest.mark.parametrize("parts", [[PAGE + b"!"], [PAGE[:5]]])
async def test_a_body_not_of_its_length_fails_as_in_uvicorn(parts: list[bytes]) -> None:
    for kind in (OneWriteCycle, RequestResponseCycle):
        made, _, _ = cycle(kind)
        await made.send(start(length=len(PAGE)))
        with pytest.raises(RuntimeError, match="Content-Length"):
            for part in parts:
                await made.send(body(part))


def test_uvicorn_takes_the_protocol() -> None:
    config = uvicorn.Config(lambda: None, http=ConsoleHttpProtocol)
    config.load()
    assert config.http_protocol_class is ConsoleHttpProtocol
