"""The TS gateway service: sends Formatted 730 instances to Sistema TS and follows their outcome."""

from __future__ import annotations

import asyncio
import contextlib
import functools

from contracts import flows
from contracts.topics import by_name
from services.runtime.broker import consume
from services.runtime.host import every, first_retry_s, runtime, serve, space_waits
from services.runtime.sanitel import load_certificate
from services.runtime.settings import Settings
from services.ts_gateway import handlers
from services.ts_gateway.client import TsClient, TsClientSettings, TsEndpoints
from services.ts_gateway.keys import GatewayKeys
from services.ts_gateway.ledger import PgPartLedger
from services.ts_gateway.submission import BackoffSchedule
from services.ts_gateway.submitter import SubmissionRunner

GROUP = "ts-gateway"  # the consumer group of the submission requests


def pass_period(settings: Settings) -> float:
    """Seconds between two resume passes (FLOWS_PASS_S, else RESUME_PASS_S)."""
    return settings.pass_s or handlers.RESUME_PASS_S


async def main(settings: Settings | None = None, stop: asyncio.Event | None = None) -> None:
    settings = settings or Settings()
    async with runtime(settings, name="ts-gateway") as rt, contextlib.AsyncExitStack() as stack:
        # The certificate is read at start: it rotates, and a restart picks up the new one.
        client = await stack.enter_async_context(TsClient(
            TsClientSettings(endpoints=TsEndpoints(settings.ts_endpoint)), load_certificate(settings.sanitel_cert)))
        runner = SubmissionRunner(
            ledger=PgPartLedger(rt.pool), ts=client,
            poll_schedule=BackoffSchedule(initial=settings.ts_poll_initial_s, cap=settings.ts_poll_max_s),
            send_retry=BackoffSchedule(initial=settings.ts_poll_initial_s, cap=settings.ts_poll_max_s))
        deps = handlers.GatewayDeps(pool=rt.pool, store=rt.store, files=rt.files, runner=runner,
                                    keys=GatewayKeys(settings.keys_dir),
                                    interrupted=handlers.interruptions(first_retry_s(settings),
                                                                       settings.interrupted_retry_cap_s),
                                    space=space_waits(settings, handlers.log))
        consume(rt.broker, by_name(flows.TYPE_OF[flows.TsSubmissionRequested]), group_id=GROUP,
                handler=functools.partial(handlers.handle_submission_requested, deps=deps),
                max_attempts=settings.max_attempts, probe=rt.probe_database)

        async def resume(stop: asyncio.Event) -> None:
            await every(pass_period(settings), stop, lambda: handlers.resume_unfinished(deps), "ts-gateway.resume")

        try:
            await serve(rt, [resume], stop=stop)
        finally:
            await deps.worker.close()  # a submission cut here resumes, reconciled, at the next start
