"""`flows`: the operator's command line.

    flows stack up|down|status          local Kafka + PostgreSQL + every service
    flows stack stop|start|restart NAME one service or replica of the local stack (loader, loader-2, ...)
    flows topics apply|list [--json]    the Kafka topics, provisioned from the topic registry
    flows sources generate|import       source data ("Fonti dati")
    flows load / instances / show / format / files / export / feedback / delete
    flows send-730 <n>                  send a Formatted 730 instance to Sistema TS
    flows ts rotate-key                 a new TS gateway sealing key (the old one goes when unused)
    flows deadlines                     due dates per flow type and entity
    flows replay [<n>|--all] [--verify|--chains-only] rebuild and verify the history
    flows demo                          the whole walk-through on generated data
    flows users add|list|disable|enable|password|history   the console's users and their record
    flows users api-key|api-keys|api-key-revoke           API keys of machine clients
    flows access-log                    who read personal data
"""

from __future__ import annotations

import importlib
import json
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer
import typer.core
import typer.main
from typer import _click

from services.cli.common import UserError, month_option, operator_name, run, user_errors


class Lazy(NamedTuple):
    """A top-level command or group defined in another module, imported only when it runs."""
    module: str
    attribute: str  # a typer.Typer (a group) or a command function
    help: str  # its help's first paragraph, as `flows --help` shows it (tests/unit/test_cli_startup.py checks it)
    group: bool = False  # a typer.Typer: listed after main's own groups, as typer orders groups after commands


# The commands whose module costs: `flows --help` lists them from here; `flows NAME ...` imports NAME's module alone.
# Groups keep typer's order: these commands before main's own, these groups after main's own groups.
LAZY: dict[str, Lazy] = {
    "tail": Lazy("services.cli.ops_cli", "tail",
                 "Follow topics live, one line per CloudEvent decoded through the contracts. Never joins a\n"
                 "consumer group, never commits an offset."),
    "lag": Lazy("services.cli.ops_cli", "lag",
                "Per consumer group: its state and members; per partition: committed offset, end offset, lag, last\n"
                "commit time, the member holding it."),
    "access-log": Lazy("services.cli.users", "access_log",
                       "Who viewed or downloaded personal data, in the console or with a `flows` command: when,\n"
                       "what, from where."),
    "audit": Lazy("services.cli.audit", "audit_app", "Audit: signed checkpoints, inclusion proofs, reports.",
                  group=True),
    "dlq": Lazy("services.cli.dlq_cli", "dlq_app", "Dead letters: list, show, redrive (once), discard.", group=True),
    "outbox": Lazy("services.cli.outbox_cli", "outbox_app",
                   "Parked outbox rows: list, show, retry (after the fix), skip (with a reason).", group=True),
    "users": Lazy("services.cli.users", "users_app", "The console's users (local accounts) and API keys.",
                  group=True),
}
APP_SETTINGS: dict[str, Any] = {"no_args_is_help": True, "pretty_exceptions_enable": False, "add_completion": False}


def load_lazy(name: str) -> _click.Command:
    """The real command `name` of LAZY, built as `app.add_typer` / `app.command` built it when main imported it."""
    entry = LAZY[name]
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    holder = typer.Typer(**APP_SETTINGS)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


class LazyGroup(typer.core.TyperGroup):
    """`flows`: main's own commands, and LAZY's as placeholders that carry the short help `flows --help` shows
    (and the names a typo is matched against) until one is run: then its module is imported and the placeholder
    replaced by the real command."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        own = dict(self.commands)
        placeholders: dict[str, _click.Command] = {
            name: typer.core.TyperCommand(name=name, help=entry.help) for name, entry in LAZY.items()}
        self.commands = {**{n: c for n, c in placeholders.items() if not LAZY[n].group},
                         **{n: c for n, c in own.items() if not isinstance(c, typer.core.TyperGroup)},
                         **{n: c for n, c in own.items() if isinstance(c, typer.core.TyperGroup)},
                         **{n: c for n, c in placeholders.items() if LAZY[n].group}}
        self._placeholders = placeholders

    def resolve_command(self, ctx: _click.Context, args: list[str]) -> tuple[str | None, _click.Command | None,
                                                                              list[str]]:
        name = args[0] if args else None
        if name in self._placeholders and self.commands.get(name) is self._placeholders[name]:
            self.commands[name] = load_lazy(name)
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=LazyGroup, help="Regional health-information flows: load, check, format, send, audit.",
                  **APP_SETTINGS)
stack_app = typer.Typer(help="The local platform: Kafka, PostgreSQL and the services.", no_args_is_help=True)
sources_app = typer.Typer(help="Source data (Fonti dati): generate or import.", no_args_is_help=True)
ts_app = typer.Typer(help="The TS gateway: its sealing keys.", no_args_is_help=True)
topics_app = typer.Typer(help="The Kafka topics, provisioned from the topic registry.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(sources_app, name="sources")
app.add_typer(ts_app, name="ts")
app.add_typer(topics_app, name="topics")

FLOW_TYPES = ["FLUSSO_C", "FLUSSO_C_PACC", "FLUSSO_MEF", "FLUSSO_ALPI_TA", "FLUSSO_730"]


# ---------------------------------------------------------------- stack
@stack_app.command("up")
@user_errors
def stack_up(brokers: Annotated[int, typer.Option(help="1, or 3 for the fault tests")] = 1,
             services: Annotated[bool, typer.Option(help="also start the services")] = True,
             observability: Annotated[bool, typer.Option(help="also a Prometheus scraping every service")]
             = False,
             replicas: Annotated[int, typer.Option(min=1, help="processes of each Kafka-consuming service "
                                                   "(loader, formatter, ts-gateway, onboarding)")] = 1) -> None:
    """Start Kafka and PostgreSQL (and the services); reuses .stack/ when it exists."""
    from services.cli import stack

    stack.up(brokers=brokers, with_services=services, observability=observability, replicas=replicas)


@stack_app.command("down")
@user_errors
def stack_down() -> None:
    """Stop the services, Kafka and PostgreSQL; leaves no process behind. Data stays in .stack/."""
    from deploy import localstack
    from services.cli.common import console

    localstack.down(progress=console.print)


@stack_app.command("status")
@user_errors
def stack_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What is running, where."""
    from services.cli import stack

    stack.status(as_json)


STACK_NAME = typer.Argument(help="a service or one replica, as `flows stack status` names it (loader, loader-2, ...)")


@stack_app.command("stop")
@user_errors
def stack_stop(name: Annotated[str, STACK_NAME]) -> None:
    """Stop one service (SIGTERM, SIGKILL after 15 s); it stays stopped until `flows stack start` or `up`."""
    from services.cli import stack

    stack.stop(name)


@stack_app.command("start")
@user_errors
def stack_start(name: Annotated[str, STACK_NAME]) -> None:
    """Start one stopped service again (its health port kept); one that runs is left alone."""
    from services.cli import stack

    stack.start(name)


@stack_app.command("restart")
@user_errors
def stack_restart(name: Annotated[str, STACK_NAME]) -> None:
    """Stop one service, start it again with the settings `up` would give it now; prints its new pid."""
    from services.cli import stack

    stack.restart(name)


# ---------------------------------------------------------------- topics
@topics_app.command("apply")
@user_errors
def topics_apply(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Create every registry topic and its .dlq twin (partitions: FLOWS_TOPIC_PARTITIONS, default 6;
    replication min(3, brokers)); grow and reconfigure existing ones; never delete. Idempotent."""
    from services.cli import topics

    run(topics.apply(as_json))


@topics_app.command("list")
@user_errors
def topics_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every registry topic as the cluster has it, and what differs from the registry."""
    from services.cli import topics

    run(topics.show(as_json))


# ---------------------------------------------------------------- sources
@sources_app.command("generate")
@user_errors
def sources_generate(
        ente: Annotated[str, typer.Option(help="entity code, e.g. 201")],
        month: Annotated[str, typer.Option(help="YYYY-MM", callback=month_option)],
        services: Annotated[int, typer.Option(help="number of delivered services (1 or more)", min=1)] = 1000,
        bad: Annotated[int, typer.Option(help="plant this many known bad records", min=0)] = 0,
        seed: Annotated[int, typer.Option()] = 1,
        out: Annotated[Path | None, typer.Option(help="write CSV files here instead of publishing")] = None) -> None:
    """Generate a month of realistic source data and publish it as the CUP would (or write CSVs)."""
    from services.cli import sources

    run(sources.generate(ente, month, services, bad, seed, out))


@sources_app.command("import")
@user_errors
def sources_import(
        path: Annotated[Path, typer.Argument(help="CSV file, header = field names")],
        kind: Annotated[str, typer.Option(help="delivered-service, payment-document or intramoenia-booking")]
        = "delivered-service") -> None:
    """Bulk-import a CSV of source records (backfills); bad rows are reported by line and field."""
    from services.cli import sources

    run(sources.import_csv(path, kind))


# ---------------------------------------------------------------- instances
@app.command()
@user_errors
def load(flow_type: Annotated[str, typer.Option("--type", help=" | ".join(FLOW_TYPES))],
         ente: Annotated[str, typer.Option(help="entity code, e.g. 201")],
         start: Annotated[datetime, typer.Option("--from", formats=["%Y-%m-%d"], help="period start")],
         end: Annotated[datetime, typer.Option("--to", formats=["%Y-%m-%d"], help="period end")],
         version: Annotated[str | None, typer.Option(help="layout version (default: the one in force for the "
                                                          "period, the latest not after its year)")] = None,
         at: Annotated[str | None, typer.Option(help="schedule at YYYY-MM-DDTHH:MM, Italian time (as the "
                                                     "console's Avvio pianificato)", callback=time_option)] = None,
         wait: Annotated[bool, typer.Option(help="show progress until Checked or Failed loading")] = True) -> None:
    """Load a flow for an entity and a period: creates an instance."""
    if flow_type not in FLOW_TYPES:
        raise typer.BadParameter(f"{flow_type!r} is not one of {', '.join(FLOW_TYPES)}", param_hint="--type")
    from contracts.deadlines import ITALY
    from services.cli import instances as inst

    # A time without a zone is Italy's, whatever the host's zone (UTC in the containers): as the console reads it.
    when = datetime.fromisoformat(at) if at else None
    scheduled = (when if when.tzinfo else when.replace(tzinfo=ITALY)) if when else None
    # A period not over when the load would run (now, or --at) is refused before anything is sent: the loader's
    # own rule (it refuses such a command too), not a copy of it.
    from services.loader.load_rules import period_not_over

    if end >= start and (not_over := period_not_over(end.date(), scheduled)) is not None:
        raise UserError(f"--to {end.date()}: {not_over.reason()}")
    from services.formatter.layouts import version_in_force

    layout = version or version_in_force(flow_type, start.date())
    run(inst.load(flow_type, ente, start.date(), end.date(), layout, scheduled, wait, operator_name()))


def time_option(value: str | None) -> str | None:
    """Typer callback of `--at`: an ISO time (a zone optional), or a usage error naming the value and the form. The
    datetime type answered pydantic's words alone ("input is too short", "unexpected extra characters at the end of
    the input" for 25:00), neither the value nor the form wanted."""
    if value is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a time: give YYYY-MM-DDTHH:MM, Italian time, "
                                 "e.g. 2026-11-02T06:00") from None
    return value


@app.command()
@user_errors
def instances(flow_type: Annotated[str | None, typer.Option("--type", help=" | ".join(FLOW_TYPES))] = None,
              created_from: Annotated[datetime | None, typer.Option("--from", formats=["%Y-%m-%d"],
                                                                    help="created on or after")] = None,
              state: Annotated[str | None, typer.Option(help="e.g. Checked, 'Failed loading'")] = None) -> None:
    """Search instances by type, creation date from, state."""
    # An unknown type or state is refused naming the known ones: searched as given, it matched nothing and the
    # operator read "no instance matches", as if there were none of it.
    if flow_type is not None and flow_type not in FLOW_TYPES:
        raise typer.BadParameter(f"{flow_type!r} is not one of {', '.join(FLOW_TYPES)}", param_hint="--type")
    if state is not None:
        from contracts.states import InstanceState  # the event models (~0.25 s): only when a state is given
    if state is not None and state.lower() not in {s.value.lower() for s in InstanceState}:
        raise typer.BadParameter(f"{state!r} is not a state: one of {', '.join(s.value for s in InstanceState)}",
                                 param_hint="--state")
    from services.cli import instances as inst

    run(inst.list_instances(flow_type, created_from.date() if created_from else None, state))


@app.command()
@user_errors
def show(instance: int) -> None:
    """State and every event of an instance, with time and actor."""
    from services.cli import instances as inst

    run(inst.show(instance))


@app.command("format")
@user_errors
def format_(instance: int, wait: Annotated[bool, typer.Option()] = True) -> None:
    """Format a Checked instance into its files."""
    from services.cli import instances as inst

    run(inst.format_instance(instance, wait, operator_name()))


@app.command()
@user_errors
def files(instance: int,
          view: Annotated[str | None, typer.Option(help="show this file as a table of named fields")] = None,
          limit: Annotated[int, typer.Option()] = 20, offset: Annotated[int, typer.Option()] = 0) -> None:
    """List the files of an instance, or view one as a table."""
    from services.cli import instances as inst

    if view:
        run(inst.view_file(instance, view, limit, offset))
    else:
        run(inst.list_files(instance))


@app.command()
@user_errors
def export(instance: int, out: Annotated[Path, typer.Option(help="folder")]) -> None:
    """Write the files of an instance to a folder."""
    from services.cli import instances as inst

    run(inst.export(instance, out))


@app.command()
@user_errors
def feedback(instance: int, out: Annotated[Path | None, typer.Option(help="write the CSV here")] = None,
             limit: Annotated[int, typer.Option()] = 50) -> None:
    """The feedback of an instance: one line per problem (record, field, code, message)."""
    from services.cli import instances as inst

    run(inst.feedback(instance, out, limit))


@app.command()
@user_errors
def delete(instance: int, reason: Annotated[str | None, typer.Option()] = None) -> None:
    """Cancella: mark an instance deleted (its history is kept)."""
    from services.cli import instances as inst

    run(inst.delete(instance, operator_name(), reason))


@app.command("send-730")
@user_errors
def send_730(instance: int,
             transmission_date: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"])] = None,
             wait: Annotated[bool, typer.Option()] = True) -> None:
    """Send a Formatted 730 instance to Sistema TS (asks for the credentials, hidden, then the
    transmission date: today sends now, a later day is sent by the gateway on that day)."""
    from contracts.deadlines import italian_today
    from services.cli import ts
    from services.cli.common import console

    def confirmed(warnings: list[str]) -> None:
        for warning in warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        if warnings and not typer.confirm("Send it anyway?", default=False):
            console.print("nothing sent")
            raise typer.Exit(1)

    # refuse before asking for any credential; warn of sending on the day given, else today (the prompt's default)
    checked_on = transmission_date.date() if transmission_date is not None else italian_today()
    confirmed(run(ts.check_sendable(instance, checked_on)))
    cf = typer.prompt("C.F. proprietario")
    user = typer.prompt("TS user")
    password = typer.prompt("TS password", hide_input=True)
    pincode = typer.prompt("Pincode", hide_input=True)
    if transmission_date is None:
        answer = typer.prompt("Transmission date (YYYY-MM-DD)", default=italian_today().isoformat())
        try:
            when = date.fromisoformat(answer.strip())
        except ValueError:
            raise UserError(f"transmission date {answer!r} is not a date as YYYY-MM-DD") from None
    else:
        when = transmission_date.date()
    today = italian_today()
    if when < today:
        raise UserError(f"transmission date {when} is in the past: give today ({today}, in Italy) or a later day")
    if when != checked_on:  # another day typed: its payment years asked again
        confirmed([w for w in [run(ts.payment_year_warning(instance, when))] if w is not None])
    run(ts.send_730(instance, cf, user, password, pincode, when, operator_name(), wait))


@ts_app.command("rotate-key")
@user_errors
def ts_rotate_key() -> None:
    """New key pair for sealing TS credentials (run on the gateway's host): new seals use it; boxes
    sealed to the previous key still open until their submissions end, then its private key is deleted."""
    from services.cli import ts

    ts.rotate_key()


@app.command()
@user_errors
def deadlines(ente: Annotated[str | None, typer.Option()] = None,
              month: Annotated[str | None, typer.Option(help="YYYY-MM", callback=month_option)] = None) -> None:
    """Due dates per flow type and entity, and whether an instance covers each."""
    from services.cli import deadlines as dl
    from services.loader.catalogue import unknown_ente_reason

    # An entity the platform does not know (a typo) is refused, as `flows load` refuses it: it used to get a table of
    # deadlines 'due within 7 days' for an entity that has none.
    if ente is not None and (reason := unknown_ente_reason(ente)):
        raise typer.BadParameter(reason, param_hint="--ente")
    run(dl.show(ente, month))


@app.command()
@user_errors
def replay(instance: Annotated[int | None, typer.Argument()] = None,
           all_: Annotated[bool, typer.Option("--all")] = False,
           verify: Annotated[bool, typer.Option(help="verify every hash chain")] = False,
           chains_only: Annotated[bool, typer.Option(
               "--chains-only", help="verify the hash chains and the signed checkpoint, no rebuild: read-only, so it "
                                     "also runs on a read-only replica")] = False) -> None:
    """Replay streams, verify hash chains, rebuild the read models and report differences."""
    from services.cli import replay as rp

    if instance is None and not all_:
        raise typer.BadParameter("give an instance number or --all")
    ok = run(rp.replay(instance, verify, chains_only))
    if not ok:
        raise typer.Exit(2)


@app.command()
@user_errors
def demo(ente: Annotated[str, typer.Option()] = "201",
         month: Annotated[str | None, typer.Option(help="YYYY-MM; default: last month", callback=month_option)] = None,
         services: Annotated[int, typer.Option()] = 3000) -> None:
    """Set up, start everything, generate a month, walk a Flusso C and a 730 to Formatted."""
    from services.cli.demo import run_demo

    run_demo(ente, month, services)


def _json(data: object) -> str:
    return json.dumps(data, indent=2, default=str)


if __name__ == "__main__":
    app()
