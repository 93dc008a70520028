"""The rendered Kubernetes manifests keep the properties the deployment relies on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GPU_SERVICES = {"imagegen": 50052, "recon-triposr": 50053, "render": 50054}
FAMILY_IMAGES = {"recon-trellis": 50053, "recon-hunyuan3d": 50053, "recon-sam3d": 50053, "recon-xcube": 50053}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")


def render(overlay: str) -> dict[tuple[str, str], dict]:
    text = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy/k8s/overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


def test_gpu_cluster_overlay() -> None:
    objects = render("gpu-cluster")
    gateway_env = {
        e["name"]: e.get("value")
        for e in objects[("Deployment", "gateway")]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    routes = dict(r.split("=", 1) for r in gateway_env["THREEGEN_GATEWAY_RECON_ROUTES"].split(","))
    assert routes == {f: f"dns:///recon-{f}:50053" for f in ("trellis", "hunyuan3d", "sam3d", "xcube")}
    for name, port in {**GPU_SERVICES, **FAMILY_IMAGES}.items():
        pod = objects[("Deployment", name)]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["nodeSelector"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port
        assert (
            container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 600
        )
        assert objects[("Service", name)]["spec"]["clusterIP"] == "None"  # headless, for round_robin
        assert objects[("PodDisruptionBudget", name)]["spec"]["maxUnavailable"] == 1
        metric = objects[("HorizontalPodAutoscaler", name)]["spec"]["metrics"][0]["pods"]["metric"]["name"]
        assert metric == "threegen_requests_queued"
    for name in FAMILY_IMAGES:  # one shape (recon-family/), each deployment serving its own family
        container = objects[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        family = name.removeprefix("recon-")
        assert env["THREEGEN_RECON_FAMILIES"] == env["THREEGEN_RECON_DEFAULT_FAMILY"] == family
        assert container["image"] == f"registry.example.com/threegen/{name}:0.1.0"
        assert objects[("Service", name)]["spec"]["selector"] == {"app.kubernetes.io/name": name}
    gateway_env = {
        e["name"]: e.get("value")
        for e in objects[("Deployment", "gateway")]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert gateway_env["THREEGEN_GATEWAY_RECON_ADDRESS"].startswith("dns:///")
    policy = objects[("NetworkPolicy", "gpu-services-from-gateway-only")]["spec"]
    assert policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "gateway"
    }
    assert objects[("PersistentVolumeClaim", "threegen-models")]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_local_overlay_runs_without_gpus_on_tiny_weights() -> None:
    objects = render("local")
    for name in GPU_SERVICES:
        pod = objects[("Deployment", name)]["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
        assert "nodeSelector" not in pod and "tolerations" not in pod
    init = objects[("Deployment", "imagegen")]["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["python", "-m", "threegen.tiny", "--dir", "/models/tiny"]
