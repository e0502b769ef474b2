"""A run never writes over its inputs, refuses an already-quantized model and an output it
cannot create: exit 2, one ``error:`` line naming the flag, nothing written, the input's
bytes unchanged. Through the real entry point (``sparsifyctl run one-shot``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

FAST = json.dumps({"benchmark_seconds": 0.1, "int8_candidate_seconds": 0.1})


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _save(path: Path, nodes: list, inits: list, x_shape=(1, 3, 8, 8), y_shape=(1, 3)) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def fp32_model(path: Path) -> Path:
    """x 1x3x8x8 -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y 1x3."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    inits = [
        _init("w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
        _init("b", np.zeros(8, np.float32)),
        _init("fw", rng.standard_normal((3, 8)).astype(np.float32)),
        _init("fb", np.zeros(3, np.float32)),
    ]
    return _save(path, nodes, inits)


def qdq_model(path: Path) -> Path:
    """The FP32 graph with a QuantizeLinear -> DequantizeLinear pair on its input."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("GlobalAveragePool", ["xd"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    inits = [_init("s", np.array(0.05, np.float32)), _init("z", np.array(0, np.uint8))]
    return _save(path, nodes, inits)


def integer_model(path: Path) -> Path:
    """Dynamic quantization's shape: DynamicQuantizeLinear -> MatMulInteger -> Cast."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["m"]),
        helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT),
    ]
    inits = [
        _init("wq", np.ones((4, 3), np.uint8)),
        _init("wz", np.array(0, np.uint8)),
    ]
    return _save(path, nodes, inits, x_shape=(1, 4), y_shape=(1, 3))


def samples(folder: Path, n: int = 24, shape=(3, 8, 8)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        x = rng.standard_normal(shape).astype(np.float32)
        np.savez(folder / f"s{i:03d}.npz", x=x, label=np.int64(i % 3))
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (what must not change)."""
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def one_shot(model: str, data: str, *extra: str) -> list[str]:
    return [
        "run", "one-shot", "--use-case", "my-custom-sensor", "--model", model, "--data", data,
        "--optim-level", "0", "--recipe-args", FAST, "--quiet", *extra,
    ]  # fmt: skip


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """The real ``sparsifyctl`` entry point, in this process: (exit code, stderr)."""
    from sparsifyctl.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, capsys.readouterr().err


def assert_refused(code: int, stderr: str, *expected: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """The user's folder: model.onnx and data/ side by side, and the shell is in it."""
    fp32_model(tmp_path / "model.onnx")
    samples(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- 1. the output would overwrite an input -------------------------------------------------
def test_default_output_next_to_input_model_is_refused_in_a_real_process(workdir):
    """The reported bug: no --output in the folder holding model.onnx overwrote it."""
    before = tree(workdir)
    proc = subprocess.run(
        [sys.executable, "-c", "from sparsifyctl.cli import main; main()", *one_shot("model.onnx", "data")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    line = assert_refused(proc.returncode, proc.stderr, "--output '.'", "--model", "'model.onnx'")
    assert "--output sparsify-output" in line
    assert tree(workdir) == before


@pytest.mark.parametrize(
    ("model", "output"),
    [
        ("./model.onnx", "."),  # relative spellings of the same file
        ("model.onnx", "../" + "{name}"),  # the output spelled from outside
        ("link.onnx", "."),  # a symlink to the file the run would replace
        ("model.onnx", "here"),  # an output folder that is a symlink to the input's folder
        ("model_repository/m/1/model.onnx", "."),  # an input inside a folder the run writes
    ],
)
def test_output_over_an_input_file_is_refused(workdir, capsys, model, output):
    (workdir / "link.onnx").symlink_to(workdir / "model.onnx")
    (workdir / "here").symlink_to(workdir, target_is_directory=True)
    fp32_model(workdir / "model_repository" / "m" / "1" / "model.onnx")
    before = tree(workdir)
    output = output.format(name=workdir.name)
    code, err = run_cli([*one_shot(model, "data"), "--output", output], capsys)
    assert_refused(code, err, f"--output '{output}' would overwrite the --model input '{model}'")
    assert tree(workdir) == before


@pytest.mark.parametrize("output", [None, "results"])
def test_output_in_the_data_folder_is_refused(workdir, capsys, output):
    """--data . and the default output (or a folder inside the data) would publish into the data."""
    os.chdir(workdir / "data")
    before = tree(workdir)
    code, err = run_cli([*one_shot("../model.onnx", "."), *(["--output", output] if output else [])], capsys)
    line = assert_refused(code, err, "would write into the --data folder '.'")
    assert line.endswith("--output ../sparsify-output"), line
    assert tree(workdir) == before


# ---- 2. an already quantized model --------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "found"),
    [
        (qdq_model, "1 QuantizeLinear node, 1 DequantizeLinear node"),
        (integer_model, "1 DynamicQuantizeLinear node, 1 MatMulInteger node"),
    ],
)
def test_already_quantized_model_is_refused(workdir, capsys, build, found):
    build(workdir / "int8.onnx")
    before = tree(workdir)
    code, err = run_cli([*one_shot("int8.onnx", "data"), "--output", "out"], capsys)
    assert_refused(code, err, "--model 'int8.onnx' is already quantized", found, "pass the FP32 model")
    assert tree(workdir) == before
    assert not (workdir / "out").exists()


# ---- 3. an output that cannot be created --------------------------------------------------
@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("notes.txt/out", "--output 'notes.txt/out' is inside 'notes.txt', which is a file"),
        ("notes.txt", "--output 'notes.txt' is a file"),
    ],
)
def test_output_that_is_or_is_under_a_file_is_refused(workdir, capsys, output, expected):
    (workdir / "notes.txt").write_text("keep me\n")
    before = tree(workdir)
    code, err = run_cli([*one_shot("model.onnx", "data"), "--output", output], capsys)
    assert_refused(code, err, expected)
    assert tree(workdir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_unwritable_output_is_refused(workdir, capsys):
    locked = workdir / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, err = run_cli([*one_shot("model.onnx", "data"), "--output", "locked/out"], capsys)
        assert_refused(code, err, "--output 'locked/out' is not writable")
        assert not any(locked.iterdir())
    finally:
        locked.chmod(0o700)


# ---- the normal run next to the inputs still works ----------------------------------------
def test_new_output_folder_next_to_the_inputs_works(workdir, capsys):
    before = sha256(workdir / "model.onnx")
    code, err = run_cli([*one_shot("./model.onnx", "data"), "--output", "new-folder"], capsys)
    assert code == 0, err
    assert sha256(workdir / "model.onnx") == before
    for name in ("model.onnx", "report.json", "report.html", "_SUCCESS.json"):
        assert (workdir / "new-folder" / name).is_file(), name
    leftovers = [*workdir.glob(".sparsify-probe-*"), *(workdir / "new-folder").glob(".sparsify-*")]
    assert not leftovers, leftovers
