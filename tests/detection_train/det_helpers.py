"""Helpers of the detection training tests (a unique module name: ``from conftest import``
would clash with other test folders' conftest modules)."""

from __future__ import annotations

import json
from pathlib import Path

IMAGE_SIZE = 96
FAST = {"benchmark_seconds": 0.3, "int8_candidate_seconds": 0.15, "int8_search_seconds": 20}


def run_args(kind: str, model: Path | None, data: Path, out: Path, *extra: str, recipe: dict | None = None):
    """``sparsifyctl run KIND --use-case od ...`` with short benchmark windows (tiny models)."""
    args = ["run", kind, "--use-case", "od", "--data", str(data), "-o", str(out), "--quiet"]
    if model is not None:
        args += ["--model", str(model)]
    return [*args, *extra, "--recipe-args", json.dumps({**FAST, **(recipe or {})})]
