"""`flows send-730`: seal the operator's TS credentials to the gateway's public key and ask the
gateway to send a Formatted 730 instance. The clear values never leave this process except inside
the sealed box; they are not logged, printed or stored.

`flows ts rotate-key`: a new gateway key pair (services/ts_gateway/keys.py); later seals use it.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from contracts import flows
from contracts.deadlines import italian_today
from contracts.states import IllegalTransition, InstanceState, target_of
from services.cli.common import UserError, console, database, settings
from services.cli.instances import _instance_row, _wait_for_state, print_outcome, stream_version
from services.runtime.commands import send_command
from services.ts_gateway import payment_year
from services.ts_gateway.keys import RETIRED_DIR, RETIRED_KEY_GRACE_S, KeysError, rotate_gateway_key
from services.ts_gateway.overlap import sent_already, warning_en
from services.ts_gateway.sealing import PUBLIC_KEY_FILE, Credentials, SealError, key_id, seal, sealed_key_id

FINAL_TS = {InstanceState.CONFIRMED.value, InstanceState.CONFIRMED_WITH_ERRORS.value, InstanceState.REJECTED.value}


async def _ensure_sendable(pool: Any, instance: int, public_key: Path) -> None:
    if not public_key.exists():
        raise UserError(f"the gateway's public key is not at {public_key}: is the TS gateway running?")
    row = await _instance_row(pool, instance)
    if row["flow_type"] != "FLUSSO_730":
        raise UserError(f"instance {instance} is {row['flow_type']}: only 730 instances are sent to Sistema TS")
    try:
        target_of(flows.TYPE_OF[flows.TsSubmissionRequested], {}, InstanceState(row["state"]))
    except IllegalTransition as exc:
        raise UserError(f"instance {instance} is {row['state']}: only Formatted (or Rejected, to resend) "
                        "instances can be sent") from exc


async def check_sendable(instance: int, on: date) -> list[str]:
    """Before the operator types any credential: is this an instance the gateway can send? What to warn of first,
    sent on the day `on`: documents of it Sistema TS already has from another instance (services.ts_gateway.overlap),
    documents paid in a year TS no longer takes on that day (services.ts_gateway.payment_year); [] when nothing."""
    cfg = settings()
    async with database(cfg) as pool:
        await _ensure_sendable(pool, instance, cfg.keys_dir / PUBLIC_KEY_FILE)
        said = [warning_en(instance, await sent_already(pool, instance)),
                payment_year.warning_en(instance, await payment_year.payment_years(pool, instance), on,
                                        italian_today())]
        return [w for w in said if w is not None]


async def payment_year_warning(instance: int, on: date) -> str | None:
    """services.ts_gateway.payment_year's warning of sending `instance` on `on` (a transmission date typed after
    check_sendable asked of another day), None when TS takes every document that day."""
    async with database(settings()) as pool:
        return payment_year.warning_en(instance, await payment_year.payment_years(pool, instance), on,
                                       italian_today())


async def send_sealed_730(bootstrap: str, pool: Any, keys_dir: Path, instance: int, sealed: str, when: date,
                          operator: str) -> int:
    """Asks the gateway to send `instance` with credentials already sealed (by this CLI, or by the
    console's browser) to the gateway's current key; returns the stream version before the request."""
    public_key = keys_dir / PUBLIC_KEY_FILE
    await _ensure_sendable(pool, instance, public_key)
    try:
        sealed_to = sealed_key_id(sealed)
    except SealError as exc:
        raise UserError(f"the sealed credentials of instance {instance} are not a TS gateway box: {exc}") from exc
    if sealed_to != key_id(public_key.read_bytes()):
        raise UserError(f"the credentials were sealed to key {sealed_to}, not to the gateway's current key: "
                        "seal them again")
    before = await stream_version(pool, instance)
    request = flows.TsSubmissionRequested(instance=instance, sealed_credentials=sealed, transmission_date=when,
                                          requested_by=operator, seen_version=before)
    await send_command(bootstrap, flows.TYPE_OF[flows.TsSubmissionRequested], request, key=str(instance))
    return before


async def send_730(instance: int, cf: str, user: str, password: str, pincode: str, when: date, operator: str,
                   wait: bool, timeout: float = 600) -> None:
    cfg = settings()
    public_key = cfg.keys_dir / PUBLIC_KEY_FILE
    async with database(cfg) as pool:
        await _ensure_sendable(pool, instance, public_key)  # again: it may have changed during the prompts
        public_pem = public_key.read_bytes()
        sealed = seal(public_pem, Credentials(user=user, password=password, pincode=pincode,
                                              cf_proprietario=cf.strip().upper()))
        before = await send_sealed_730(cfg.kafka_bootstrap, pool, cfg.keys_dir, instance, sealed, when, operator)
        console.print(f"instance {instance} handed to the TS gateway (credentials sealed to key {key_id(public_pem)})")
        if when > italian_today():
            console.print(f"  the gateway sends it on {when}; follow it with `flows show {instance}`")
            return
        if wait:
            done = await _wait_for_state(pool, instance, FINAL_TS, "Sistema TS", timeout, ts_outcome_after=before)
            print_outcome(done)
            if done["summary"]:
                console.print(f"  {done['summary']}")


def rotate_key() -> None:
    """A new gateway key pair; the previous private key stays until the submissions sealed to it end."""
    keys_dir = settings().keys_dir
    try:
        rotation = rotate_gateway_key(keys_dir)
    except KeysError as exc:
        raise UserError(str(exc)) from exc
    console.print(f"gateway key rotated: new seals use key {rotation.current} ({keys_dir / PUBLIC_KEY_FILE})")
    console.print(f"  the previous key {rotation.previous} is kept in {keys_dir / RETIRED_DIR} until the "
                  f"submissions sealed to it end (and at least {RETIRED_KEY_GRACE_S / 3600:g} h, for commands "
                  "still on Kafka); then the TS gateway deletes it")
