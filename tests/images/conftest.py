"""The images under images/, built with podman and run for real (no Docker engine, no registry).

Session fixtures: ``podman`` (a usable podman, or ONE skip saying why it cannot run here),
``images`` (both images built from this checkout by scripts/build-images.sh on a debootstrap
bookworm base; podman's layer cache makes a warm build take seconds) and ``moto_endpoint``.
Helpers of the runner-I/O and operator tests are reused (tiny model, the kmock emulator).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from img_helpers import INSTALL_HINT, ROOT, TAG, Podman


@pytest.fixture(scope="session")
def podman(tmp_path_factory) -> Podman:
    if shutil.which("podman") is None:
        pytest.skip(f"podman is not installed, the images cannot be built or run here: {INSTALL_HINT}")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    # The sandbox refuses podman's default rlimits; without defaults, containers inherit ours.
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(conf))}
    info = subprocess.run(["podman", "info", "--format", "json"], env=env, capture_output=True, text=True)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here (`podman info` failed): {info.stderr.strip()[-500:]}")
    return Podman(env)


def _reachable(host: str, port: int = 443) -> bool:
    """Whether the build's default CPU torch index answers at all (DNS and a TCP connect)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


def _local_cpu_torch() -> tuple[str, str] | None:
    """(index, spec) for a CPU torch wheel in this machine's pip find-links, if there is one
    (no PyTorch index is reachable from CI; PyPI's Linux torch is the 2.5 GB CUDA build)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    folders: list[str] = []
    for line in out.splitlines():
        key, _, raw = line.partition("=")
        if key.endswith(".find-links"):
            folders += ast.literal_eval(raw).split()
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"  # the base image's python: 3.11
    for folder in folders:
        for wheel in sorted(Path(folder.removeprefix("file://")).glob(f"torch-*+cpu-{tag}-*.whl")):
            version = wheel.name.split("-")[1]
            return "https://pypi.org/simple", f"torch=={version}"
    return None


@dataclass
class Built:
    seconds: float
    log: str
    lines: list[str]


@pytest.fixture(scope="session")
def images(podman: Podman) -> Built:
    """Both images, built from this checkout (CPU torch), as the README documents."""
    base = subprocess.run(
        ["bash", str(ROOT / "scripts/build-base-image.sh")],
        env=podman.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert base.returncode == 0, f"base image: {base.stderr[-3000:]}"
    probe = podman.cmd(*podman.run_args(), "--rm", base.stdout.strip(), "true", check=False)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot start a container here: {probe.stderr.strip()[-500:]}")

    torch_args: list[str] = []
    local = _local_cpu_torch()
    configured = os.environ.get("SPARSIFY_IMAGE_TORCH_INDEX")
    if not local and not configured and not _reachable("download.pytorch.org"):
        pytest.skip(
            "no CPU torch wheel in this machine's pip find-links and download.pytorch.org is unreachable: "
            "set SPARSIFY_IMAGE_TORCH_INDEX (and SPARSIFY_IMAGE_TORCH_SPEC) to build the runner image"
        )
    index = os.environ.get("SPARSIFY_IMAGE_TORCH_INDEX") or (local[0] if local else "")
    spec = os.environ.get("SPARSIFY_IMAGE_TORCH_SPEC") or (local[1] if local else "")
    if index:
        torch_args += ["--torch-index", index]
    if spec:
        torch_args += ["--torch-spec", spec]
    cmd = [
        "bash",
        str(ROOT / "scripts/build-images.sh"),
        "--local-base",
        "--host-pip",
        "--torch",
        "cpu",
        *torch_args,
        "--tag",
        TAG,
        "all",
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=podman.env, capture_output=True, text=True, timeout=1500)
    took = time.monotonic() - start
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-6000:]}"
    lines = [line for line in proc.stdout.splitlines() if " built in " in line]
    print(f"\n[images] {took:.0f}s: " + "; ".join(lines))
    return Built(took, proc.stderr, lines)


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """moto's S3 server on a free loopback port (as tests/runner_io starts it)."""
    from moto.server import ThreadedMotoServer
    from rio_helpers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
