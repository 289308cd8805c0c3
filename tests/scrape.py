"""One figure of a service's /metrics, as Prometheus would scrape it (the tests that watch a gauge an alert uses)."""

from __future__ import annotations

import aiohttp


async def scraped(port: int, series: str) -> float | None:
    """The value of `series` (its name and labels exactly as exposed, e.g. `flows_x{service="loader"}`) on
    http://127.0.0.1:`port`/metrics; None when the service does not expose it."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    prefix = f"{series} "
    return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), None)
