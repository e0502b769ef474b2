"""Dynamic batching: the batcher on its own (deterministic), then through the server with
concurrent tritonclient requests, a static-batch model, and the bounded load test."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from sparsify_runner.serve.batching import DynamicBatcher

from .conftest import expected, load_benchmark, metric, serving


def _double(batches: list[int]):
    def run(feeds):
        x = feeds["x"]
        if (x < 0).any():
            raise ValueError("negative input")
        batches.append(x.shape[0])
        return {"y": x * 2}

    return run


def test_batcher_concatenates_groups_and_splits_back():
    batches: list[int] = []
    observed: list[int] = []

    async def scenario():
        b = DynamicBatcher(_double(batches), max_batch_size=4, max_delay_s=5.0, on_batch=observed.append)
        await b.start()
        same = [np.full((1, 3), i, np.float32) for i in range(4)]
        results = await asyncio.gather(*(b.submit({"x": x}) for x in same))  # queued before the worker wakes
        other = [np.ones((2, 3), np.float32), np.ones((1, 5), np.float32), np.ones((6, 3), np.float32)]
        mixed = await asyncio.gather(*(b.submit({"x": x}) for x in other))
        await b.stop()
        return same, results, other, mixed

    same, results, other, mixed = asyncio.run(scenario())
    for x, r in zip(same + other, results + mixed, strict=True):
        np.testing.assert_array_equal(r["y"], x * 2)
    # 4 compatible rows -> one call; then [2,3] and [6,3] cannot share (8 > 4), [1,5] differs in shape
    assert batches == [4, 2, 1, 6]
    assert observed == batches


def test_batcher_isolates_a_failing_request_and_drains_on_stop():
    batches: list[int] = []

    async def scenario():
        b = DynamicBatcher(_double(batches), max_batch_size=8, max_delay_s=5.0)
        await b.start()
        xs = [np.ones((1, 2), np.float32), -np.ones((1, 2), np.float32), np.full((1, 2), 3, np.float32)]
        tasks = [asyncio.ensure_future(b.submit({"x": x})) for x in xs]
        await asyncio.sleep(0)  # all three are queued; stop() must still answer them
        await b.stop()
        return xs, await asyncio.gather(*tasks, return_exceptions=True)

    xs, results = asyncio.run(scenario())
    np.testing.assert_array_equal(results[0]["y"], xs[0] * 2)
    assert isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[2]["y"], xs[2] * 2)
    assert batches == [1, 1]  # the failed batch of 3 was retried one by one


def test_batcher_with_max_one_never_batches():
    batches: list[int] = []

    async def scenario():
        b = DynamicBatcher(_double(batches), max_batch_size=1, max_delay_s=5.0)
        await b.start()
        await asyncio.gather(*(b.submit({"x": np.ones((1, 2), np.float32)}) for _ in range(3)))
        await b.stop()

    asyncio.run(scenario())
    assert batches == [1, 1, 1]


def _concurrent_infers(host: str, name: str, xs: list[np.ndarray]) -> list[np.ndarray]:
    barrier = threading.Barrier(len(xs))
    results: list[np.ndarray | Exception] = [None] * len(xs)

    def one(i: int) -> None:
        client = httpclient.InferenceServerClient(host)
        item = httpclient.InferInput("x", list(xs[i].shape), "FP32")
        item.set_data_from_numpy(xs[i])
        barrier.wait()
        try:
            results[i] = client.infer(name, [item]).as_numpy("y")
        except Exception as err:
            results[i] = err
        client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_server_batches_concurrent_requests(linear_model):
    # a long window: the first request waits for company (a full batch of 4 goes at once)
    with serving(linear_model, max_batch_size=4, max_delay_ms=5000) as server:
        assert server.app.state.max_batch_size == 4
        xs = [np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32) for i in range(8)]
        results = _concurrent_infers(server.host, server.name, xs)
        for x, y in zip(xs, results, strict=True):
            assert not isinstance(y, Exception), y
            np.testing.assert_allclose(y, expected(x), rtol=1e-5, atol=1e-6)
        text = requests.get(f"{server.url}/metrics", timeout=30).text
    calls = metric(text, "sparsify_serve_batch_size_count", model="linear")
    singles = metric(text, "sparsify_serve_batch_size_bucket", model="linear", le="1.0")
    assert metric(text, "sparsify_serve_batch_size_sum", model="linear") == 8  # every row ran once
    assert calls < 8 and singles < calls  # at least one onnxruntime call carried > 1 request


def test_static_batch_model_is_not_batched(static_model):
    with serving(static_model, max_batch_size=8, max_delay_ms=200) as server:
        assert server.app.state.max_batch_size == 1
        xs = [np.full((1, 4), i, np.float32) for i in range(4)]
        for x, y in zip(xs, _concurrent_infers(server.host, server.name, xs), strict=True):
            np.testing.assert_allclose(y, expected(x), rtol=1e-5)
        body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0.0] * 8}]}
        r = requests.post(f"{server.url}/v2/models/static/infer", json=body, timeout=30)
        assert r.status_code == 400 and "expects [1, 4]" in r.json()["error"]
        text = requests.get(f"{server.url}/metrics", timeout=30).text
    assert metric(text, "sparsify_serve_batch_size_count", model="static") == 4
    assert metric(text, "sparsify_serve_batch_size_bucket", model="static", le="1.0") == 4


@pytest.mark.parametrize("binary", [True, False])
def test_bounded_load_has_no_errors(linear_model, binary):
    """benchmarks/serve_load.py's generator, 200 requests at concurrency 8: every answer is
    compared with a direct onnxruntime run (timings are reported by the benchmark, not tested)."""
    bench = load_benchmark()
    with serving(linear_model) as server:
        result = bench.run_load(
            server.host, server.name, linear_model, requests=200, concurrency=8, rows=2, binary=binary
        )
        stats = bench.batch_stats(server.url, server.name)
    assert result["errors"] == 0, result["first_error"]
    assert result["completed"] == 200 and result["wrong"] == 0
    assert stats["onnxruntime_calls"] >= 1 and stats["mean_batch_rows"] >= 2
