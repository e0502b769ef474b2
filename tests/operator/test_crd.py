"""CRD generation: committed YAML in sync, chart copy identical, schema and CEL rules behave."""

from __future__ import annotations

import copy
from pathlib import Path

import celpy
import pytest
import yaml
from sparsify_operator import crd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "k8s").glob("*.yaml"))


def test_committed_crds_match_generated():
    generated = crd.crd_files()
    committed = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "crds").glob("*.yaml")}
    assert set(committed) == set(generated), "crds/ has extra or missing files"
    for name, text in generated.items():
        assert committed[name] == text, (
            f"crds/{name} is stale: run `sparsifyctl crd --write crds --write charts/sparsify-operator/crds`"
        )


def test_chart_crds_byte_identical_to_top_level():
    top = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (ROOT / "charts/sparsify-operator/crds").glob("*.yaml")}
    assert top == chart


def _walk(node, path="$"):
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    schema = crd.experiment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node, f"{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "const"):
            assert banned not in node, f"{path} has {banned}"
        assert node.get("additionalProperties") is not False, path
        if "additionalProperties" in node:
            assert "properties" not in node, path
        if node["type"] == "string" and "enum" not in node and path not in ("$.apiVersion", "$.kind"):
            assert "maxLength" in node, f"{path}: unbounded strings blow the CEL cost budget"


def test_schema_ranges_enums_and_status_fields():
    schema = crd.experiment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    exp = schema["properties"]["spec"]["properties"]["experiment"]["properties"]
    assert exp["optimLevel"]["minimum"] == 0 and exp["optimLevel"]["maximum"] == 100  # 50 = 0.5
    assert exp["type"]["enum"] == ["one-shot", "sparse-transfer", "training-aware"]
    status = schema["properties"]["status"]["properties"]
    for field in (
        "phase",
        "conditions",
        "jobName",
        "startTime",
        "completionTime",
        "attempts",
        "results",
        "observedGeneration",
        "reason",
        "message",
        "kopf",
    ):
        assert field in status, f"status.{field} undeclared: the API server would prune kopf's writes"
    cond = status["conditions"]["items"]["properties"]
    assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} <= set(cond)
    columns = {c["name"] for c in crd.experiment_crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Phase", "Type", "Use Case", "Optim", "Speedup", "Age"} <= columns
    assert crd.experiment_crd()["spec"]["versions"][0]["subresources"] == {"status": {}}


# ---- CEL, evaluated offline with cel-python --------------------------------------------------------

_env = celpy.Environment()


def _eval(rule: str, self_obj, old=None) -> bool:
    program = _env.program(_env.compile(rule))
    activation = {"self": celpy.json_to_cel(self_obj)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    return bool(program.evaluate(activation))


def _experiment_rules_pass(exp: dict) -> list[str]:
    return [r["message"] for r in crd.EXPERIMENT_RULES if not _eval(r["rule"], exp)]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_pass_cel(path):
    doc = yaml.safe_load(path.read_text())
    assert _experiment_rules_pass(doc["spec"]["experiment"]) == []


def test_cel_one_shot_needs_model():
    exp = {"type": "one-shot", "useCase": "custom", "data": "s3://d/", "output": "s3://o/"}
    assert any("one-shot needs" in m for m in _experiment_rules_pass(exp))
    exp["model"] = "s3://m/model.onnx"
    assert _experiment_rules_pass(exp) == []


def test_cel_training_use_case_and_output():
    exp = {
        "type": "training-aware",
        "useCase": "custom",
        "model": "s3://m",
        "data": "s3://d",
        "output": "https://x/y",
    }
    failed = _experiment_rules_pass(exp)
    assert any("sparse-transfer and training-aware support" in m for m in failed)
    assert any("cannot be http" in m for m in failed)
    exp.update(useCase="ic", output="s3://o/")
    assert _experiment_rules_pass(exp) == []


def test_cel_spec_frozen_once_job_exists_except_suspend():
    rule = crd.experiment_schema()["x-kubernetes-validations"][0]["rule"]
    old = yaml.safe_load((ROOT / "examples/k8s/one-shot.yaml").read_text())
    new = copy.deepcopy(old)
    new["spec"]["experiment"]["optimLevel"] = 0.9
    assert _eval(rule, new, old), "before the Job exists the spec may change"
    old["status"] = {"phase": "Running", "jobName": "mobilenet-one-shot-sparsify"}
    new["status"] = old["status"]
    assert not _eval(rule, new, old), "a running experiment's spec must be frozen"
    new = copy.deepcopy(old)
    new["spec"]["suspend"] = True
    assert _eval(rule, new, old), "suspend may change"
    new = copy.deepcopy(old)
    new["spec"]["queueName"] = "other"
    assert not _eval(rule, new, old)
