"""A real PostgreSQL outage of the TEST stack: `pg_ctl stop -m fast` of its server (or `docker stop` of its
container), then `up` again (tests/session_stack.py).

The test stack's server is shared by the whole session, so `postgres_down()` always starts it again and
waits until it accepts connections, even when the body fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.session_stack import start_postgres, stop_postgres


@asynccontextmanager
async def postgres_down() -> AsyncIterator[None]:
    """`async with postgres_down(): ...`: the server is stopped for the body, and running after it."""
    await asyncio.to_thread(stop_postgres)
    try:
        yield
    finally:
        await asyncio.to_thread(start_postgres)


@asynccontextmanager
async def late_close_proxy(database_url: str, close_delay: float) -> AsyncIterator[str]:
    """A TCP relay in front of the server of `database_url` (its URL through the relay, for the block): bytes pass
    both ways at once, but when the server closes a connection the client's side is closed only `close_delay`
    seconds later, as a proxy or a NAT on the path may do.

    When PostgreSQL stops, each backend sends its last words (FATAL 57P01, "terminating connection due to
    administrator command") and closes. Straight to the client, the close follows so closely that asyncpg almost
    always sees it at once and cleans up; through this relay the client sees the FATAL alone first, for
    `close_delay`: the window in which a client that sends its next query gets its connection aborted by asyncpg
    without asyncpg's own clean-up (listeners left on it). The outage is real; the relay only holds that window open
    long enough for a test to land in it every time."""
    from tests.stack_urls import free_port

    head, _, rest = database_url.rpartition("@")
    host_port, slash, database = rest.partition("/")
    server_host, _, server_port = host_port.rpartition(":")
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_close: float) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if delay_close:
                await asyncio.sleep(delay_close)
            writer.close()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(server_host, int(server_port))
        except OSError:
            client_writer.close()  # the server is down: the client's connect fails, as it would without the relay
            return
        for task in (asyncio.create_task(pipe(client_reader, server_writer, 0)),
                     asyncio.create_task(pipe(server_reader, client_writer, close_delay))):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    port = free_port(500, 560)
    relay = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield f"{head}@127.0.0.1:{port}{slash}{database}"
    finally:
        relay.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await relay.wait_closed()
