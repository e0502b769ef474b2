"""The example experiments and the MinIO manifest: valid for the models, the API schemas and the runner."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import K8S_VERSION
from sparsify_operator.jobs import validate_spec
from sparsify_operator.models import SparsifyExperiment
from sparsify_runner.spec import ExperimentType, load_experiment

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "k8s").glob("*.yaml"))


def test_one_example_per_type():
    types = {yaml.safe_load(p.read_text())["spec"]["experiment"]["type"] for p in EXAMPLES}
    assert types == {t.value for t in ExperimentType}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_valid(path):
    doc = yaml.safe_load(path.read_text())
    SparsifyExperiment.model_validate(doc)
    validate_spec(doc)  # runnable in a cluster
    exp = load_experiment(str(path))  # the runner reads a whole manifest too
    assert exp.type.value == doc["spec"]["experiment"]["type"]


def test_minio_manifest_validates():
    for doc in yaml.safe_load_all((ROOT / "examples/k8s/minio/minio.yaml").read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kind_config_parses():
    cfg = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert {n["role"] for n in cfg["nodes"]} == {"control-plane", "worker"}
