"""`flows stack up --observability`: a real Prometheus (Debian's `prometheus` package) scraping every
service's /metrics, with deploy/observability/alerts.yml loaded.

Ports: Prometheus listens on FLOWS_OBSERVABILITY_PORT_BASE (default 19500); service number i
serves /healthz, /readyz and /metrics on base + 1 + i.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from deploy import localstack
from services.runtime.settings import REPO_ROOT

RULES = REPO_ROOT / "deploy" / "observability" / "alerts.yml"


def port_base() -> int:
    return int(os.environ.get("FLOWS_OBSERVABILITY_PORT_BASE", "19500"))


def health_ports(names: list[str]) -> dict[str, int]:
    base = port_base()
    return {name: base + 1 + i for i, name in enumerate(names)}


def prometheus_config(targets: dict[str, int], rules: Path = RULES, interval_s: int = 5) -> str:
    """prometheus.yml (JSON is YAML) scraping each named target's /metrics on 127.0.0.1."""
    return json.dumps({
        "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": name, "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}}]}
                           for name, port in sorted(targets.items())],
    }, indent=2) + "\n"


def start_prometheus(state_dir: Path, targets: dict[str, int], port: int | None = None) -> tuple[int, str]:
    """Starts (or keeps) Prometheus as a stack service; returns (pid, its URL)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise ValueError("Prometheus is not installed: apt-get install -y prometheus (./run does it)")
    folder = state_dir / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(prometheus_config(targets))
    listen = port or port_base()
    pid = localstack.start_service("prometheus", [
        binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{listen}", "--storage.tsdb.retention.time=7d"], {})
    return pid, f"http://127.0.0.1:{listen}"
