"""Every service Deployment in deploy/k8s probes the health endpoints its process serves."""

from __future__ import annotations

import re
from pathlib import Path

from services.cli.stack import SERVICES

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
MANIFEST = K8S / "services.yaml"


def test_every_service_deployment_has_liveness_and_readiness_probes_on_the_health_port():
    documents = MANIFEST.read_text().split("\n---\n")
    deployments = {re.search(r"metadata: \{ name: ([\w-]+)", d).group(1): d  # type: ignore[union-attr]
                   for d in documents if "kind: Deployment" in d}
    wanted = {name for name in SERVICES if name not in ("ts-simulator", "console")}  # console: below
    assert wanted <= set(deployments), wanted - set(deployments)
    config = next(d for d in documents if "kind: ConfigMap" in d)
    assert 'FLOWS_HEALTH_PORT: "8080"' in config and "FLOWS_HEALTH_HOST: 0.0.0.0" in config
    for name, doc in deployments.items():
        assert "containerPort: 8080" in doc, name
        assert re.search(r"livenessProbe: \{ httpGet: \{ path: /healthz, port: health \}", doc), name
        assert re.search(r"readinessProbe: \{ httpGet: \{ path: /readyz, port: health \}", doc), name


def test_the_console_deployment_probes_its_own_health_endpoints():
    console = next(d for d in MANIFEST.read_text().split("\n---\n")
                   if "kind: Deployment" in d and "name: console" in d)
    assert re.search(r"livenessProbe:\s*\{?\s*httpGet:\s*\{?\s*path: /healthz", console), console
    assert re.search(r"readinessProbe:\s*\{?\s*httpGet:\s*\{?\s*path: /readyz", console), console
