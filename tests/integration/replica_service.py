"""One replica of the loader or the formatter for the replicas test (tests/integration/test_replicas.py).

    python -m tests.integration.replica_service loader|formatter SUFFIX

`services.loader.app.main()` / `services.formatter.app.main()` unchanged, except:
- its consumer groups are `<group>-SUFFIX`: the test's two replicas of a service share them, and no other
  loader or formatter of the test session (the e2e platform's) takes their partitions;
- FLOWS_TEST_LOAD_PAUSE_S (loader): after each snapshot the load sleeps that long before its checks, so that
  concurrent loads overlap. The load itself is the real one.
- FLOWS_TEST_LOAD_HOLD_DIR (loader): after each snapshot the load also waits while that folder holds a file
  `hold` and no file `go-<snapshot number>`: the test decides when each run of a load goes on.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from services.runtime import broker


def _groups_with(suffix: str) -> Any:
    def consume_in_test_group(b: Any, topic: Any, *, group_id: str, **kw: Any) -> None:
        broker.consume(b, topic, group_id=f"{group_id}-{suffix}", **kw)
    return consume_in_test_group


def loader(suffix: str) -> None:
    from services.loader import app, pipeline

    pause = float(os.environ.get("FLOWS_TEST_LOAD_PAUSE_S", "0"))
    holds = Path(os.environ["FLOWS_TEST_LOAD_HOLD_DIR"]) if "FLOWS_TEST_LOAD_HOLD_DIR" in os.environ else None
    take_snapshot = pipeline.take_snapshot

    async def snapshot_then_pause(*args: Any, **kwargs: Any) -> Any:
        taken = await take_snapshot(*args, **kwargs)
        await asyncio.sleep(pause)
        while holds is not None and (holds / "hold").exists() and not (holds / f"go-{taken.snapshot_id}").exists():
            await asyncio.sleep(0.05)
        return taken

    pipeline.take_snapshot = snapshot_then_pause  # type: ignore[assignment]
    app.consume = _groups_with(suffix)  # type: ignore[assignment]
    app.SOURCES_GROUP = f"{app.SOURCES_GROUP}-{suffix}"  # the batched intake (services.loader.batch_intake)
    asyncio.run(app.main())


def formatter(suffix: str) -> None:
    from services.formatter import app

    app.consume = _groups_with(suffix)  # type: ignore[assignment]
    asyncio.run(app.main())


if __name__ == "__main__":
    {"loader": loader, "formatter": formatter}[sys.argv[1]](sys.argv[2])
