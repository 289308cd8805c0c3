"""Health and readiness over HTTP for every service process (issue 13, item 3).

    GET /healthz   200 while the process's event loop answers (liveness: restart me if not)
    GET /readyz    200 when PostgreSQL answers, Kafka answers and every consumer has joined its group
                   and holds an assignment (possibly empty: a standby member of a group with more
                   members than partitions is ready too); 503 naming what is not, otherwise
    GET /metrics   the process's Prometheus registry (the same figures as `metrics_port`)

Each check has a short timeout, so a probe never hangs on a dead dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

Check = Callable[[], Awaitable[tuple[bool, str]]]
CHECK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str


def postgres_check(pool: asyncpg.Pool) -> Check:
    async def check() -> tuple[bool, str]:
        await pool.fetchval("SELECT 1")
        return True, "answers"
    return check


def kafka_check(broker: Any) -> Check:
    async def check() -> tuple[bool, str]:
        ok = await broker.ping(timeout=CHECK_TIMEOUT_S - 0.5)
        return bool(ok), "answers" if ok else "does not answer"
    return check


def consumers_check(broker: Any) -> Check:
    async def check() -> tuple[bool, str]:
        waiting, held = [], []
        for subscriber in broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            subscription = getattr(getattr(consumer, "_subscription", None), "subscription", None)
            assignment = getattr(subscription, "assignment", None)
            if consumer is None or assignment is None or getattr(subscription, "_reassignment_in_progress", True):
                waiting.append(", ".join(getattr(subscriber, "topics", ())) or "?")
            else:
                held.extend(consumer.assignment())
        if waiting:
            return False, f"not yet assigned: {'; '.join(waiting)}"
        by_topic: dict[str, list[int]] = {}
        for tp in held:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        shares = "; ".join(f"{topic} {','.join(map(str, sorted(ps)))}" for topic, ps in sorted(by_topic.items()))
        return True, (f"{len(broker.subscribers)} consumer(s) assigned, {len(held)} partition(s)"
                      + (f": {shares}" if shares else ""))
    return check


async def run_checks(checks: dict[str, Check]) -> list[Result]:
    async def one(name: str, check: Check) -> Result:
        try:
            ok, detail = await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
        except TimeoutError:
            return Result(name, False, f"no answer within {CHECK_TIMEOUT_S:.0f} s")
        except Exception as exc:
            return Result(name, False, f"{type(exc).__name__}: {exc}")
        return Result(name, ok, detail)
    return list(await asyncio.gather(*(one(n, c) for n, c in checks.items())))


def app(service: str, checks: dict[str, Check], registry: Any = None) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"service": service, "status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        results = await run_checks(checks)
        ready = all(r.ok for r in results)
        body = {"service": service, "ready": ready,
                "checks": {r.name: {"ok": r.ok, "detail": r.detail} for r in results}}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        return web.Response(body=generate_latest(registry or REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    application = web.Application()
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    application.router.add_get("/metrics", metrics)
    return application


@contextlib.asynccontextmanager
async def serving(service: str, checks: dict[str, Check], host: str, port: int | None,
                  registry: Any = None) -> AsyncIterator[None]:
    """Serves /healthz, /readyz and /metrics on host:port while the block runs (nothing when port is None)."""
    if not port:
        yield
        return
    runner = web.AppRunner(app(service, checks, registry), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()


def service_checks(pool: asyncpg.Pool, broker: Any | None, extra: Sequence[tuple[str, Check]] = ()) -> dict[str, Check]:
    checks = {"postgresql": postgres_check(pool)}
    if broker is not None:
        checks["kafka"] = kafka_check(broker)
        checks["consumers"] = consumers_check(broker)
    checks.update(dict(extra))
    return checks
