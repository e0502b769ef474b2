"""A structural validator built from KServe's own release: the OpenAPI models of its Python SDK.

``scripts/fetch-kserve-sdk.sh`` unpacks ``kserve/models/*.py`` of the kserve wheel into
``.tools/kserve-sdk``. Each generated class has literal ``openapi_types`` (attribute -> type
string) and ``attribute_map`` (attribute -> JSON key) dicts; they are read with ``ast`` (the
SDK is never imported: its ``__init__`` pulls in heavy dependencies). Kubernetes core types
(``V1ObjectMeta``, ``V1ResourceRequirements``, ...) come from the installed ``kubernetes``
client's model classes the same way. ``validate(doc, "V1beta1InferenceService")`` returns the
list of problems (unknown keys, wrong value types) with their JSON paths.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SDK_DIR = ROOT / ".tools" / "kserve-sdk"
MODELS_DIR = SDK_DIR / "kserve" / "models"
KSERVE_VERSION = "0.21.0"
FETCH_HINT = "run `bash scripts/fetch-kserve-sdk.sh` (part of `make test-deps`)"

_LIST = re.compile(r"(?:list|List)\[(.+)\]")
_DICT = re.compile(r"(?:dict\((\w+), (.+)\)|Dict\[(\w+), (.+)\])")
_SCALARS = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "datetime": (str,),
    "date": (str,),
    "object": (object,),
    "ResourceQuantity": (str, int, float),
}


def sdk_missing() -> str | None:
    """Why the SDK models cannot be used (None when they can)."""
    stamp = SDK_DIR / "VERSION"
    if not (MODELS_DIR / "v1beta1_inference_service.py").is_file() or not stamp.is_file():
        return f"KServe SDK models are missing in {SDK_DIR}; {FETCH_HINT}"
    if stamp.read_text().strip() != KSERVE_VERSION:
        return f"{SDK_DIR} holds kserve {stamp.read_text().strip()}, not {KSERVE_VERSION}; {FETCH_HINT}"
    return None


def _literal_dicts(tree: ast.Module) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        found: dict[str, dict[str, str]] = {}
        for stmt in node.body:
            target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
            if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map"):
                found[target.id] = ast.literal_eval(stmt.value)
        if len(found) == 2:
            out[node.name] = (found["openapi_types"], found["attribute_map"])
    return out


@cache
def kserve_types() -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    types: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for path in sorted(MODELS_DIR.glob("*.py")):
        types.update(_literal_dicts(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
    return types


def _type(name: str) -> tuple[dict[str, str], dict[str, str]]:
    if name in kserve_types():
        return kserve_types()[name]
    import kubernetes.client.models as k8s

    cls = getattr(k8s, name, None)
    if cls is None or not hasattr(cls, "openapi_types"):
        raise KeyError(f"type {name} is neither in the KServe SDK nor in the kubernetes client")
    return dict(cls.openapi_types), dict(cls.attribute_map)


def validate(value: Any, type_name: str, path: str = "$") -> list[str]:
    """Problems of ``value`` against the OpenAPI type string ``type_name`` (empty: valid)."""
    t = type_name.strip()
    if m := _LIST.fullmatch(t):
        if not isinstance(value, list):
            return [f"{path}: expected a list ({t}), got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in validate(item, m.group(1), f"{path}[{i}]")]
    if m := _DICT.fullmatch(t):
        inner = m.group(2) or m.group(4)
        if not isinstance(value, dict):
            return [f"{path}: expected a map ({t}), got {type(value).__name__}"]
        problems = [f"{path}: map key {k!r} is not a string" for k in value if not isinstance(k, str)]
        return problems + [p for k, v in value.items() for p in validate(v, inner, f"{path}.{k}")]
    if t in _SCALARS:
        ok = isinstance(value, _SCALARS[t]) and not (t in ("int", "float") and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {t}, got {type(value).__name__} {value!r}"]
    try:
        types, attribute_map = _type(t)
    except KeyError as err:
        return [f"{path}: {err.args[0]}"]
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({t}), got {type(value).__name__}"]
    by_json = {json_key: attr for attr, json_key in attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in by_json:
            problems.append(f"{path}.{key}: unknown field of {t}")
            continue
        problems += validate(item, types[by_json[key]], f"{path}.{key}")
    return problems
