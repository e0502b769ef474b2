"""The images, built from this checkout and run the way the cluster runs them.

* the runner image runs a one-shot of a tiny ONNX model with s3:// input and output against
  moto on loopback, with the podman options DERIVED from the Job the operator builds (user,
  env, args, read-only root, capabilities, exactly the Job's writable mounts and the
  termination-message file): a drift between image and Job spec fails here;
* the operator image runs as the chart's Deployment says (args, env, user, read-only root,
  /tmp emptyDir) against the kmock emulator and creates the Job for an experiment;
* size, and nothing of the build (credentials, pip configuration, caches, sources) in the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from img_helpers import OPERATOR_IMAGE, ROOT, RUNNER_IMAGE, SECRET_NAME, image_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ACCESS_KEY = "AKIAIMAGETEST0000001"
SECRET_KEY = "image-test-Secret-value-9d2e41"
SECRET = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


# ---- Job / Deployment -> podman run -----------------------------------------------------------
def pod_to_podman(
    pod: dict[str, Any], workdir: Path, secret: dict[str, str], env_override: dict[str, str] | None = None
) -> tuple[list[str], dict[str, Path]]:
    """`podman run` options for the pod's only container, the way a kubelet would start it.

    Returns (options, {mountPath: host path}) where the host paths are the emptyDirs and the
    termination-message file. Anything the test cannot reproduce faithfully fails the test.
    """
    (container,) = pod["containers"]
    pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    opts: list[str] = []
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if uid is not None:
        opts += ["--user", f"{uid}:{gid if gid is not None else uid}"]
    if pod_sc.get("fsGroup") is not None:
        opts += ["--group-add", str(pod_sc["fsGroup"])]
    if sc.get("readOnlyRootFilesystem"):
        # Kubernetes gives no tmpfs anywhere; podman's --read-only would add /tmp, /var/tmp, /run.
        opts += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        opts += ["--security-opt", "no-new-privileges"]
    for cap in sc.get("capabilities", {}).get("drop", []):
        opts += ["--cap-drop", cap.lower()]
    assert not sc.get("privileged"), "a privileged container"

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        path = mount["mountPath"]
        assert set(volume) <= {"name", "emptyDir"}, f"volume {volume} is not an emptyDir: extend this test"
        if volume["emptyDir"].get("medium") == "Memory" and path == "/dev/shm":
            opts += ["--shm-size", volume["emptyDir"].get("sizeLimit", "64Mi").replace("i", "").lower()]
            continue
        # An emptyDir: an empty world-writable directory (what the kubelet creates).
        host = workdir / ("vol-" + mount["name"])
        host.mkdir()
        host.chmod(0o777)
        opts += ["--volume", f"{host}:{path}:rw"]
        mounts[path] = host
    term_path = container.get("terminationMessagePath", "/dev/termination-log")
    term = workdir / "termination-log"
    term.touch()
    term.chmod(0o666)  # the kubelet's file is writable by any uid
    opts += ["--volume", f"{term}:{term_path}:rw"]
    mounts[term_path] = term

    for item in container.get("env", []):
        if "value" in item:
            value = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            if ref["key"] not in secret:
                assert ref.get("optional"), f"required secret key {ref['key']} missing"
                continue
            value = secret[ref["key"]]
        value = (env_override or {}).get(item["name"], value)
        opts += ["--env", f"{item['name']}={value}"]
    if container.get("workingDir"):
        opts += ["--workdir", container["workingDir"]]
    if container.get("command"):
        opts += ["--entrypoint", json.dumps(container["command"])]
    return opts, mounts


def _experiment_object(endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "sparsify.dev/v1alpha1",
        "kind": "SparsifyExperiment",
        "metadata": {"name": "tiny", "namespace": "ml", "uid": str(uuid.uuid4()), "generation": 1},
        "spec": {
            "experiment": {
                "type": "one-shot",
                "useCase": "custom",
                "model": "s3://models/tiny/model.onnx",
                "data": "s3://datasets/calib/",
                "optimLevel": 0.5,
                "recipeArgs": {"benchmark_seconds": 0.2, "calibration_samples": 16},
                "output": "s3://results/tiny",
            },
            "gpus": 0,
            "storage": {"endpoint": endpoint, "region": "us-east-1", "secretRef": {"name": "s3-creds"}},
        },
    }


def _s3(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


# ---- the runner image -------------------------------------------------------------------------
def test_runner_image_runs_a_one_shot_as_the_job_does(podman, images, moto_endpoint, tmp_path):
    from rio_helpers import free_port, keys, tiny_onnx
    from sparsify_operator.jobs import build_job
    from sparsify_operator.settings import OperatorSettings
    from sparsify_runner.contract import RunSummary

    s3 = _s3(moto_endpoint)
    for bucket in ("models", "datasets", "results"):
        s3.create_bucket(Bucket=bucket)
    tiny_onnx(tmp_path / "model.onnx")
    s3.upload_file(str(tmp_path / "model.onnx"), "models", "tiny/model.onnx")
    rng = np.random.default_rng(1)
    for i in range(16):
        np.savez(tmp_path / "s.npz", input=rng.normal(0, 1, (3, 8, 8)).astype(np.float32))
        s3.upload_file(str(tmp_path / "s.npz"), "datasets", f"calib/sample_{i:03d}.npz")

    settings = OperatorSettings(
        runner_image=RUNNER_IMAGE, runner_metrics_port=free_port(), check_secrets=False
    )
    job = build_job(_experiment_object(moto_endpoint), settings)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == RUNNER_IMAGE

    # The image's declared user is the one the Job runs as (runAsNonRoot needs a numeric one).
    config = image_config(podman, RUNNER_IMAGE)
    run_as = pod["securityContext"]["runAsUser"]
    assert config["User"] == f"{run_as}:{pod['securityContext']['runAsGroup']}", config["User"]

    opts, mounts = pod_to_podman(pod, tmp_path, SECRET)
    name = f"sparsify-runner-test-{uuid.uuid4().hex[:8]}"
    argv = [*podman.run_args(), "--rm", "--name", name, *opts, RUNNER_IMAGE, *container["args"]]
    start = time.monotonic()
    proc = podman.cmd(*argv, timeout=600, check=False)
    took = time.monotonic() - start
    print(
        f"\n[runner container] exit {proc.returncode} in {took:.1f}s\n--- stdout ---\n{proc.stdout[-1500:]}"
        f"\n--- stderr ---\n{proc.stderr[-1500:]}"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    # Published artifacts, marker last, checksums right.
    published = keys(s3, "results", "tiny/")
    for key in ("tiny/_SUCCESS.json", "tiny/model.onnx", "tiny/report.json", "tiny/report.html"):
        assert key in published, published
    marker = json.loads(s3.get_object(Bucket="results", Key="tiny/_SUCCESS.json")["Body"].read())
    model = s3.get_object(Bucket="results", Key="tiny/model.onnx")["Body"].read()
    assert marker["files"]["model.onnx"]["sha256"] == hashlib.sha256(model).hexdigest()
    report = json.loads(s3.get_object(Bucket="results", Key="tiny/report.json")["Body"].read())
    assert report

    # The termination message: what the operator copies into the experiment's status.
    message = mounts[container["terminationMessagePath"]].read_text()
    print(f"[termination message] {message}")
    assert len(message.encode()) <= 4096
    summary = RunSummary.from_message(message)
    assert summary is not None, message
    assert summary.status == "succeeded" and summary.exit_code == 0
    assert summary.model_uri == "s3://results/tiny/model.onnx"
    assert summary.report_uri and summary.report_uri.startswith("s3://results/tiny/")
    assert SECRET_KEY not in message + proc.stdout + proc.stderr

    # Everything the run wrote went to the Job's writable mounts (the root is read-only), as
    # the Job's user: the download cache under /scratch included.
    scratch = mounts["/scratch"]
    written = [p for p in scratch.rglob("*") if p.is_file()]
    assert written, "nothing in /scratch: the download cache did not go to SPARSIFY_CACHE_DIR"
    assert {p.stat().st_uid for p in written} == {run_as}
    cache = [p for p in written if scratch / "cache" in p.parents]
    assert cache, f"no download cache under /scratch/cache: {sorted(map(str, written))[:20]}"


def test_runner_image_cannot_write_outside_the_jobs_mounts(podman, images, tmp_path):
    """The read-only root really is read-only for the runner's user: no /tmp, no HOME but /scratch."""
    from sparsify_operator.jobs import build_job
    from sparsify_operator.settings import OperatorSettings

    job = build_job(_experiment_object("http://127.0.0.1:9"), OperatorSettings(runner_image=RUNNER_IMAGE))
    opts, _ = pod_to_podman(job["spec"]["template"]["spec"], tmp_path, SECRET)
    script = (
        "import os, sys, tempfile\n"
        "ok = []\n"
        "dirs = ['/', '/tmp', '/opt', '/opt/app', '/scratch', os.environ['HOME'], tempfile.gettempdir()]\n"
        "for d in dirs:\n"
        "    try:\n"
        "        with open(os.path.join(d, '.probe'), 'w'): pass\n"
        "        ok.append(d)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(os.getuid(), sorted(set(ok)))\n"
    )
    proc = podman.cmd(
        *podman.run_args(), "--rm", *opts, "--entrypoint", "python3", RUNNER_IMAGE, "-c", script
    )
    assert proc.stdout.split() == ["1000", "['/scratch']"], proc.stdout


# ---- the operator image -----------------------------------------------------------------------
def _helm() -> str:
    import shutil

    local = ROOT / ".tools" / "helm"
    found = str(local) if local.is_file() else shutil.which("helm")
    if not found:
        pytest.fail("helm is not installed: run `bash scripts/fetch-helm.sh` (extracts .tools/helm)")
    return found


def _chart_deployment(endpoint: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            _helm(),
            "template",
            "sparsify",
            str(ROOT / "charts/sparsify-operator"),
            "-n",
            "sparsify-system",
            "--set",
            "image.repository=localhost/sparsify-operator",
            "--set",
            f"image.tag={RUNNER_IMAGE.split(':')[-1]}",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            f"runner.image={RUNNER_IMAGE}",
            "--set",
            f"storage.endpoint={endpoint}",
            "--set",
            "storage.region=us-east-1",
            # kopf peering needs the KopfPeering CRDs, which the emulator does not serve
            "--set",
            "peering.enabled=false",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    (deployment,) = [d for d in yaml.safe_load_all(out) if d and d.get("kind") == "Deployment"]
    return deployment


def test_operator_image_reconciles_an_experiment_into_a_job(podman, images, tmp_path):
    from op_harness import EXP, JOBS, Cluster, experiment, wait_for
    from rio_helpers import free_port, http_get
    from sparsify_operator.jobs import build_job, job_name
    from sparsify_operator.settings import OperatorSettings

    deployment = _chart_deployment("http://127.0.0.1:9000")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == OPERATOR_IMAGE
    config = image_config(podman, OPERATOR_IMAGE)
    assert config["User"] == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"

    # The chart's args, with the liveness and metrics ports moved to free loopback ports
    # (the container shares this host's network).
    live, metrics = free_port(), free_port()
    args = []
    for arg in container["args"]:
        if arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{live}/healthz"
        elif arg.startswith("--metrics-port="):
            arg = f"--metrics-port={metrics}"
        args.append(arg)
    chart_env = {e["name"]: e["value"] for e in container["env"]}

    async def scenario() -> tuple[dict, dict, str]:
        async with Cluster() as cluster:
            kubeconfig = Path(cluster.kubeconfig)
            kubeconfig.chmod(0o644)  # readable by the operator's uid
            opts, _ = pod_to_podman(pod, tmp_path, {})
            name = f"sparsify-operator-test-{uuid.uuid4().hex[:8]}"
            argv = [
                "podman",
                *podman.run_args(),
                "--rm",
                "--name",
                name,
                *opts,
                # what the in-cluster service account would give it: API server + credentials
                "--volume",
                f"{kubeconfig}:/etc/kube/config:ro",
                "--env",
                "KUBECONFIG=/etc/kube/config",
                OPERATOR_IMAGE,
                *args,
            ]
            proc = await asyncio.create_subprocess_exec(
                *argv, env=podman.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            try:

                async def live_ok():
                    if proc.returncode is not None:
                        raise AssertionError(f"operator container exited {proc.returncode}")
                    try:
                        return await asyncio.to_thread(http_get, f"http://127.0.0.1:{live}/healthz", 1)
                    except OSError:
                        return None

                await wait_for(live_ok, timeout=90, interval=0.5, what="the operator's liveness endpoint")
                await cluster.secret("ml", "s3-creds")
                exp = experiment("from-container", namespace="ml")
                await cluster.create(EXP, exp)
                job = await wait_for(
                    lambda: cluster.get(JOBS, "ml", job_name("from-container")),
                    timeout=60,
                    interval=0.5,
                    what="the Job created by the operator container",
                )
                stored = await cluster.get(EXP, "ml", "from-container")
                scraped = await asyncio.to_thread(http_get, f"http://127.0.0.1:{metrics}/metrics", 5)
                assert "sparsify_operator" in scraped
            finally:
                with contextlib.suppress(ProcessLookupError):
                    subprocess.run(
                        ["podman", "stop", "-t", "10", name], env=podman.env, capture_output=True, timeout=60
                    )
                out, _ = await asyncio.wait_for(proc.communicate(), 60)
            return job, stored, out.decode(errors="replace")

    job, stored, log = asyncio.run(scenario())
    print("\n[operator container log, last lines]\n" + "\n".join(log.splitlines()[-12:]))
    # The Job the container made is the one this checkout's build_job makes from the chart's
    # settings: the image carries the same code and reads the chart's environment.
    expected = build_job(stored, OperatorSettings.from_env(chart_env))
    assert job["spec"]["template"] == expected["spec"]["template"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == RUNNER_IMAGE
    assert "Traceback" not in log, log[-4000:]


# ---- what is (not) in the images ----------------------------------------------------------------
LEFTOVER_NAMES = {
    ".cache",
    ".aws",
    ".netrc",
    ".pypirc",
    ".git-credentials",
    ".git",
    ".ssh",
    ".docker",
    "pip.conf",
}
LEFTOVER_DIRS = (
    "/src/",
    "/opt/pip/",
    "/tmp/",
    "/var/tmp/",
    "/var/lib/apt/lists/",
    "/var/cache/apt/",
    "/scratch/",
)
# Debian's python3-venv ships pip/setuptools wheels for ensurepip: part of the OS, not a cache.
ALLOWED_WHEELS = "/usr/share/python-wheels/"
MAX_MB = {RUNNER_IMAGE: 3000, OPERATOR_IMAGE: 400}
HOST_SECRET = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY)", re.I)


def scan_layers(podman, image: str, needles: dict[str, bytes]) -> tuple[list[str], list[str], list[str]]:
    """Every layer of ``podman save``: (paths, whiteouts, names of needles found in a file).
    Layers, not the merged view: a file deleted by a later layer still ships in an earlier one."""
    proc = subprocess.Popen(
        ["podman", "save", "--format", "docker-archive", image],
        env=podman.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    paths, whiteouts, hits = [], [], set()
    keep = max((len(v) for v in needles.values()), default=1)
    with tarfile.open(fileobj=proc.stdout, mode="r|") as outer:
        for member in outer:
            if not (member.isfile() and member.name.endswith(".tar")):
                continue
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as layer:
                for entry in layer:
                    name = "/" + entry.name.lstrip("./")
                    (whiteouts if "/.wh." in name else paths).append(name)
                    if not (entry.isfile() and needles):
                        continue
                    data, tail = layer.extractfile(entry), b""
                    while chunk := data.read(1 << 23):
                        buf = tail + chunk
                        hits.update(k for k, v in needles.items() if v in buf)
                        tail = buf[-keep:]
    assert proc.wait(timeout=60) == 0, f"podman save {image} failed"
    return paths, whiteouts, sorted(hits)


@pytest.mark.parametrize("image", [RUNNER_IMAGE, OPERATOR_IMAGE])
def test_image_size_and_nothing_of_the_build_inside(podman, images, image):
    size_mb = int(json.loads(podman.cmd("image", "inspect", image).stdout)[0]["Size"]) / 1e6
    print(f"\n[{image}] {size_mb:.0f} MB")
    assert size_mb < MAX_MB[image]

    # No credentials in the image's environment or its recorded build steps.
    config = image_config(podman, image)
    env_names = [e.split("=", 1)[0] for e in config.get("Env", [])]
    assert not [n for n in env_names if SECRET_NAME.search(n)], env_names
    history = podman.cmd("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    for needle in ("/etc/pip.conf", "--volume", "://", "@", ACCESS_KEY, SECRET_KEY):
        hits = [line[:200] for line in history.splitlines() if needle in line]
        assert not hits, f"{needle!r} in the image history: {hits}"

    # No caches, pip configuration, sources or build venv in any layer; nothing deleted late
    # (whiteouts); no secret of this machine's environment in any file.
    needles = {"test secret": SECRET_KEY.encode()}
    needles.update(
        {f"${k}": v.encode() for k, v in os.environ.items() if HOST_SECRET.search(k) and len(v) >= 8}
    )
    paths, whiteouts, found = scan_layers(podman, image, needles)
    leftovers = [
        p
        for p in paths
        if LEFTOVER_NAMES.intersection(p.split("/"))
        or (p.startswith(LEFTOVER_DIRS) and p.rstrip("/") + "/" not in LEFTOVER_DIRS)
        or (p.endswith(".whl") and not p.startswith(ALLOWED_WHEELS))
    ]
    assert not leftovers, f"build leftovers in {image}: {leftovers[:20]}"
    assert not whiteouts, f"files deleted by a later layer still ship in {image}: {whiteouts[:20]}"
    assert not found, f"secrets in {image}'s layers: {found}"

    # No pip in the image's venv, and nothing under /opt or /usr writable by the image's user.
    check = podman.cmd(
        *podman.run_args("none"),
        "--rm",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "/opt/venv/bin/python -m pip --version >/dev/null 2>&1 && echo pip-present; "
        "find /opt /usr -xdev -writable -print 2>/dev/null | head -5; id -u",
    ).stdout.split()
    assert check == [config["User"].split(":")[0]], check
