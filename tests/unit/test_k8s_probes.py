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


def _deployments() -> dict[str, str]:
    """Every Deployment of the manifests (deploy/k8s/*.yaml), by name."""
    documents = [d for path in sorted(K8S.glob("*.yaml")) for d in path.read_text().split("\n---\n")]
    return {re.search(r"metadata: \{ name: ([\w-]+)", d).group(1): d  # type: ignore[union-attr]
            for d in documents if "kind: Deployment" in d}


def _served_health_port(doc: str) -> int:
    """The port the container serves /healthz, /readyz and /metrics on: its own FLOWS_HEALTH_PORT, else the
    ConfigMap's."""
    own = re.search(r'- \{ name: FLOWS_HEALTH_PORT, value: "(\d+)" \}', doc)
    config = next(d for d in MANIFEST.read_text().split("\n---\n") if "kind: ConfigMap" in d)
    shared = re.search(r'FLOWS_HEALTH_PORT: "(\d+)"', config)
    assert shared, config
    return int((own or shared).group(1))


def test_every_deployment_serving_metrics_is_annotated_for_prometheus_with_its_metrics_port_and_path():
    """Annotation-based discovery scrapes only the pods that say where: a Deployment without them (the audit service
    computes every figure the ops alerts read) is never scraped and its alerts never fire."""
    deployments = _deployments()
    assert {name for name in SERVICES if name != "ts-simulator"} <= set(deployments)
    for name, doc in deployments.items():
        ports = {int(p) for p in re.findall(r"containerPort: (\d+)", doc)}
        if not re.search(r"name: (health|metrics), containerPort:", doc):
            continue
        template = doc[doc.index("  template:"):doc.index("    spec:")]
        annotations = re.search(r"annotations: \{ (.*) \}", template)
        assert annotations, f"{name}: no annotations on its pod template"
        found = dict(re.findall(r'([\w./-]+): "?([^",]+)"?', annotations.group(1)))
        served = _served_health_port(doc)
        assert found.get("prometheus.io/scrape") == "true", (name, found)
        assert found.get("prometheus.io/path") == "/metrics", (name, found)
        assert found.get("prometheus.io/port") == str(served), (name, found, served)
        assert served in ports, f"{name}: serves /metrics on {served}, not a container port ({ports})"
    console = deployments["console"]
    assert 'FLOWS_CONSOLE_PORT, value: "8080"' in console and _served_health_port(console) != 8080, \
        "the console serves its health port only when it is not its web port"
