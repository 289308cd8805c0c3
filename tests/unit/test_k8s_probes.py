"""Every service Deployment in deploy/k8s probes the health endpoints its process serves."""

from __future__ import annotations

import re
from pathlib import Path

from services.cli.stack import SERVICES

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "services.yaml"


def test_every_service_deployment_has_liveness_and_readiness_probes_on_the_health_port():
    documents = MANIFEST.read_text().split("\n---\n")
    deployments = {re.search(r"metadata: \{ name: ([\w-]+)", d).group(1): d  # type: ignore[union-attr]
                   for d in documents if "kind: Deployment" in d}
    wanted = {name for name in SERVICES if name != "ts-simulator"}  # the simulator stands in for Sistema TS
    assert wanted <= set(deployments), wanted - set(deployments)
    config = next(d for d in documents if "kind: ConfigMap" in d)
    assert 'FLOWS_HEALTH_PORT: "8080"' in config and "FLOWS_HEALTH_HOST: 0.0.0.0" in config
    for name, doc in deployments.items():
        assert "containerPort: 8080" in doc, name
        assert re.search(r"livenessProbe: \{ httpGet: \{ path: /healthz, port: health \}", doc), name
        assert re.search(r"readinessProbe: \{ httpGet: \{ path: /readyz, port: health \}", doc), name
