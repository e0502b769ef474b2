"""Helm chart: lint --strict, render, validate every object against the Kubernetes schemas."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import K8S_VERSION

CHART = Path(__file__).resolve().parents[2] / "charts" / "sparsify-operator"
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "KopfPeering", "ClusterKopfPeering"}
VARIANTS = {
    "cluster-wide": [],
    "namespaced": ["--set", "watchNamespaces={ml,research}"],
    "monitoring": [
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "storage.checkSecrets=false",
        "--set",
        "peering.enabled=false",
    ],
}


def _helm(helm: str, *args: str) -> str:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def _render(helm: str, *extra: str) -> list[dict]:
    out = _helm(
        helm, "template", "sparsify", str(CHART), "--namespace", "sparsify-system", "--include-crds", *extra
    )
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict(helm, variant):
    _helm(helm, "lint", "--strict", str(CHART), *VARIANTS[variant])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_validate(helm, variant):
    docs = _render(helm, *VARIANTS[variant])
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"] in ("monitoring.coreos.com/v1", "kopf.dev/v1")
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount"} <= kinds


def test_crds_in_chart_render_unchanged(helm):
    crds = {d["metadata"]["name"]: d for d in _render(helm) if d["kind"] == "CustomResourceDefinition"}
    top = {}
    for path in (CHART.parents[1] / "crds").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        top[doc["metadata"]["name"]] = doc
    assert crds == top


def test_deployment_hardening(helm):
    dep = next(d for d in _render(helm) if d["kind"] == "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert "--all-namespaces" in c["args"] and "--peering=sparsify-operator" in c["args"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["SPARSIFY_RUNNER_IMAGE"].startswith("ghcr.io/")


def test_rbac_least_privilege(helm):
    namespaced = _render(helm, *VARIANTS["namespaced"])
    roles = [d for d in namespaced if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "research"]
    assert not [d for d in namespaced if d["kind"] == "ClusterRoleBinding"]
    for role in roles + [d for d in _render(helm) if d["kind"] == "ClusterRole"]:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role["metadata"]["name"]
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["get"]
            if rule["resources"] == ["pods"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}
    no_secrets = _render(helm, *VARIANTS["monitoring"])
    assert not any(
        "secrets" in r["resources"] for d in no_secrets if d["kind"] == "ClusterRole" for r in d["rules"]
    )


def test_values_schema_rejects_bad_values(helm):
    proc = subprocess.run(
        [helm, "template", "x", str(CHART), "--set", "runner.metricsPort=abc"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "metricsPort" in proc.stderr
