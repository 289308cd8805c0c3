"""`flows demo` (the README's main command): start everything, generate a month of source data for
one entity, walk a Flusso C and a 730 instance to Formatted, send the 730 to the local TS simulator,
print where the files are, and leave the platform running to explore with `flows`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from rich.rule import Rule

from contracts.deadlines import italian_today
from services.cli import instances as inst
from services.cli import sources, stack
from services.cli.common import UserError, console, settings

# The simulator's account (simulators/sistema_ts/__main__.py defaults): test values, not secrets.
DEMO_TS = {"cf": "PROVAX00X00X000Y", "user": "PROVAX00X00X000Y", "password": "Salve123", "pincode": "1234567890"}


def _last_month() -> str:
    first = italian_today().replace(day=1)
    prev = first - timedelta(days=1)
    return f"{prev.year:04d}-{prev.month:02d}"


async def _walk(ente: str, month: str, services: int) -> None:
    from services.cli.ts import send_730
    from simulators.cup.generator import month_period

    start, end = month_period(month)
    console.print(Rule(f"1. Source data: {services} services of ente {ente}, {month}"))
    await sources.generate(ente, month, services, bad=0, seed=1, out=None)

    console.print(Rule("2. Flusso C: load -> Checked -> format -> Formatted"))
    flusso_c = await inst.load("FLUSSO_C", ente, start, end, "2020", None, True, "demo")
    await inst.format_instance(flusso_c, True, "demo")

    console.print(Rule("3. Flusso 730: load -> Checked -> format -> Formatted -> Sistema TS (simulator)"))
    f730 = await inst.load("FLUSSO_730", ente, start, end, "2020", None, True, "demo")
    await inst.format_instance(f730, True, "demo")
    await send_730(f730, DEMO_TS["cf"], DEMO_TS["user"], DEMO_TS["password"], DEMO_TS["pincode"], italian_today(),
                   "demo", True)

    console.print(Rule("4. Where things are"))
    await inst.list_instances(None, None, None)
    cfg = settings()
    console.print(f"files are stored by content hash under {cfg.files_dir}; `flows export {flusso_c} --out ./out` "
                  "writes them with their names")
    console.print(f"try: flows show {flusso_c} | flows files {flusso_c} --view <name> | flows feedback <n> | "
                  "flows deadlines | flows replay --all --verify")
    password = await _demo_login(ente)
    console.print(Rule("5. The operator console"))
    console.print(f"console: http://127.0.0.1:{cfg.console_port}/ - demo login: user [bold]demo.{ente}[/] "
                  f"(operator of ente {ente}), password [bold]{password}[/] (new at every demo run)")
    console.print("the platform keeps running; stop it with `flows stack down`")


async def _demo_login(ente: str) -> str:
    """The demo's console user, operator of `ente`, with a fresh random password."""
    import secrets

    from services.cli.common import database
    from services.console.auth import set_demo_user

    password = secrets.token_urlsafe(12)
    async with database() as pool:
        await set_demo_user(pool, f"demo.{ente}", ente, password)
    return password


def run_demo(ente: str, month: str | None, services: int) -> None:
    from services.loader.load_rules import period_not_over
    from simulators.cup.generator import month_period

    month = month or _last_month()
    # A month not over cannot be loaded (the loader would refuse the demo's loads, and the demo wait for them):
    # said before anything starts, with the loader's own rule.
    if (not_over := period_not_over(month_period(month)[1], None)) is not None:
        raise UserError(f"--month {month}: {not_over.reason()}")
    console.print(Rule("0. Platform: Kafka 3.9 + PostgreSQL + services"))
    stack.up(brokers=1, with_services=True)
    asyncio.run(_walk(ente, month, services))
