"""Constants and podman helpers shared by the image tests (imported by conftest and tests)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for helper_dir in ("runner_io", "operator"):  # rio_helpers, op_harness
    path = str(ROOT / "tests" / helper_dir)
    if path not in sys.path:
        sys.path.append(path)

TAG = os.environ.get("SPARSIFY_IMAGE_TEST_TAG", "test")
RUNNER_IMAGE = f"localhost/sparsify-runner:{TAG}"
OPERATOR_IMAGE = f"localhost/sparsify-operator:{TAG}"
INSTALL_HINT = "bash scripts/install-test-deps.sh (apt-get install -y podman runc debootstrap)"


@dataclass
class Podman:
    env: dict[str, str]

    def cmd(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args[:3])}... exited {proc.returncode}: {proc.stderr[-3000:]}"
            )
        return proc

    def run_args(self, network: str = "host") -> list[str]:
        """`podman run` options every container here gets: runc (the sandbox's working
        runtime), the host's loopback (moto / the emulator listen on 127.0.0.1 only), no
        image pulls (no registry is reachable), no proxy variables copied from this host."""
        return ["run", "--runtime", "runc", "--network", network, "--pull", "never", "--http-proxy=false"]


def image_config(podman: Podman, image: str) -> dict:
    return json.loads(podman.cmd("image", "inspect", image).stdout)[0]["Config"]


SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|^AWS_|^PIP_)", re.I)
