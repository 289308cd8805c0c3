"""`flows stack up --observability`: a real Prometheus (Debian's `prometheus` package) scraping every
service's /metrics, with deploy/observability/alerts.yml loaded.

Ports: Prometheus listens on FLOWS_OBSERVABILITY_PORT_BASE (default 19500); each platform process serves
/healthz, /readyz and /metrics on a port of its own above it (services.cli.stack.observability_ports: a service's
first process keeps its port whatever the replicas).

The targets are the stack's processes as recorded (name -> health port). Whenever `up` configures Prometheus, a
running one is told to reload (its /-/reload, --web.enable-lifecycle) and `up` checks that the configuration it
then runs is the one written: a Prometheus left on its old configuration scrapes ports that other processes hold
after a change of replicas, every target still up, under the wrong job names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy import localstack
from services.runtime.settings import REPO_ROOT

RULES = REPO_ROOT / "deploy" / "observability" / "alerts.yml"


def port_base() -> int:
    return int(os.environ.get("FLOWS_OBSERVABILITY_PORT_BASE", "19500"))


def health_ports(names: list[str]) -> dict[str, int]:
    """Ports base + 1, + 2 ... for `names` in order (a test's own few services; the stack's: observability_ports)."""
    base = port_base()
    return {name: base + 1 + i for i, name in enumerate(names)}


def prometheus_config(targets: dict[str, int], rules: Path = RULES, interval_s: int = 5) -> str:
    """prometheus.yml (JSON is YAML) scraping each named target's /metrics on 127.0.0.1."""
    return json.dumps({
        "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
        "rule_files": [str(rules)],
        # honor_labels: a figure that names its own service keeps it (flows_work_interrupted_longest_seconds{service=
        # "ts_gateway"}, which WorkInterrupted groups and words by); the target's `service` (the process: loader-2,
        # ts-gateway) labels the others. Without it Prometheus renamed the figure's label to exported_service, so
        # the alert named a replica, and its words for the gateway never matched.
        "scrape_configs": [{"job_name": name, "metrics_path": "/metrics", "honor_labels": True,
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}}]}
                           for name, port in sorted(targets.items())],
    }, indent=2) + "\n"


def start_prometheus(state_dir: Path, targets: dict[str, int], port: int | None = None,
                     timeout: float = 60.0) -> tuple[int, str]:
    """Starts Prometheus as a stack service scraping `targets`, or has the running one reload its configuration;
    returns (pid, its URL) once it runs with exactly these targets (StackError if it does not within `timeout`)."""
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
        f"--web.listen-address=127.0.0.1:{listen}", "--storage.tsdb.retention.time=7d",
        "--web.enable-lifecycle"], {})
    url = f"http://127.0.0.1:{listen}"
    reload(url, targets, timeout)
    return pid, url


def reload(url: str, targets: dict[str, int], timeout: float = 60.0) -> None:
    """Waits for the Prometheus at `url` to answer, has it reload its configuration file, and checks that it then
    scrapes exactly `targets` (job name -> port on 127.0.0.1): StackError naming what it runs otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _request(f"{url}/-/ready")
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise localstack.StackError(f"Prometheus at {url} does not answer: {exc}") from exc
            time.sleep(0.3)
    try:
        _request(f"{url}/-/reload", method="POST")
    except urllib.error.HTTPError as exc:  # a configuration it refuses: it keeps the old one, and says why
        raise localstack.StackError(f"Prometheus at {url} refused its configuration: "
                                    f"{exc.read().decode(errors='replace')}") from exc
    loaded = loaded_targets(url)
    if loaded != targets:
        raise localstack.StackError(f"Prometheus at {url} scrapes {loaded} after its reload, not {targets}")


def loaded_targets(url: str) -> dict[str, int]:
    """The jobs of the configuration the Prometheus at `url` runs (its /api/v1/status/config): job -> port."""
    text = json.loads(_request(f"{url}/api/v1/status/config"))["data"]["yaml"]
    jobs: dict[str, int] = {}
    for chunk in text.split("\n- job_name: ")[1:]:
        job = chunk.split("\n", 1)[0].strip()
        for port in re.findall(r"^\s+- 127\.0\.0\.1:(\d+)$", chunk, re.M):
            jobs[job] = int(port)
    return jobs


def _request(url: str, method: str = "GET") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
        return bytes(response.read())
