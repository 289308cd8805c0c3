"""The outbox relay in its own process, for the kill -9 test of tests/integration/test_outbox.py.

    python -m tests.integration.outbox_relay_process DATABASE_URL BOOTSTRAP BATCH_SIZE

`services.runtime.outbox.OutboxRelay` unchanged, with an `after_ack` hook that prints `acked N` (flushed) once
its first batch is acknowledged by Kafka and then holds it there, before the rows are marked published:
the window the test kills it in with SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys

from services.runtime.db import create_pool
from services.runtime.outbox import OutboxRelay


async def main(database_url: str, bootstrap: str, batch_size: int) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=4)

    async def hold_after_ack(acked: list[int]) -> None:
        print(f"acked {len(acked)}", flush=True)
        await asyncio.Event().wait()  # until the test kills the process

    try:
        await OutboxRelay(pool, bootstrap, batch_size=batch_size, after_ack=hold_after_ack).run()
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
