"""Load test of ``sparsifyctl serve`` on loopback, with the Triton HTTP client (tritonclient).

Starts ``sparsifyctl serve MODEL --port 0`` (or uses ``--url`` of a running server), sends
``--requests`` inference requests from ``--concurrency`` threads (one client each), checks
every answer against a direct onnxruntime run of the same model on the same input, stops
the server with SIGTERM, and prints JSON: p50/p90/p99/mean latency, throughput, errors
(failed requests) and wrong answers (both 0 expected), and the mean batch size the server's
dynamic batcher formed (from its /metrics). Without MODEL it builds a small MLP.

    .venv/bin/python benchmarks/serve_load.py [MODEL] [--requests 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32}


def build_mlp(path: Path, features: int = 256, hidden: int = 512, classes: int = 10) -> Path:
    """x FP32 [batch, features] -> Gemm -> Relu -> Gemm -> y [batch, classes]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _inputs(metadata: dict, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for t in metadata["inputs"]:
        shape = [rows if i == 0 and d == -1 else (d if d > 0 else 1) for i, d in enumerate(t["shape"])]
        dtype = DTYPES.get(t["datatype"])
        if dtype is None:
            raise SystemExit(
                f"input '{t['name']}' has datatype {t['datatype']}; this load test sends numbers only"
            )
        values = rng.standard_normal(shape) if np.dtype(dtype).kind == "f" else rng.integers(0, 2, shape)
        out[t["name"]] = values.astype(dtype)
    return out


def run_load(
    host: str,
    model_name: str,
    model_path: Path | str,
    *,
    requests: int = 2000,
    concurrency: int = 8,
    rows: int = 1,
    binary: bool = True,
    seed: int = 0,
) -> dict:
    """``requests`` infers from ``concurrency`` threads; every answer is compared with a
    direct onnxruntime run (rtol 1e-4). Latencies are per request, client side."""
    import onnxruntime as ort
    import tritonclient.http as httpclient

    metadata = httpclient.InferenceServerClient(host).get_model_metadata(model_name)
    reference = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out_names = [o["name"] for o in metadata["outputs"]]
    rng = np.random.default_rng(seed)
    pool = [_inputs(metadata, rows, rng) for _ in range(min(requests, 64))]
    expected = [dict(zip(out_names, reference.run(out_names, feeds), strict=True)) for feeds in pool]
    latencies: list[float] = []
    failures: list[str] = []
    wrong = [0]
    lock = threading.Lock()
    next_index = [0]

    def worker() -> None:
        client = httpclient.InferenceServerClient(host, connection_timeout=60, network_timeout=60)
        while True:
            with lock:
                n = next_index[0]
                next_index[0] += 1
            if n >= requests:
                break
            feeds = pool[n % len(pool)]
            inputs = []
            for name, arr in feeds.items():
                item = httpclient.InferInput(name, list(arr.shape), metadata_datatype[name])
                item.set_data_from_numpy(arr, binary_data=binary)
                inputs.append(item)
            outputs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in out_names]
            started = time.perf_counter()
            try:
                result = client.infer(model_name, inputs, outputs=outputs)
            except Exception as err:  # counted, reported: the load test must not stop on one failure
                with lock:
                    failures.append(f"{type(err).__name__}: {err}"[:200])
                continue
            elapsed = time.perf_counter() - started
            ok = all(
                np.allclose(result.as_numpy(o), expected[n % len(pool)][o], rtol=1e-4, atol=1e-5)
                for o in out_names
            )
            with lock:
                latencies.append(elapsed)
                wrong[0] += 0 if ok else 1
        client.close()

    metadata_datatype = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    threads = [threading.Thread(target=worker, name=f"load-{i}") for i in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000.0 if latencies else np.array([float("nan")])
    return {
        "requests": requests,
        "concurrency": concurrency,
        "rows_per_request": rows,
        "binary_data": binary,
        "completed": len(latencies),
        "errors": len(failures),
        "first_error": failures[0] if failures else None,
        "wrong": wrong[0],
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "throughput_rps": round(len(latencies) / wall, 1) if wall > 0 else None,
        "wall_s": round(wall, 3),
    }


def batch_stats(url: str, model_name: str) -> dict:
    """Mean rows per onnxruntime call, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            wanted = s.name in ("sparsify_serve_batch_size_sum", "sparsify_serve_batch_size_count")
            if wanted and s.labels.get("model") == model_name:
                values[s.name] = s.value
    count = values.get("sparsify_serve_batch_size_count", 0.0)
    rows = values.get("sparsify_serve_batch_size_sum", 0.0)
    return {"onnxruntime_calls": int(count), "mean_batch_rows": round(rows / count, 3) if count else None}


def _start_server(model: Path, extra: list[str]) -> tuple[subprocess.Popen, str, str]:
    cmd = [sys.executable, "-c", "from sparsifyctl.cli import main; main()", "serve", str(model)]
    proc = subprocess.Popen(
        [*cmd, "--port", "0", *extra], stderr=subprocess.PIPE, text=True, env={**os.environ}
    )
    line = proc.stderr.readline()
    found = re.search(r"http://([^/\s]+)/v2/models/(\S+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {line.strip()} {proc.stderr.read()[-2000:]}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    return proc, found.group(1), found.group(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="ONNX file or run folder (default: a small MLP built here)")
    parser.add_argument("--url", help="host:port of a running server (then MODEL must be given too)")
    parser.add_argument("--name", help="model name on that server (default: from the server)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1, help="rows (batch) per request")
    parser.add_argument("--json-data", action="store_true", help="JSON tensors instead of binary")
    parser.add_argument("--server-args", default="", help="extra sparsifyctl serve flags, e.g. '--threads 2'")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else build_mlp(Path(tmp) / "mlp.onnx")
        if model.is_dir():
            model = model / "model.onnx"
        proc = None
        if args.url:
            host, name = args.url.removeprefix("http://"), args.name or model.stem
        else:
            proc, host, name = _start_server(model, args.server_args.split())
        try:
            result = run_load(
                host,
                name,
                model,
                requests=args.requests,
                concurrency=args.concurrency,
                rows=args.rows,
                binary=not args.json_data,
            )
            result.update(batch_stats(f"http://{host}", name), model=str(args.model or "mlp 256-512-10"))
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                result_code = proc.wait(timeout=60)
        if proc is not None:
            result["server_exit_code"] = result_code
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
