"""End to end on a real cluster (kind): CRD admission, CEL rules server-side, the chart.

Runs when ``SPARSIFY_E2E_CONTEXT`` names a reachable kube context (e.g. ``kind-sparsify``
after ``kind create cluster --config kind-config.yaml``) and ``kubectl`` is installed; with
``SPARSIFY_E2E_OPERATOR_IMAGE`` (loaded into the cluster) it also installs the chart and
checks that the running operator reports a spec it cannot run. Skips with the reason
otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.kind, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
CONTEXT = os.environ.get("SPARSIFY_E2E_CONTEXT")


def _skip_reason() -> str | None:
    if not CONTEXT:
        return "no cluster: set SPARSIFY_E2E_CONTEXT to a kube context (e.g. kind-sparsify)"
    if not shutil.which("kubectl"):
        return "kubectl is not installed"
    proc = subprocess.run(
        ["kubectl", "--context", CONTEXT, "version", "-o", "json"], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        return f"cluster context {CONTEXT} is not reachable: {proc.stderr.strip()[:200]}"
    return None


_reason = _skip_reason()
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["kubectl", "--context", CONTEXT, *args], input=stdin, capture_output=True, text=True, timeout=180
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def namespace():
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    kubectl("wait", "--for=condition=Established", "crd/sparsifyexperiments.sparsify.dev", "--timeout=60s")
    ns = f"sparsify-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    yield ns
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _example(name: str = "one-shot") -> dict:
    return yaml.safe_load((ROOT / "examples" / "k8s" / f"{name}.yaml").read_text())


def test_examples_admitted(namespace):
    for path in sorted((ROOT / "examples" / "k8s").glob("*.yaml")):
        kubectl("apply", "-n", namespace, "--dry-run=server", "-f", str(path))


def _dry_run(namespace: str, doc: dict) -> subprocess.CompletedProcess:
    text = yaml.safe_dump(doc)
    return kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", stdin=text, check=False)


def test_cel_rejects_one_shot_without_model(namespace):
    doc = _example()
    del doc["spec"]["experiment"]["model"]
    proc = kubectl(
        "apply", "-n", namespace, "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(doc), check=False
    )
    assert proc.returncode != 0 and "one-shot needs spec.experiment.model" in proc.stderr


def test_schema_rejects_out_of_range(namespace):
    doc = _example()
    doc["spec"]["experiment"]["optimLevel"] = 3
    proc = kubectl(
        "apply", "-n", namespace, "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(doc), check=False
    )
    assert proc.returncode != 0 and "optimLevel" in proc.stderr


def test_spec_frozen_once_job_exists_except_suspend(namespace):
    doc = _example()
    doc["metadata"]["name"] = "frozen"
    kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))
    kubectl(
        "patch",
        "-n",
        namespace,
        "sparsifyexperiment",
        "frozen",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"jobName": "frozen-sparsify", "phase": "Running"}}),
    )
    proc = kubectl(
        "patch",
        "-n",
        namespace,
        "sparsifyexperiment",
        "frozen",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"experiment": {"optimLevel": 0.9}}}),
        check=False,
    )
    assert proc.returncode != 0 and "immutable" in proc.stderr
    kubectl(
        "patch",
        "-n",
        namespace,
        "sparsifyexperiment",
        "frozen",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"suspend": True}}),
    )


@pytest.mark.skipif(
    not os.environ.get("SPARSIFY_E2E_OPERATOR_IMAGE"),
    reason="set SPARSIFY_E2E_OPERATOR_IMAGE (loaded into the cluster) to install the chart",
)
def test_chart_operator_reports_missing_secret(namespace):
    from conftest import helm_binary

    repo, _, tag = os.environ["SPARSIFY_E2E_OPERATOR_IMAGE"].rpartition(":")
    release = "sparsify-e2e"
    subprocess.run(
        [
            helm_binary(),
            "--kube-context",
            CONTEXT,
            "upgrade",
            "--install",
            release,
            str(ROOT / "charts" / "sparsify-operator"),
            "-n",
            namespace,
            "--skip-crds",
            "--set",
            f"image.repository={repo}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            f"watchNamespaces={{{namespace}}}",
            "--set",
            "peering.enabled=false",
            "--wait",
            "--timeout",
            "180s",
        ],
        check=True,
        timeout=300,
    )
    doc = _example()
    doc["metadata"]["name"] = "nosecret"
    kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))
    deadline = time.monotonic() + 120
    status = {}
    while time.monotonic() < deadline:
        obj = json.loads(
            kubectl("get", "-n", namespace, "sparsifyexperiment", "nosecret", "-o", "json").stdout
        )
        status = obj.get("status") or {}
        if status.get("phase") == "Failed":
            break
        time.sleep(2)
    assert status.get("reason") == "InvalidSpec", status
    assert "spec.storage.secretRef.name" in status.get("message", "")
    jobs = json.loads(kubectl("get", "-n", namespace, "jobs", "-o", "json").stdout)["items"]
    assert jobs == []
