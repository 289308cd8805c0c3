"""``python -m deploy.localstack up|down|status [--brokers 3]``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from deploy.localstack.lifecycle import down, status, up


def main(argv: list[str] | None = None) -> int:
    """``python -m deploy.localstack up|down|status [--brokers 3]`` - handy before the real CLI exists."""
    parser = argparse.ArgumentParser(prog="python -m deploy.localstack")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--brokers", type=int, default=1, choices=[1, 3])
    args = parser.parse_args(argv)
    if args.command == "up":
        result = up(brokers=args.brokers)
        print(json.dumps({k: str(v) for k, v in asdict(result).items()}, indent=2))
    elif args.command == "down":
        down()
    else:
        print(json.dumps(status(), indent=2))
    return 0

