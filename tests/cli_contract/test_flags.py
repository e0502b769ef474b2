"""The original ``sparsify.run`` flags, parsed and validated through ``sparsifyctl`` in-process:
``--optim-level`` percentages, the use-case registry and aliases, ``--eval-metric``,
``--train-samples`` / ``--val-samples``, ``--working-dir``; and the same spec in YAML for
the operator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_bad, run_cli
from sparsify_runner.spec import TRAINING_USE_CASES

S3 = ["--model", "s3://b/model.pt", "--data", "s3://b/data/"]


def _generate(capsys, kind: str, *flags: str) -> dict:
    if "-o" not in flags and "--working-dir" not in flags:
        flags = (*flags, "-o", "s3://b/out/")
    code, out, err = run_cli(["generate", kind, *flags], capsys)
    assert code == 0, err
    return yaml.safe_load(out)["spec"]["experiment"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [("0", 0.0), ("0.5", 0.5), ("1", 1.0), ("50", 0.5), ("80", 0.8), ("100", 1.0), ("2", 0.02)],
)
def test_optim_level_fraction_or_integer_percent(capsys, given, expected):
    exp = _generate(capsys, "one-shot", "--use-case", "ic", *S3, "--optim-level", given, "-o", "s3://b/o/")
    assert exp["optimLevel"] == pytest.approx(expected)


@pytest.mark.parametrize("given", ["1.5", "150", "-0.1", "100.5"])
def test_optim_level_out_of_range_is_one_line(capsys, given):
    assert_bad(
        ["generate", "one-shot", "--use-case", "ic", *S3, "--optim-level", given],
        capsys,
        "--optim-level ",
        "integer percentage in (1, 100]",
        f"got {given.rstrip('0').rstrip('.') if '.' in given else given}",
    )


REGISTRY = {
    "image-classification": [
        "image_classification",
        "Image Classification",
        "IC",
        "classification",
        "cv-classification",
    ],
    "object-detection": ["object_detection", "od", "Detection", "cv-detection", "yolo"],
    "segmentation": ["segmentation", "cv-segmentation", "seg"],
    "text-classification": ["text_classification", "nlp-text_classification", "GLUE", "text classification"],
    "question-answering": ["question_answering", "QA", "nlp-question_answering", "question answering"],
    "token-classification": [
        "token_classification",
        "NER",
        "nlp-token_classification",
        "named entity recognition",
    ],
    "masked-language-modeling": ["masked_language_modeling", "mlm", "Masked Language Modeling"],
    "information-retrieval": ["information_retrieval", "IR", "nlp-information-retrieval"],
    "multilabel-text-classification": [
        "multilabel_text_classification",
        "nlp-multilabel_text_classification",
    ],
}
# sequence classification under another name: trains as text-classification
SEQUENCE_CLASSIFICATION = [
    "sentiment_analysis",
    "Sentiment-Analysis",
    "sentiment",
    "nlp-sentiment_analysis",
    "document_classification",
    "nlp-document_classification",
    "document classification",
]


@pytest.mark.parametrize(("canonical", "alias"), [(c, a) for c, names in REGISTRY.items() for a in names])
def test_every_use_case_of_the_registry_is_accepted_for_one_shot(capsys, canonical, alias):
    exp = _generate(
        capsys, "one-shot", "--use-case", alias, "--model", "s3://b/m.onnx", "--data", "s3://b/d/"
    )
    assert exp["useCase"] == canonical


@pytest.mark.parametrize("alias", SEQUENCE_CLASSIFICATION)
def test_sentiment_and_document_classification_train_as_text_classification(capsys, alias):
    exp = _generate(capsys, "training-aware", "--use-case", alias, *S3)
    assert exp["useCase"] == "text-classification"


@pytest.mark.parametrize("kind", ["training-aware", "sparse-transfer"])
@pytest.mark.parametrize("alias", REGISTRY["object-detection"])
def test_object_detection_trains_under_every_alias(capsys, alias, kind):
    exp = _generate(capsys, kind, "--use-case", alias, *S3, "--eval-metric", "mAP@0.5")
    assert exp["useCase"] == "object-detection" and exp["evalMetric"] == "mAP50"


@pytest.mark.parametrize("canonical", [c for c in REGISTRY if c not in TRAINING_USE_CASES])
@pytest.mark.parametrize("kind", ["training-aware", "sparse-transfer"])
def test_use_cases_without_training_get_one_line_naming_the_trainable_ones(capsys, canonical, kind):
    assert_bad(
        ["generate", kind, "--use-case", REGISTRY[canonical][0], *S3],
        capsys,
        f"use case '{canonical}' is not supported for {kind}",
        "image-classification, text-classification",
        "sentiment-analysis",
        "one-shot",
    )


def test_eval_metrics(capsys):
    for metric in ("accuracy", "f1", "recall", "fidelity"):
        exp = _generate(capsys, "training-aware", "--use-case", "ic", *S3, "--eval-metric", metric)
        assert exp["evalMetric"] == metric
    assert (
        _generate(capsys, "one-shot", "--use-case", "od", *S3, "--eval-metric", "map")["evalMetric"] == "mAP"
    )
    assert_bad(
        ["generate", "training-aware", "--use-case", "ic", *S3, "--eval-metric", "mAP"],
        capsys,
        "eval metric 'mAP' is for object-detection",
    )
    assert_bad(
        ["generate", "training-aware", "--use-case", "ic", *S3, "--eval-metric", "top5"],
        capsys,
        "--eval-metric 'top5'",
    )


def test_sample_limits(capsys):
    exp = _generate(
        capsys, "training-aware", "--use-case", "ic", *S3, "--train-samples", "100", "--val-samples", "20"
    )
    assert (exp["trainSamples"], exp["valSamples"]) == (100, 20)
    assert_bad(
        ["generate", "training-aware", "--use-case", "ic", *S3, "--train-samples", "0"],
        capsys,
        "--train-samples 0",
    )


def test_working_dir_is_the_outputs_parent(capsys, tmp_path):
    exp = _generate(
        capsys, "one-shot", "--use-case", "ic", *S3, "--working-dir", "s3://b/work/", "--name", "exp1"
    )
    assert exp["output"] == "s3://b/work/exp1"
    generated = _generate(capsys, "one-shot", "--use-case", "ic", *S3, "--working-dir", "s3://b/work")[
        "output"
    ]
    assert generated.startswith("s3://b/work/one-shot-") and len(generated) > len("s3://b/work/one-shot-")
    assert_bad(
        ["generate", "one-shot", "--use-case", "ic", *S3, "--working-dir", "s3://b/w", "-o", "s3://b/o"],
        capsys,
        "--output and --working-dir both given",
    )
    out = tmp_path / "work"
    assert_bad(
        [
            "run",
            "one-shot",
            "--use-case",
            "ic",
            *S3,
            "--working-dir",
            str(out),
            "-o",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
        "--output and --working-dir both given",
        out=out,
    )


def test_percent_optim_level_in_a_yaml_experiment_behaves_as_on_the_cli(tmp_path, capsys):
    """The operator reads the same pydantic spec: optimLevel 50 in a manifest is 0.5 in the
    runner's Job, and the generated CRD schema admits it."""
    import jsonschema
    from sparsify_operator import crd
    from sparsify_operator.jobs import build_job
    from sparsify_operator.settings import OperatorSettings
    from sparsify_runner.spec import load_experiment

    exp = {
        "type": "one-shot",
        "useCase": "Image_Classification",
        "model": "s3://b/m.onnx",
        "data": "s3://b/d/",
        "optimLevel": 50,
        "output": "s3://b/o/",
    }
    manifest = {
        "apiVersion": "sparsify.dev/v1alpha1",
        "kind": "SparsifyExperiment",
        "metadata": {"name": "pct", "namespace": "default", "uid": "u1"},
        "spec": {"experiment": exp},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    assert load_experiment(str(path)).optim_level == 0.5
    schema = crd.experiment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(exp, schema["properties"]["spec"]["properties"]["experiment"])
    job = build_job(manifest, OperatorSettings())
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    runner_exp = json.loads(args[args.index("--experiment") + 1])
    assert runner_exp["optimLevel"] == 0.5 and runner_exp["useCase"] == "image-classification"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**exp, "optimLevel": 150}, schema["properties"]["spec"]["properties"]["experiment"]
        )


def test_committed_crd_has_the_contract_fields():
    """(tests/operator/test_crd.py keeps the committed YAML in sync with the models)"""
    committed = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "crds" / "sparsifyexperiments.sparsify.dev.yaml").read_text()
    )
    props = committed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    exp = props["experiment"]["properties"]
    assert exp["optimLevel"]["maximum"] == 100 and "recall" in exp["evalMetric"]["enum"]
    assert "trainSamples" in exp and "valSamples" in exp


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"sparsifyctl {version('sparsify-k8s')}"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--objective", "fast"], "--objective 'fast': Input should be 'speed' or 'size'"),
        (["--max-accuracy-drop", "2"], "--max-accuracy-drop 2.0: Input should be less than or equal to 1"),
        (["--deploy-batch-size", "0"], "--deploy-batch-size 0: Input should be greater than or equal to 1"),
        (["--structure", "rows"], "--structure 'rows': Input should be 'unstructured' or 'channels'"),
    ],
)
def test_bad_flag_values_name_the_flag_the_user_typed(capsys, flags, expected):
    assert_bad(["generate", "one-shot", "--use-case", "ic", *S3, *flags], capsys, expected)


def test_a_mistyped_use_case_gets_the_close_name_and_custom_is_explicit(capsys):
    assert_bad(
        ["generate", "one-shot", "--use-case", "imgae-classification", *S3],
        capsys,
        "--use-case 'imgae-classification':",
        "did you mean image-classification?",
        "custom:imgae-classification",
    )
    exp = _generate(capsys, "one-shot", "--use-case", "custom:imgae-classification", *S3, "-o", "s3://b/o/")
    assert exp["useCase"] == "custom:imgae-classification"
    exp = _generate(capsys, "one-shot", "--use-case", "my-sensor", *S3, "-o", "s3://b/o/")
    assert exp["useCase"] == "my-sensor"  # not close to a known name: a custom use case as before
