"""The SparsifySweep CRD (generated from the models) and ``sparsifyctl generate --sweep``."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import celpy
import pytest
import yaml
from sparsify_operator import crd
from sparsify_operator.jobs import validate_spec
from sparsify_operator.kube import Kube
from sparsify_operator.sweep_reconcile import plan

from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _schema() -> dict:
    return crd.sweep_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node, path="$"):
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


def test_sweep_crd_is_structural_and_committed():
    for path, node in _walk(_schema()):
        assert "type" in node, f"{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "const"):
            assert banned not in node, f"{path} has {banned}"
        if node["type"] == "string" and "enum" not in node and path not in ("$.apiVersion", "$.kind"):
            assert "maxLength" in node, f"{path}: unbounded string"
    import kubernetes_validate

    kubernetes_validate.validate(crd.sweep_crd(), "1.31", strict=True)
    name = "sparsifysweeps.sparsify.dev.yaml"
    assert crd.crd_files()[name] == (ROOT / "crds" / name).read_text()
    assert (ROOT / "crds" / name).read_bytes() == (ROOT / "charts/sparsify-operator/crds" / name).read_bytes()


def test_sweep_crd_fields_columns_and_rules():
    version = crd.sweep_crd()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Points", "Best", "Age"]
    assert version["subresources"] == {"status": {}}
    spec = _schema()["properties"]["spec"]
    assert spec["required"] == ["template", "optimLevels"]
    levels = spec["properties"]["optimLevels"]
    assert (levels["minItems"], levels["maxItems"]) == (1, 20)
    assert (levels["items"]["minimum"], levels["items"]["maximum"]) == (0, 1)
    assert spec["properties"]["parallelism"]["minimum"] == 1
    assert spec["properties"]["structures"]["items"]["enum"] == ["unstructured", "channels"]
    objective = spec["properties"]["objective"]["properties"]
    assert objective["maximize"]["enum"] == ["speedup", "compression"]
    assert objective["maxAccuracyDrop"]["default"] == 0.01
    template_exp = spec["properties"]["template"]["properties"]["experiment"]
    assert template_exp["x-kubernetes-validations"] == crd.EXPERIMENT_RULES
    status = _schema()["properties"]["status"]["properties"]
    declared = {"phase", "conditions", "observedGeneration", "points", "best", "pareto", "summary", "kopf"}
    assert declared <= set(status), "undeclared status fields are pruned by the API server"
    point = status["points"]["items"]["properties"]
    assert {"name", "optimLevel", "structure", "phase", "accuracy", "fidelity", "latencyMs", "speedup",
            "sizeBytes", "modelUri", "reportUri"} <= set(point)
    # the spec is immutable (CEL transition rule, evaluated offline)
    env = celpy.Environment()
    (rule,) = spec["x-kubernetes-validations"]
    program = env.program(env.compile(rule["rule"]))
    old = {"optimLevels": [0.2, 0.5], "parallelism": 2}
    new = copy.deepcopy(old)
    assert program.evaluate({"self": celpy.json_to_cel(new), "oldSelf": celpy.json_to_cel(old)})
    new["optimLevels"].append(0.8)
    assert not program.evaluate({"self": celpy.json_to_cel(new), "oldSelf": celpy.json_to_cel(old)})


def test_chart_rbac_covers_sweeps():
    helpers = (ROOT / "charts/sparsify-operator/templates/_helpers.tpl").read_text()
    for resource in ("sparsifysweeps", "sparsifysweeps/status", "sparsifysweeps/finalizers"):
        assert f'resources: ["{resource}"]' in helpers
    assert '"create", "patch", "delete"]' in helpers


GEN = ["generate", "one-shot", "--use-case", "ic", "--model", "s3://m/m.onnx", "--data", "s3://d/calib/",
       "--output", "s3://out/sw", "--gpus", "0"]


def test_generate_sweep_prints_a_valid_sweep_whose_children_validate(capsys):
    argv = [*GEN, "--name", "mobilenet-sweep", "--sweep", "--optim-levels", "0.2,0.5,0.8", "--structure",
            "unstructured", "--parallelism", "1", "--queue", "team-a", "--objective", "compression",
            "--max-accuracy-drop", "0.03", "-n", "ml"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    doc = yaml.safe_load(out)
    assert doc["kind"] == "SparsifySweep" and doc["apiVersion"] == "sparsify.dev/v1alpha1"
    assert doc["metadata"] == {"name": "mobilenet-sweep", "namespace": "ml"}
    spec = doc["spec"]
    assert spec["optimLevels"] == [0.2, 0.5, 0.8] and spec["structures"] == ["unstructured"]
    assert spec["parallelism"] == 1
    assert spec["objective"] == {"maximize": "compression", "maxAccuracyDrop": 0.03}
    assert spec["template"]["queueName"] == "team-a" and "optimLevel" not in spec["template"]["experiment"]
    doc["metadata"]["uid"] = str(uuid.uuid4())
    first = plan(doc, [])
    (child,) = first.create
    assert child["metadata"]["name"] == "mobilenet-sweep-020-u"
    validate_spec(child)
    assert child["spec"]["experiment"]["output"] == "s3://out/sw/mobilenet-sweep-020-u"


def test_generate_sweep_json_and_both_structures(capsys):
    import json

    argv = [*GEN, "--sweep", "--optim-levels=0.5", "--structures=unstructured,channels", "--format=json"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["spec"]["structures"] == ["unstructured", "channels"]
    assert doc["spec"]["template"]["experiment"]["structure"] == "unstructured"


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        (["--sweep", "--optim-levels", "0.2,-1"], "--optim-levels: -1 is out of range"),
        (["--sweep", "--optim-levels", ""], "--optim-levels is empty"),
        (["--sweep"], "missing --optim-levels"),
        (["--sweep", "--optim-levels", "0.2", "--structures", "heads"], "unknown structure 'heads'"),
        (["--sweep", "--optim-levels", "0.2", "--parallelism", "0"], "--parallelism must be at least 1"),
        (["--sweep", "--optim-levels", "0.2", "--min-fidelity", "3"], "--min-fidelity"),
        (["--optim-levels", "0.2"], "apply only with --sweep"),
    ],
)
def test_generate_sweep_bad_values_one_line_exit_2(extra, msg, capsys):
    code, out, err = run_cli([*GEN, *extra], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err


def test_kube_sweep_paths():
    assert Kube.sweeps_path("ml", "sw") == "/apis/sparsify.dev/v1alpha1/namespaces/ml/sparsifysweeps/sw"
    assert Kube.sweeps_path(None) == "/apis/sparsify.dev/v1alpha1/sparsifysweeps"
