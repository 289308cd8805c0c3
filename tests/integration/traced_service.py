"""A real service (loader or formatter) in its own process, alone in its consumer groups, for the trace test.

    python -m tests.integration.traced_service loader|formatter SUFFIX

The service's `main()` unchanged, except that its consumer groups are `<group>-SUFFIX` (a session may run
other instances of the service in the groups `loader`, `formatter`), starting at the end of each topic.
Its spans go where its settings say (FLOWS_TRACES_FILE).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from typing import Any

from contracts.topics import INTAKE_TOPICS
from services.runtime import broker
from tests.integration.outage_loader import start_at_the_end

SOURCES = [t.name for t in INTAKE_TOPICS]
GROUPS = {"loader": {"loader": ["flows.load-requested"], "loader-sources": SOURCES},
          "formatter": {"formatter": ["flows.format-requested"]}}


def main(name: str, suffix: str) -> None:
    def consume_alone(b: Any, topic: Any, *, group_id: str, **kw: Any) -> None:
        broker.consume(b, topic, group_id=f"{group_id}-{suffix}", **kw)

    bootstrap = os.environ["FLOWS_KAFKA_BOOTSTRAP"]
    for group, topics in GROUPS[name].items():
        asyncio.run(start_at_the_end(bootstrap, f"{group}-{suffix}", topics))
    app: Any = importlib.import_module(f"services.{name}.app")
    app.consume = consume_alone  # the module's own name for broker.consume
    if name == "loader":
        app.SOURCES_GROUP = f"loader-sources-{suffix}"  # the batched intake (services.loader.batch_intake)
    asyncio.run(app.main())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
