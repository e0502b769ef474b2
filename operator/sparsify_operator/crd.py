"""Generate the CRDs from the pydantic models (``sparsifyctl crd`` prints them).

Pydantic's JSON schema is turned into a Kubernetes *structural* OpenAPI v3 schema: refs
inlined, ``Optional`` -> ``nullable``, ``dict[str, Any]`` -> preserved unknown fields, no
``additionalProperties: false`` (structural schemas prune instead). Cross-field checks
that OpenAPI cannot express are CEL rules (``x-kubernetes-validations``); the same rules
are evaluated offline in the tests.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from sparsify_runner.spec import TRAINING_USE_CASES, USE_CASE_ALIASES

from .models import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    SparsifyExperimentSpec,
    SparsifyExperimentStatus,
)

# Kopf's peering objects (one active operator instance); its own CRDs, shipped with ours.
PEERING_GROUP = "kopf.dev"

# ---- CEL rules ---------------------------------------------------------------------------------

EXPERIMENT_RULES: list[dict[str, str]] = [
    {
        "rule": "self.type != 'one-shot' || has(self.model)",
        "message": "one-shot needs spec.experiment.model (an ONNX model URI)",
        "fieldPath": ".model",
        "reason": "FieldValueRequired",
    },
    {
        "rule": "self.type != 'training-aware' || has(self.model)",
        "message": "training-aware needs spec.experiment.model (the dense model URI)",
        "fieldPath": ".model",
        "reason": "FieldValueRequired",
    },
    {
        "rule": "!has(self.output) || !(self.output.startsWith('http://') || self.output.startsWith('https://'))",
        "message": "spec.experiment.output cannot be http(s):// (read-only); use s3://",
        "fieldPath": ".output",
    },
]

_TRAINING_ALIASES = sorted(
    {alias for uc in TRAINING_USE_CASES for alias in (uc, *USE_CASE_ALIASES.get(uc, ()))}
)
EXPERIMENT_RULES.append(
    {
        "rule": "self.type == 'one-shot' || self.useCase in "
        + "["
        + ", ".join(f"'{a}'" for a in _TRAINING_ALIASES)
        + "]",
        "message": "sparse-transfer and training-aware support image-classification, "
        "text-classification, object-detection and text-generation (custom use cases work with one-shot)",
        "fieldPath": ".useCase",
    }
)

# Rules on the experiment spec beside spec.experiment (a sweep applies them to spec.template).
SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.nodes) || self.nodes <= 1 || self.experiment.type != 'one-shot'",
        "message": "spec.nodes above 1 is for training-aware and sparse-transfer (one-shot runs in one "
        "process on one node); set spec.nodes: 1",
        "fieldPath": ".nodes",
    }
]

# Bounds so the API server's CEL cost estimator accepts the rules (unbounded strings/maps
# are estimated at the request size limit).
MAX_STRING = 4096
MAX_MAP = 128


def _unchanged(field: str) -> str:
    a, b = f"self.spec.{field}", f"oldSelf.spec.{field}"
    return f"(has({a}) == has({b}) && (!has({a}) || {a} == {b}))"


# Spec fields frozen once the Job exists (status.jobName set by the operator); only
# spec.suspend may change. A root-level transition rule can see status: the main
# resource endpoint ignores status changes, so status there is always the stored one.
FROZEN_FIELDS = [name for name, f in SparsifyExperimentSpec.model_fields.items() if name != "suspend"]


def _frozen_rule() -> dict[str, str]:
    from pydantic.alias_generators import to_camel

    checks = " && ".join(_unchanged(to_camel(name)) for name in FROZEN_FIELDS)
    return {
        "rule": "!has(oldSelf.status) || !has(oldSelf.status.jobName) || " + checks,
        "message": "spec is immutable once the experiment's Job exists (only spec.suspend may change); "
        "delete and re-create the experiment to change it",
    }


# ---- JSON schema -> structural OpenAPI -------------------------------------------------------------

_DROP = {"title", "additionalProperties", "$defs", "discriminator"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            target.update(extra)
            return _inline(target, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    # Optional[X] -> X + nullable
    for key in ("anyOf", "oneOf"):
        if key in node:
            raw = node.pop(key)
            options = [o for o in raw if o.get("type") != "null"]
            nullable = len(options) < len(raw)
            if len(options) != 1:
                raise ValueError(f"cannot express union {options} in a structural schema")
            merged = {**options[0], **node}
            node = merged
            if nullable:
                node["nullable"] = True
    if node.get("default") is None:
        node.pop("default", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for key in _DROP:
        node.pop(key, None)
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if node.get("type") == "object":
        if "properties" in node:
            node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
        else:
            node.setdefault("x-kubernetes-preserve-unknown-fields", True)
        additional = node.pop("additionalPropertiesSchema", None)
        if additional:
            node["additionalProperties"] = _structural(additional)
    if node.get("type") == "array" and "items" in node:
        node["items"] = _structural(node["items"])
    if node.get("type") == "object" and "maxLength" in node:
        node["maxProperties"] = node.pop("maxLength")
    if "required" in node and "properties" in node:
        node["required"] = [r for r in node["required"] if r in node["properties"]]
    if "default" in node and isinstance(node["default"], (dict, list)):
        node.pop("default")
    return node


def _openapi(model: type) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    schema = _inline(schema, defs)
    schema = _mark_maps(schema)
    return _structural(schema)


def _mark_maps(node: Any) -> Any:
    """``dict[str, str]`` comes as additionalProperties {type: string}: keep it as a typed map."""
    if isinstance(node, dict):
        out = {k: _mark_maps(v) for k, v in node.items()}
        extra = node.get("additionalProperties")
        if node.get("type") == "object" and isinstance(extra, dict) and extra and "properties" not in node:
            out["additionalPropertiesSchema"] = _mark_maps(extra)
            out.pop("additionalProperties", None)
            out.pop("x-kubernetes-preserve-unknown-fields", None)
        return out
    if isinstance(node, list):
        return [_mark_maps(v) for v in node]
    return node


def _fix_preserve(node: dict[str, Any]) -> None:
    """Typed maps must not also preserve unknown fields."""
    if "additionalProperties" in node:
        node.pop("x-kubernetes-preserve-unknown-fields", None)
    for child in node.get("properties", {}).values():
        _fix_preserve(child)
    if isinstance(node.get("items"), dict):
        _fix_preserve(node["items"])


def _bound(node: dict[str, Any]) -> None:
    if node.get("type") == "string" and "maxLength" not in node and "enum" not in node:
        node["maxLength"] = MAX_STRING
    if node.get("type") == "object" and "properties" not in node and "maxProperties" not in node:
        node["maxProperties"] = MAX_MAP
    if node.get("type") == "array" and "maxItems" not in node:
        node["maxItems"] = MAX_MAP
    for child in node.get("properties", {}).values():
        _bound(child)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _bound(node[key])


def experiment_schema() -> dict[str, Any]:
    spec = _openapi(SparsifyExperimentSpec)
    status = _openapi(SparsifyExperimentStatus)
    _fix_preserve(spec)
    _fix_preserve(status)
    spec["properties"]["experiment"]["x-kubernetes-validations"] = EXPERIMENT_RULES
    spec["x-kubernetes-validations"] = SPEC_RULES
    _bound(spec)
    _bound(status)
    # conditions are a map keyed by type (server-side apply friendly)
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["maxItems"] = 16
    # Kopf keeps its handler progress in annotations (see main.py); declared anyway so a
    # kopf fallback write to status.kopf is never pruned away silently.
    status["properties"]["kopf"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [_frozen_rule()],
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Type", "type": "string", "jsonPath": ".spec.experiment.type"},
    {"name": "Use Case", "type": "string", "jsonPath": ".spec.experiment.useCase"},
    {"name": "Optim", "type": "number", "jsonPath": ".spec.experiment.optimLevel"},
    {"name": "Speedup", "type": "number", "jsonPath": ".status.results.speedup"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def experiment_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["sparsify"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": experiment_schema()},
                }
            ],
        },
    }


# ---- SparsifySweep ---------------------------------------------------------------------------------

SWEEP_PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Points", "type": "string", "jsonPath": ".status.summary"},
    {"name": "Best", "type": "string", "jsonPath": ".status.best.name"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def sweep_schema() -> dict[str, Any]:
    """The sweep's spec embeds the experiment spec (same CEL rules on template.experiment);
    the whole spec is immutable: a different grid is a different sweep."""
    from .sweep_models import SparsifySweepSpec, SparsifySweepStatus

    spec = _openapi(SparsifySweepSpec)
    status = _openapi(SparsifySweepStatus)
    _fix_preserve(spec)
    _fix_preserve(status)
    spec["properties"]["template"]["properties"]["experiment"]["x-kubernetes-validations"] = EXPERIMENT_RULES
    spec["properties"]["template"]["x-kubernetes-validations"] = SPEC_RULES
    spec["x-kubernetes-validations"] = [
        {
            "rule": "self == oldSelf",
            "message": "a sweep's spec is immutable; delete and re-create the sweep to change it",
        }
    ]
    _bound(spec)
    _bound(status)
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["maxItems"] = 16
    status["properties"]["points"]["maxItems"] = 40
    status["properties"]["kopf"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def sweep_crd() -> dict[str, Any]:
    from .sweep_models import SWEEP_KIND, SWEEP_PLURAL, SWEEP_SHORT_NAMES, SWEEP_SINGULAR

    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{SWEEP_PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": SWEEP_KIND,
                "listKind": f"{SWEEP_KIND}List",
                "plural": SWEEP_PLURAL,
                "singular": SWEEP_SINGULAR,
                "shortNames": SWEEP_SHORT_NAMES,
                "categories": ["sparsify"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": SWEEP_PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": sweep_schema()},
                }
            ],
        },
    }


def peering_crds() -> list[dict[str, Any]]:
    """Kopf's peering resources (``--peering``: one active operator instance at a time)."""
    schema = {
        "type": "object",
        "properties": {
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    out = []
    for kind, plural, scope in (
        ("KopfPeering", "kopfpeerings", "Namespaced"),
        ("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
    ):
        out.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.{PEERING_GROUP}"},
                "spec": {
                    "group": PEERING_GROUP,
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "scope": scope,
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {"openAPIV3Schema": copy.deepcopy(schema)},
                        }
                    ],
                },
            }
        )
    return out


HEADER = "# Generated by `sparsifyctl crd` from operator/sparsify_operator/models.py. Do not edit.\n"


def to_yaml(doc: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


def crd_files() -> dict[str, str]:
    """File name -> YAML text: what ``crds/`` (and the chart's ``crds/``) must contain."""
    files = {f"{PLURAL}.{GROUP}.yaml": to_yaml(experiment_crd())}
    sweep = sweep_crd()
    files[f"{sweep['metadata']['name']}.yaml"] = to_yaml(sweep)
    for crd in peering_crds():
        files[f"{crd['metadata']['name']}.yaml"] = to_yaml(crd)
    return files
