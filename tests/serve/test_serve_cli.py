"""``sparsifyctl serve`` through its real entry point: a subprocess on a free port, metadata
and inference with tritonclient, a graceful SIGTERM, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from sparsifyctl.cli import main

from .conftest import expected, linear_onnx, metric


def _start(*args: str) -> tuple[subprocess.Popen, str, str]:
    cmd = [
        sys.executable,
        "-c",
        "from sparsifyctl.cli import main; main()",
        "serve",
        *args,
        "--port",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stderr.readline()
    found = re.search(r"http://(127\.0\.0\.1:\d+)/v2/models/(\S+)", line)
    if not found:
        proc.kill()
        pytest.fail(f"server did not start: {line}{proc.stderr.read()}")
    return proc, found.group(1), found.group(2)


def test_serve_subprocess_infers_and_stops_gracefully(tmp_path, linear_model):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    linear_onnx(run_dir / "model.onnx")
    (run_dir / "report.json").write_text(
        json.dumps({"experiment": {"name": "exp-7", "deploy": {"batchSize": 4}}}), encoding="utf-8"
    )
    # a long batching window keeps a lone request in flight while SIGTERM arrives
    proc, host, name = _start(str(run_dir), "--max-delay-ms", "1500")
    try:
        assert name == "exp-7"  # the experiment's name from report.json
        client = httpclient.InferenceServerClient(host)
        assert client.is_server_live()
        assert client.get_model_metadata(name)["inputs"][0]["shape"] == [-1, 4]
        x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
        answer: dict = {}

        def in_flight() -> None:
            c = httpclient.InferenceServerClient(host, network_timeout=60)
            item = httpclient.InferInput("x", [1, 4], "FP32")
            item.set_data_from_numpy(x)
            try:
                answer["y"] = c.infer(name, [item]).as_numpy("y")
            except Exception as err:
                answer["error"] = err

        thread = threading.Thread(target=in_flight)
        thread.start()
        deadline = time.monotonic() + 30
        while True:  # the request is inside the server (the scrape itself counts as 1)
            text = requests.get(f"http://{host}/metrics", timeout=30).text
            if metric(text, "sparsify_serve_requests_in_flight", model=name) >= 2:
                break
            assert time.monotonic() < deadline, "the request never reached the server"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        thread.join(timeout=60)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "error" not in answer, answer.get("error")
    np.testing.assert_allclose(answer["y"], expected(x), rtol=1e-5, atol=1e-6)
    assert code == 0
    assert "stopped" in proc.stderr.read()


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx"], "model 'missing.onnx' does not exist"),
        (["{linear}", "--task", "object-detection"], "serving a detector with --task is not built yet"),
        (["{linear}", "--task", "image-classification"], "has no 'sparsify.serving' metadata"),
        (["{linear}", "--task", "translation"], "--task 'translation' is not supported"),
        (["{linear}", "--device", "tpu"], "--device must be cpu or cuda"),
        (["{folder}"], "is a folder without model.onnx"),
        (["{notonnx}"], "cannot be loaded by onnxruntime"),
    ],
)
def test_serve_bad_input_is_one_line_exit_2(tmp_path, linear_model, capsys, args, message):
    notonnx = tmp_path / "bad.onnx"
    notonnx.write_text("not a model")
    values = {"linear": str(linear_model), "folder": str(tmp_path), "notonnx": str(notonnx)}
    code, err = _cli(["serve", *(a.format(**values) for a in args), "--port", "0"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_serve_port_in_use_is_one_line(linear_model, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code, err = _cli(["serve", str(linear_model), "--port", str(taken.getsockname()[1])], capsys)
    assert code == 2 and "cannot listen on 127.0.0.1" in err and len(err.strip().splitlines()) == 1
