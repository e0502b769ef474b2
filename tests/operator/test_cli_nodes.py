"""`sparsifyctl generate --nodes` through the real entry point: a training run on several
nodes, and one line naming the flag for one-shot or an out-of-range count."""

from __future__ import annotations

import subprocess
import sys

import yaml
from sparsify_operator.jobset import build_jobset
from sparsify_operator.settings import OperatorSettings

CTL = [sys.executable, "-c", "from sparsifyctl.cli import main; main()"]
TRAINING = ["--use-case", "ic", "--model", "s3://m/resnet.pt", "--arch", "resnet18", "--data", "s3://d/img/"]
TRAINING += ["--optim-level", "0.5", "--output", "s3://o/run"]
ONE_SHOT = ["--use-case", "ic", "--model", "s3://m/m.onnx", "--data", "s3://d/calib/", "--output", "s3://o/x"]


def _generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CTL, "generate", *args], capture_output=True, text=True, timeout=120)


def test_nodes_and_gpus_become_a_jobset_manifest():
    proc = _generate("training-aware", *TRAINING, "--nodes", "2", "--gpus", "4")
    assert proc.returncode == 0, proc.stderr
    cr = yaml.safe_load(proc.stdout)
    assert cr["spec"]["nodes"] == 2 and cr["spec"]["gpus"] == 4
    js = build_jobset({**cr, "metadata": {**cr["metadata"], "uid": "u"}}, OperatorSettings())
    env = {
        e["name"]: e.get("value")
        for e in js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "4"


def test_without_nodes_the_manifest_leaves_the_default():
    proc = _generate("training-aware", *TRAINING)
    assert proc.returncode == 0, proc.stderr
    assert "nodes" not in yaml.safe_load(proc.stdout)["spec"]


def test_one_shot_on_several_nodes_is_one_line_naming_the_flag():
    proc = _generate("one-shot", *ONE_SHOT, "--nodes", "2")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: spec.nodes:") and "(set with --nodes)" in line


def test_out_of_range_nodes_name_the_flag():
    proc = _generate("training-aware", *TRAINING, "--nodes", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --nodes must be between 1 and 64, got 0"
