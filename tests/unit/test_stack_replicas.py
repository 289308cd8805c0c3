"""`flows stack up --replicas N`: which processes it starts, what each is told, and what a scale-down removes.
(The replicas at work on the real stack: tests/integration/test_replicas.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from services.cli import stack

K8S_SERVICES = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "services.yaml"


def test_one_replica_keeps_the_names_a_stack_always_had() -> None:
    assert [name for _, name in stack.processes(1)] == list(stack.SERVICES)


def test_n_replicas_of_every_consumer_and_one_of_the_rest() -> None:
    names = [name for _, name in stack.processes(3)]
    for service in stack.REPLICATED:
        assert [n for n in names if n == service or n.startswith(f"{service}-")] == \
            [service, f"{service}-2", f"{service}-3"]
    for single in ("ts-simulator", "audit", "console"):
        assert names.count(single) == 1 and not [n for n in names if n.startswith(f"{single}-")]
    assert len(names) == len(set(names)) == len(stack.SERVICES) + 2 * len(stack.REPLICATED)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names)  # a valid stack service name each


def test_every_replica_gets_its_own_health_port() -> None:
    ports = stack.observability_ports(2)
    assert "ts-simulator" not in ports
    assert {"loader", "loader-2", "formatter-2", "ts-gateway-2", "onboarding-2", "audit", "console"} <= set(ports)
    assert len(set(ports.values())) == len(ports)


def test_a_process_keeps_its_health_port_whatever_the_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scaling moves no port: numbered in order, audit's moved from base + 5 to base + 9 with 2 replicas, and a
    Prometheus still on its old configuration scraped the TS gateway under the job `audit`."""
    monkeypatch.setenv("FLOWS_OBSERVABILITY_PORT_BASE", "19500")
    one, two, three = (stack.observability_ports(n) for n in (1, 2, 3))
    assert one == {"loader": 19501, "formatter": 19502, "ts-gateway": 19503, "onboarding": 19504, "audit": 19505,
                   "console": 19506}
    assert {name: two[name] for name in one} == one == {name: three[name] for name in one}
    assert {name: three[name] for name in two} == two
    assert len(set(three.values())) == len(three) == 6 + 2 * len(stack.REPLICATED)
    assert min(three.values()) == 19501 and max(three.values()) == 19500 + len(three)  # no gap, Prometheus's own


def test_prometheus_scrapes_every_kept_process_with_a_health_port() -> None:
    services: dict[str, dict[str, Any]] = {
        "loader": {"health_port": 19501, "supervisor_pid": 10, "running": True},
        "formatter": {"health_port": 19502, "supervisor_pid": 11, "running": False},  # being restarted
        "audit": {"health_port": 19505, "supervisor_pid": None, "running": False},  # stopped by `down`
        "ts-simulator": {"supervisor_pid": 12, "running": True},
        "prometheus": {"supervisor_pid": 13, "running": True}}
    assert stack.prometheus_targets(services) == {"loader": 19501, "formatter": 19502}


def test_a_scale_down_removes_only_the_replicas_past_n() -> None:
    running = ["ts-simulator", "loader", "loader-2", "loader-3", "ts-gateway", "ts-gateway-3", "formatter-2",
               "audit", "console", "prometheus", "probe-sim-12"]
    assert stack.surplus_replicas(running, 2) == ["loader-3", "ts-gateway-3"]
    assert stack.surplus_replicas(running, 1) == ["loader-2", "loader-3", "ts-gateway-3", "formatter-2"]
    assert stack.surplus_replicas(running, 3) == []


def test_replicas_below_one_are_refused() -> None:
    with pytest.raises(ValueError):
        stack.processes(0)


def test_every_replicated_kubernetes_deployment_names_its_pod_as_the_replica() -> None:
    documents = K8S_SERVICES.read_text().split("\n---\n")
    for service in stack.REPLICATED:
        doc = next(d for d in documents if "kind: Deployment" in d and f"metadata: {{ name: {service}," in d)
        assert re.search(r"- name: FLOWS_REPLICA.*\n\s+valueFrom: \{ fieldRef: \{ fieldPath: metadata.name \} \}",
                         doc), service
