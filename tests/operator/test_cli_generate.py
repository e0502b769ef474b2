"""`sparsifyctl generate` through the real entry point: one manifest per experiment type."""

from __future__ import annotations

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from conftest import K8S_VERSION
from sparsify_operator.jobs import build_job
from sparsify_operator.models import SparsifyExperiment
from sparsify_operator.settings import OperatorSettings
from test_crd import _experiment_rules_pass

CTL = [sys.executable, "-c", "from sparsifyctl.cli import main; main()"]

CASES = {
    "one-shot": [
        "--use-case",
        "image-classification",
        "--model",
        "s3://m/model.onnx",
        "--data",
        "s3://d/calib/",
        "--optim-level",
        "0.6",
        "--structure",
        "channels",
    ],
    "sparse-transfer": [
        "--use-case",
        "sentiment-analysis",
        "--data",
        "s3://d/sst2/",
        "--optim-level",
        "0.4",
        "--train-kwargs",
        '{"epochs": 2}',
    ],
    "training-aware": [
        "--use-case",
        "ic",
        "--model",
        "s3://m/resnet.pt",
        "--arch",
        "resnet18",
        "--data",
        "s3://d/imagenette/",
        "--teacher",
        "s3://m/teacher.pt",
    ],
}
PLACEMENT = [
    "--gpus",
    "2",
    "--queue",
    "team-a",
    "--image",
    "registry.local/runner:dev",
    "--namespace",
    "ml",
    "--secret",
    "s3-creds",
    "--endpoint",
    "http://minio.minio:9000",
    "--cpu",
    "4",
    "--memory",
    "16Gi",
    "--node-selector",
    "gpu=a100",
    "--output",
    "s3://results/run",
]


def _ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CTL, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("exp_type", sorted(CASES))
def test_generate_each_type(exp_type):
    proc = _ctl("generate", exp_type, *CASES[exp_type], *PLACEMENT, "--name", f"My {exp_type} Run")
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    cr = SparsifyExperiment.model_validate(doc)
    assert cr.metadata == {"name": f"my-{exp_type}-run", "namespace": "ml"}
    assert cr.spec.experiment.type.value == exp_type
    assert (
        cr.spec.gpus == 2 and cr.spec.queue_name == "team-a" and cr.spec.image == "registry.local/runner:dev"
    )
    assert cr.spec.storage.secret_ref.name == "s3-creds" and cr.spec.node_selector == {"gpu": "a100"}
    assert _experiment_rules_pass(doc["spec"]["experiment"]) == []
    doc["metadata"]["uid"] = "11111111-2222-3333-4444-555555555555"
    job = build_job(doc, OperatorSettings())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_generate_same_experiment_as_run_flags():
    """generate and run share the experiment flags: the runner gets the same experiment."""
    from sparsifyctl.experiment_options import build_experiment

    proc = _ctl("generate", "one-shot", *CASES["one-shot"], "--output", "s3://r/x", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    flags = dict(
        use_case="image-classification",
        model="s3://m/model.onnx",
        arch=None,
        data="s3://d/calib/",
        optim_level=0.6,
        objective="speed",
        max_accuracy_drop=None,
        teacher=None,
        recipe=None,
        recipe_args=None,
        train_kwargs=None,
        eval_metric="auto",
        structure="channels",
        pruning_method="obs",
        catalog=None,
        deploy_device="cpu",
        deploy_batch_size=1,
        quant_format="auto",
        output="s3://r/x",
        name=None,
        seed=0,
    )
    assert doc["spec"]["experiment"] == build_experiment("one-shot", **flags).to_wire()
    assert doc["metadata"]["name"].startswith("one-shot-image-classification-")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["one-shot", "--use-case", "ic", "--model", "m.onnx", "--data", "s3://d/", "--output", "s3://o"],
            "--model",
        ),
        (["one-shot", "--use-case", "ic", "--model", "s3://m.onnx", "--data", "s3://d/"], "--output"),
        (["training-aware", "--use-case", "ic", "--data", "s3://d/", "--output", "s3://o"], "needs a model"),
        (
            [
                "one-shot",
                "--use-case",
                "ic",
                "--model",
                "s3://m",
                "--data",
                "s3://d",
                "--output",
                "s3://o",
                "--gpus",
                "99",
            ],
            "--gpus",
        ),
        (
            [
                "one-shot",
                "--use-case",
                "ic",
                "--model",
                "s3://m",
                "--data",
                "s3://d",
                "--output",
                "s3://o",
                "--memory",
                "lots",
            ],
            "--memory",
        ),
        (
            [
                "one-shot",
                "--use-case",
                "ic",
                "--model",
                "s3://m",
                "--data",
                "s3://d",
                "--output",
                "s3://o",
                "--endpoint",
                "minio:9000",
            ],
            "storage.endpoint",
        ),
        (
            [
                "one-shot",
                "--use-case",
                "ic",
                "--model",
                "s3://m",
                "--data",
                "s3://d",
                "--output",
                "s3://o",
                "--optim-level",
                "150",  # 2 would be 2% (the original's integer percentages)
            ],
            "optim",
        ),
        (["zero-shot", "--use-case", "ic"], "unknown experiment type"),
        (
            [
                "one-shot",
                "--use-case",
                "ic",
                "--model",
                "s3://m",
                "--data",
                "s3://d",
                "--output",
                "s3://o",
                "--nodes",
                "2",
            ],
            "one-shot runs in one process on one node",
        ),
        (
            ["training-aware", *CASES["training-aware"], "--output", "s3://o", "--nodes", "0"],
            "--nodes must be between 1 and 64",
        ),
    ],
)
def test_bad_flags_one_line_exit_2(args, expected):
    proc = _ctl("generate", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr


def test_generate_nodes_for_a_multi_node_training_run():
    proc = _ctl("generate", "training-aware", *CASES["training-aware"], *PLACEMENT, "--nodes", "3")
    assert proc.returncode == 0, proc.stderr
    cr = SparsifyExperiment.model_validate(yaml.safe_load(proc.stdout))
    assert (cr.spec.nodes, cr.spec.gpus) == (3, 2)


def test_generate_training_aware_text_generation_passes_the_crd_rules():
    args = ["--use-case", "text-generation", "--model", "s3://m/llm/", "--data", "s3://d/speeches/"]
    proc = _ctl("generate", "training-aware", *args, "--output", "s3://o/run")
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["spec"]["experiment"]["useCase"] == "text-generation"
    assert _experiment_rules_pass(doc["spec"]["experiment"]) == []


def test_crd_command_prints_the_generated_crd():
    from sparsify_operator import crd

    proc = _ctl("crd")
    assert proc.returncode == 0
    assert yaml.safe_load(proc.stdout) == crd.experiment_crd()
    kubernetes_validate.validate(yaml.safe_load(proc.stdout), K8S_VERSION, strict=True)


@pytest.mark.parametrize("exp_type", ["training-aware", "sparse-transfer"])
def test_generate_object_detection_validates_against_the_crd(exp_type):
    """Object detection trains in both training pathways: the manifest passes the CRD's rules
    (use case, mAP50 metric) and becomes a valid Job."""
    model = ["--model", "s3://m/yolo.pt", "--arch", "yolov8n"] if exp_type == "training-aware" else []
    proc = _ctl(
        "generate", exp_type, "--use-case", "yolo", *model, "--data", "s3://d/coco8/",
        "--eval-metric", "map50", *PLACEMENT, "--name", "detect",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    experiment = SparsifyExperiment.model_validate(doc).spec.experiment
    assert experiment.use_case == "object-detection" and experiment.eval_metric == "mAP50"
    assert _experiment_rules_pass(doc["spec"]["experiment"]) == []
    doc["metadata"]["uid"] = "11111111-2222-3333-4444-555555555555"
    kubernetes_validate.validate(build_job(doc, OperatorSettings()), K8S_VERSION, strict=True)
