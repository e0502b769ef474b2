"""The project's CRDs against a real API server (etcd + apiextensions-apiserver on loopback).

What only a real server checks: the structural schema is accepted and the CRD becomes
Established, every CEL rule compiles within the cost budget and rejects its case with its own
message, defaulting and pruning, the status subresource, server-side apply conflicts, watch and
the printer columns. The offline twins of some of these (cel-python, schema walks) stay in
tests/operator/test_crd.py.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import watch  # noqa: E402
from kubernetes.client import ApiextensionsV1Api, CustomObjectsApi  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
CHART_CRD_DIR = ROOT / "charts" / "sparsify-operator" / "crds"
EXAMPLES = sorted((ROOT / "examples" / "k8s").glob("*.yaml"))
GROUP, VERSION, NS = "sparsify.dev", "v1alpha1", "sparsify-test"
EXPERIMENTS, SWEEPS = "sparsifyexperiments", "sparsifysweeps"
APPLY = "application/apply-patch+yaml"

_names = itertools.count()


def _name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# ---- the CEL rules, read from the CRDs the chart ships ------------------------------------------


@dataclass(frozen=True)
class Rule:
    kind: str
    path: str  # where the rule sits, as the API server names fields ("" = the object)
    rule: str
    message: str
    field_path: str | None

    @property
    def id(self) -> str:
        where = self.path or "<root>"
        return f"{self.kind}:{where}:{self.message[:40]}"


def _walk_rules(kind: str, node: dict, path: str):
    for entry in node.get("x-kubernetes-validations") or ():
        yield Rule(kind, path, entry["rule"], entry["message"], entry.get("fieldPath"))
    for key, child in (node.get("properties") or {}).items():
        yield from _walk_rules(kind, child, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), dict):
        yield from _walk_rules(kind, node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk_rules(kind, node["additionalProperties"], f"{path}[*]")


def _crd_rules() -> list[Rule]:
    rules = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = _load(path)
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            rules.extend(_walk_rules(crd["spec"]["names"]["kind"], schema, ""))
    return rules


RULES = _crd_rules()


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crds_established(api_client) -> dict[str, dict]:
    """Creates every CRD in crds/ and waits until the server reports it Established."""
    ext = ApiextensionsV1Api(api_client)
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        body = _load(path)
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:  # a rerun in the same session
                raise AssertionError(f"{path.name} rejected by the API server: {exc.body}") from exc
        names.append(body["metadata"]["name"])
    deadline = time.monotonic() + 60
    found: dict[str, dict] = {}
    while names and time.monotonic() < deadline:
        for name in list(names):
            crd = ext.read_custom_resource_definition(name)
            crd = api_client.sanitize_for_serialization(crd)
            conditions = {c["type"]: c for c in (crd.get("status") or {}).get("conditions") or ()}
            bad = conditions.get("NonStructuralSchema")
            assert not bad or bad["status"] != "True", f"{name}: {bad['message']}"
            if conditions.get("Established", {}).get("status") == "True":
                found[name] = crd
                names.remove(name)
        time.sleep(0.2)
    assert not names, f"CRDs not Established within 60 s: {names}"
    # the new resources are served as soon as Established; discovery catches up in a moment
    _wait_served(api_client, EXPERIMENTS)
    _wait_served(api_client, SWEEPS)
    return found


def _wait_served(api_client, plural: str) -> None:
    custom = CustomObjectsApi(api_client)
    deadline = time.monotonic() + 30
    while True:
        try:
            custom.list_namespaced_custom_object(GROUP, VERSION, NS, plural, limit=1)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise


@pytest.fixture
def custom(api_client, crds_established) -> CustomObjectsApi:
    return CustomObjectsApi(api_client)


def _example(path: Path | None = None, name: str | None = None) -> dict:
    doc = _load(path or ROOT / "examples" / "k8s" / "one-shot.yaml")
    doc["metadata"] = {"name": name or _name("exp")}
    return doc


def _sweep(name: str | None = None, template: dict | None = None) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SparsifySweep",
        "metadata": {"name": name or _name("sweep")},
        "spec": {"template": template or _example()["spec"], "optimLevels": [0.2, 0.5], "parallelism": 2},
    }


def _create(custom: CustomObjectsApi, body: dict) -> dict:
    plural = EXPERIMENTS if body["kind"] == "SparsifyExperiment" else SWEEPS
    return custom.create_namespaced_custom_object(GROUP, VERSION, NS, plural, body)


def _api_error(call: Callable[[], object], status: int) -> dict:
    with pytest.raises(ApiException) as err:
        call()
    assert err.value.status == status, err.value.body
    return json.loads(err.value.body)


def _rejected_with(call: Callable[[], object], rule: Rule) -> dict:
    """The server answers 422 with a cause that carries the rule's message (and its field)."""
    body = _api_error(call, 422)
    causes = (body.get("details") or {}).get("causes") or []
    matching = [c for c in causes if rule.message in c.get("message", "")]
    assert matching, f"no cause with {rule.message!r}: {json.dumps(body, indent=1)}"
    # each case breaks its rule and nothing else, so the test names the rule that rejected it
    assert len(causes) == 1, causes
    if rule.field_path:
        expected = f"{rule.path}{rule.field_path}"
        assert any(c.get("field") == expected for c in matching), (expected, matching)
    return matching[0]


# ---- CRDs accepted ------------------------------------------------------------------------------


def test_chart_ships_the_tested_crds():
    top = {p.name: p.read_bytes() for p in CRD_DIR.glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in CHART_CRD_DIR.glob("*.yaml")}
    assert top and top == chart


def test_every_crd_is_established(crds_established, control_plane):
    assert set(crds_established) == {_load(p)["metadata"]["name"] for p in CRD_DIR.glob("*.yaml")}
    for name, crd in crds_established.items():
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("NamesAccepted") == "True", name
    print(f"control plane started in {control_plane.startup_s} s")


def test_server_reports_its_kubernetes_version(control_plane):
    """The build stamps the release (v0.37.2 -> v1.37.2): helm refuses the chart's kubeVersion
    (>= 1.26) against an unstamped v0.0.0-master server."""
    with urllib.request.urlopen(
        f"{control_plane.server}/version", context=control_plane.ssl_context()
    ) as resp:
        version = json.load(resp)
    assert version["gitVersion"].startswith("v1.") and version["major"] == "1", version


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_accepted_and_defaulted(custom, path):
    created = _create(custom, _example(path))
    exp = created["spec"]["experiment"]
    # structural-schema defaults applied by the server, as the operator expects to read them
    assert exp["seed"] == 0 and exp["evalMetric"] == "auto" and exp["pruningMethod"] == "obs"
    assert created["spec"]["suspend"] is False
    assert created["metadata"]["generation"] == 1


def test_sweep_is_accepted_and_defaulted(custom):
    body = _sweep()
    body["spec"]["objective"] = {}
    created = _create(custom, body)
    assert created["spec"]["objective"] == {"maximize": "speedup", "maxAccuracyDrop": 0.01}
    assert created["spec"]["template"]["experiment"]["seed"] == 0
    assert created["spec"]["optimLevels"] == [0.2, 0.5]


def test_unknown_fields_are_pruned_or_refused(custom):
    body = _example()
    body["spec"]["bogus"] = 1
    body["spec"]["experiment"]["alsoBogus"] = "x"
    created = _create(custom, body)
    assert "bogus" not in created["spec"] and "alsoBogus" not in created["spec"]["experiment"]
    strict = _example()
    strict["spec"]["bogus"] = 1
    err = _api_error(
        lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, EXPERIMENTS, strict, field_validation="Strict"
        ),
        400,
    )
    assert 'unknown field "spec.bogus"' in err["message"]


def test_schema_ranges_and_enums_are_enforced(custom):
    body = _example()
    body["spec"]["experiment"]["type"] = "two-shot"
    body["spec"]["gpus"] = -1
    err = _api_error(lambda: _create(custom, body), 422)
    fields = {c["field"] for c in err["details"]["causes"]}
    assert {"spec.experiment.type", "spec.gpus"} <= fields, err


# ---- every CEL rule rejects its case with its message --------------------------------------------


def _experiment_case(mutate: Callable[[dict], None]) -> Callable[[CustomObjectsApi], Callable[[], object]]:
    """A create of the one-shot example with `mutate` applied to spec.experiment."""

    def make(custom):
        body = _example()
        mutate(body["spec"]["experiment"])
        return lambda: _create(custom, body)

    return make


def _sweep_case(mutate: Callable[[dict], None]) -> Callable[[CustomObjectsApi], Callable[[], object]]:
    """A create of a sweep whose template's experiment has `mutate` applied."""

    def make(custom):
        body = _sweep()
        mutate(body["spec"]["template"]["experiment"])
        return lambda: _create(custom, body)

    return make


def _one_shot_on_two_nodes(custom):
    """The one-shot example asking for two nodes (spec.nodes, beside spec.experiment)."""
    body = _example()
    body["spec"]["nodes"] = 2
    return lambda: _create(custom, body)


def _sweep_of_one_shot_on_two_nodes(custom):
    body = _sweep()
    body["spec"]["template"]["experiment"]["type"] = "one-shot"
    body["spec"]["template"]["nodes"] = 2
    return lambda: _create(custom, body)


def _no_model(exp: dict) -> None:
    exp.pop("model", None)


def _training_aware_without_model(exp: dict) -> None:
    exp.update(type="training-aware")
    exp.pop("model", None)


def _http_output(exp: dict) -> None:
    exp["output"] = "https://example.invalid/results"


def _training_with_custom_use_case(exp: dict) -> None:
    exp.update(type="sparse-transfer", useCase="custom")


def _experiment_spec_changed_after_job(custom):
    name = _name("frozen")
    _create(custom, _example(name=name))
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, EXPERIMENTS, name, {"status": {"phase": "Running", "jobName": f"{name}-job"}}
    )
    # suspend is the one field that may still change
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, EXPERIMENTS, name, {"spec": {"suspend": True}}
    )
    assert patched["spec"]["suspend"] is True
    return lambda: custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, EXPERIMENTS, name, {"spec": {"experiment": {"optimLevel": 0.9}}}
    )


def _sweep_spec_changed(custom):
    name = _name("sweep-frozen")
    _create(custom, _sweep(name=name))
    return lambda: custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, SWEEPS, name, {"spec": {"parallelism": 3}}
    )


# (kind, path, message prefix) -> a builder of the violating call
_MSG_ONE_SHOT = "one-shot needs spec.experiment.model"
_MSG_TRAINING = "training-aware needs spec.experiment.model"
_MSG_OUTPUT = "spec.experiment.output cannot be http(s)://"
_MSG_USE_CASE = "sparse-transfer and training-aware support"
_MSG_NODES = "spec.nodes above 1 is for training-aware and sparse-transfer"
CASES: dict[tuple[str, str, str], Callable[[CustomObjectsApi], Callable[[], object]]] = {
    ("SparsifyExperiment", "spec.experiment", _MSG_ONE_SHOT): _experiment_case(_no_model),
    ("SparsifyExperiment", "spec.experiment", _MSG_TRAINING): _experiment_case(_training_aware_without_model),
    ("SparsifyExperiment", "spec.experiment", _MSG_OUTPUT): _experiment_case(_http_output),
    ("SparsifyExperiment", "spec.experiment", _MSG_USE_CASE): _experiment_case(
        _training_with_custom_use_case
    ),
    ("SparsifyExperiment", "", "spec is immutable once the experiment's Job exists"): (
        _experiment_spec_changed_after_job
    ),
    ("SparsifySweep", "spec.template.experiment", _MSG_ONE_SHOT): _sweep_case(_no_model),
    ("SparsifySweep", "spec.template.experiment", _MSG_TRAINING): _sweep_case(_training_aware_without_model),
    ("SparsifySweep", "spec.template.experiment", _MSG_OUTPUT): _sweep_case(_http_output),
    ("SparsifySweep", "spec.template.experiment", _MSG_USE_CASE): _sweep_case(_training_with_custom_use_case),
    ("SparsifySweep", "spec", "a sweep's spec is immutable"): _sweep_spec_changed,
    ("SparsifyExperiment", "spec", _MSG_NODES): _one_shot_on_two_nodes,
    ("SparsifySweep", "spec.template", _MSG_NODES): _sweep_of_one_shot_on_two_nodes,
}


def _case_for(rule: Rule):
    found = [
        make
        for (kind, path, prefix), make in CASES.items()
        if kind == rule.kind and path == rule.path and rule.message.startswith(prefix)
    ]
    return found[0] if len(found) == 1 else None


def test_every_cel_rule_has_a_case():
    assert RULES, "no x-kubernetes-validations found in crds/"
    missing = [r.id for r in RULES if _case_for(r) is None]
    assert not missing, f"CEL rules without a violating case in this file: {missing}"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_cel_rule_rejects_its_case_with_its_message(custom, rule):
    make = _case_for(rule)
    if make is None:
        pytest.fail(f"no case for {rule.id}")
    _rejected_with(make(custom), rule)


def test_explicit_null_counts_as_absent_for_cel(custom):
    """A client that sends `model: null` (a dump that keeps None) is judged as if model were absent:
    has() is false for null, so the one-shot rule still rejects it, with its message."""
    body = _example()
    body["spec"]["experiment"]["model"] = None
    one_shot = next(
        r for r in RULES if r.kind == "SparsifyExperiment" and r.message.startswith(_MSG_ONE_SHOT)
    )
    _rejected_with(lambda: _create(custom, body), one_shot)


# ---- status subresource -------------------------------------------------------------------------


def test_status_subresource_separates_spec_and_status(custom):
    name = _name("status")
    created = _create(custom, _example(name=name))
    assert "status" not in created or not created["status"]

    # /status changes status and leaves the generation alone
    after = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, EXPERIMENTS, name, {"status": {"phase": "Running", "attempts": 1}}
    )
    assert after["status"]["phase"] == "Running" and after["status"]["attempts"] == 1
    assert after["metadata"]["generation"] == 1

    # spec sent to /status is ignored
    after = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NS,
        EXPERIMENTS,
        name,
        {"spec": {"experiment": {"optimLevel": 0.9}}, "status": {"reason": "Started"}},
    )
    assert after["spec"]["experiment"]["optimLevel"] == 0.5 and after["status"]["reason"] == "Started"

    # status sent to the main resource is ignored; a spec change bumps the generation
    after = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        EXPERIMENTS,
        name,
        {"spec": {"experiment": {"optimLevel": 0.7}}, "status": {"phase": "Failed"}},
    )
    assert after["status"]["phase"] == "Running"
    assert after["spec"]["experiment"]["optimLevel"] == 0.7 and after["metadata"]["generation"] == 2

    # the status schema is enforced too, and kopf's own bookkeeping survives pruning
    _api_error(
        lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, EXPERIMENTS, name, {"status": {"phase": "Exploded"}}
        ),
        422,
    )
    after = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NS,
        EXPERIMENTS,
        name,
        {"status": {"kopf": {"progress": {"create": {"retries": 1}}}, "undeclared": 1}},
    )
    assert after["status"]["kopf"] == {"progress": {"create": {"retries": 1}}}
    assert "undeclared" not in after["status"]


def test_sweep_status_subresource(custom):
    name = _name("sweep-status")
    _create(custom, _sweep(name=name))
    after = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, SWEEPS, name, {"status": {"phase": "Running", "summary": "0/2 succeeded"}}
    )
    assert after["status"]["phase"] == "Running" and after["metadata"]["generation"] == 1


# ---- server-side apply --------------------------------------------------------------------------


def _apply(custom, body: dict, manager: str, force: bool | None = None) -> dict:
    # an apply that creates answers 201, which the generated client maps to no type (None): read back
    answer = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        EXPERIMENTS,
        body["metadata"]["name"],
        body,
        field_manager=manager,
        force=force,
        _content_type=APPLY,
    )
    if answer is None:
        answer = custom.get_namespaced_custom_object(
            GROUP, VERSION, NS, EXPERIMENTS, body["metadata"]["name"]
        )
    return answer


def _owned_by(obj: dict, manager: str) -> str:
    return json.dumps(
        [m.get("fieldsV1") for m in obj["metadata"]["managedFields"] if m["manager"] == manager]
    )


def test_server_side_apply_owns_fields_and_conflicts(custom):
    name = _name("ssa")
    alice = _apply(custom, _example(name=name), "alice")
    assert alice["spec"]["experiment"]["optimLevel"] == 0.5
    assert '"f:optimLevel"' in _owned_by(alice, "alice")

    # the same apply again is a no-op, not a conflict
    again = _apply(custom, _example(name=name), "alice")
    assert again["metadata"]["generation"] == 1

    bob_intent = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SparsifyExperiment",
        "metadata": {"name": name},
        "spec": {"experiment": {"optimLevel": 0.8}},
    }
    conflict = _api_error(lambda: _apply(custom, bob_intent, "bob"), 409)
    assert conflict["reason"] == "Conflict"
    causes = conflict["details"]["causes"]
    assert any(
        c.get("field") == ".spec.experiment.optimLevel" and '"alice"' in c.get("message", "") for c in causes
    ), causes

    # forcing moves ownership of that one field to bob; alice keeps the rest
    bob = _apply(custom, bob_intent, "bob", force=True)
    assert bob["spec"]["experiment"]["optimLevel"] == 0.8
    assert '"f:optimLevel"' in _owned_by(bob, "bob")
    assert '"f:optimLevel"' not in _owned_by(bob, "alice")
    assert '"f:model"' in _owned_by(bob, "alice")
    # now alice's unchanged intent conflicts with bob
    _api_error(lambda: _apply(custom, _example(name=name), "alice"), 409)


# ---- watch and printer columns ------------------------------------------------------------------


def test_watch_delivers_added_and_modified(custom):
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, NS, EXPERIMENTS)
    since = listed["metadata"]["resourceVersion"]
    name = _name("watched")
    _create(custom, _example(name=name))
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, EXPERIMENTS, name, {"status": {"phase": "Pending"}}
    )
    seen = []
    w = watch.Watch()
    for event in w.stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        NS,
        EXPERIMENTS,
        resource_version=since,
        timeout_seconds=15,
    ):
        if event["object"]["metadata"]["name"] == name:
            seen.append((event["type"], (event["object"].get("status") or {}).get("phase")))
        if len(seen) == 2:
            w.stop()
    assert seen == [("ADDED", None), ("MODIFIED", "Pending")]


def test_printer_columns_as_kubectl_get_shows_them(custom, control_plane):
    name = _name("columns")
    _create(custom, _example(name=name))
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NS,
        EXPERIMENTS,
        name,
        {"status": {"phase": "Succeeded", "results": {"speedup": 2.5}}},
    )
    request = urllib.request.Request(
        f"{control_plane.server}/apis/{GROUP}/{VERSION}/namespaces/{NS}/{EXPERIMENTS}/{name}",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    with urllib.request.urlopen(request, timeout=10, context=control_plane.ssl_context()) as resp:
        table = json.load(resp)
    columns = [c["name"] for c in table["columnDefinitions"]]
    cells = dict(zip(columns, table["rows"][0]["cells"], strict=True))
    assert cells["Name"] == name
    assert cells["Phase"] == "Succeeded" and cells["Type"] == "one-shot"
    assert cells["Use Case"] == "image-classification"
    assert cells["Optim"] == 0.5 and cells["Speedup"] == 2.5


def test_delete_leaves_nothing(custom):
    name = _name("gone")
    _create(custom, _example(name=name))
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, EXPERIMENTS, name)
    _api_error(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NS, EXPERIMENTS, name), 404)


def _contains(sent, got, where: str) -> None:
    if isinstance(sent, dict):
        for key, value in sent.items():
            assert key in got, f"{where}.{key} pruned by the server"
            _contains(value, got[key], f"{where}.{key}")
    else:
        assert sent == got, f"{where}: {sent!r} came back as {got!r}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_roundtrip_keeps_every_field(custom, path):
    """What a user applies comes back unchanged (plus defaults): nothing is pruned silently."""
    body = _example(path)
    created = _create(custom, copy.deepcopy(body))
    _contains(body["spec"], created["spec"], f"{path.name}: spec")
