"""`python -m simulators.sistema_ts --cert-out DIR [--port P]`: run the TS simulator.

The port and host default to the settings (FLOWS_TS_SIM_PORT, FLOWS_TS_SIM_HOST; see settings.py).

The account it accepts comes from the environment (TS_SIM_USER, TS_SIM_PASSWORD, TS_SIM_PINCODE,
TS_SIM_CF_PROPRIETARIO); the defaults are the public test credentials style of Sistema TS.
The simulator keeps only salted hashes of them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from simulators.sistema_ts.rules import SimUser
from simulators.sistema_ts.settings import SimulatorSettings
from simulators.sistema_ts.simulator import TsSimulator


def _account_from_env() -> SimUser:
    return SimUser.from_clear(
        os.environ.get("TS_SIM_USER", "PROVAX00X00X000Y"),
        os.environ.get("TS_SIM_PASSWORD", "Salve123"),
        os.environ.get("TS_SIM_PINCODE", "1234567890"),
        os.environ.get("TS_SIM_CF_PROPRIETARIO", "PROVAX00X00X000Y"),
    )


def _keypair(directory: Path) -> tuple[bytes, bytes]:
    """The simulator's SanitelCF pair, kept across restarts: files already encrypted under its
    certificate (formatted 730 instances) must stay readable by the next run."""
    from services.runtime.sanitel import make_test_certificate

    cert, key = directory / "sanitel-cf.pem", directory / "sanitel-cf.key"
    if not (cert.exists() and key.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = make_test_certificate("SanitelCF SIMULATOR")
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
        cert.write_bytes(cert_pem)
    return cert.read_bytes(), key.read_bytes()


async def _serve(host: str, port: int, cert_out: Path) -> None:
    cert_pem, key_pem = _keypair(cert_out)
    simulator = TsSimulator([_account_from_env()], cert_pem=cert_pem, key_pem=key_pem)
    cert_path = simulator.write_certificate(cert_out)
    base_url = await simulator.start(host, port)
    print(f"TS simulator on {base_url}; SanitelCF certificate at {cert_path}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.sistema_ts", description=__doc__)
    settings = SimulatorSettings()
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--cert-out", type=Path, required=True, help="directory for sanitel-cf.pem")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.port, args.cert_out))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
