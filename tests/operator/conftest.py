"""Operator tests: pure functions, manifests, chart, and the operator loop against kmock."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.31"  # kubernetes-validate schema version for manifests (podFailurePolicy is GA)


def helm_binary() -> str:
    local = ROOT / ".tools" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("helm")
    if found:
        return found
    pytest.fail("helm is not installed: run `bash scripts/fetch-helm.sh` (extracts .tools/helm)")


@pytest.fixture(scope="session")
def helm() -> str:
    return helm_binary()


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
