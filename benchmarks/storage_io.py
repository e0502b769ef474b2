"""Storage I/O benchmark: parallel vs sequential prefix download, cache hit, publish.

Runs against a local S3 endpoint (moto's server on 127.0.0.1), so absolute numbers say
little about AWS/MinIO; the ratios measured side by side in one run are what it shows.
Prints JSON.  Usage: python benchmarks/storage_io.py [--objects 200] [--size-kib 64]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--size-kib", type=int, default=64)
    ap.add_argument("--big-mib", type=int, default=48)
    args = ap.parse_args()

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    tmp = Path(tempfile.mkdtemp(prefix="sparsify-bench-"))
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "SPARSIFY_NO_PROGRESS": "1",
        }
    )
    from sparsify_runner import storage

    try:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        payload = os.urandom(args.size_kib * 1024)
        for i in range(args.objects):
            s3.put_object(Bucket="bench", Key=f"data/{i:05d}.npz", Body=payload)

        def timed_fetch(concurrency: int, cache: str) -> float:
            os.environ["SPARSIFY_S3_CONCURRENCY"] = str(concurrency)
            os.environ["SPARSIFY_CACHE_DIR"] = str(tmp / cache)
            start = time.perf_counter()
            folder = storage.fetch("s3://bench/data/", what="data")
            elapsed = time.perf_counter() - start
            assert len(list(folder.iterdir())) == args.objects
            return elapsed

        sequential = timed_fetch(1, "seq")
        parallel = timed_fetch(8, "par")
        cache_hit = timed_fetch(8, "par")

        staging = tmp / "staging"
        staging.mkdir()
        (staging / "model.onnx").write_bytes(os.urandom(args.big_mib * 1024 * 1024))
        (staging / "report.json").write_text("{}")
        os.environ["SPARSIFY_S3_MULTIPART_THRESHOLD_MB"] = "8"
        start = time.perf_counter()
        storage.OutputLocation("s3://bench/out").publish(
            staging, order=["model.onnx", "report.json"], fingerprint="bench"
        )
        publish = time.perf_counter() - start
        os.environ["SPARSIFY_CACHE_DIR"] = str(tmp / "big")
        start = time.perf_counter()
        storage.fetch("s3://bench/out/model.onnx", what="model")
        big_download = time.perf_counter() - start
    finally:
        server.stop()

    print(
        json.dumps(
            {
                "endpoint": "moto ThreadedMotoServer on 127.0.0.1",
                "objects": args.objects,
                "object_size_kib": args.size_kib,
                "prefix_download_s": {
                    "concurrency_1": round(sequential, 3),
                    "concurrency_8": round(parallel, 3),
                    "cache_hit": round(cache_hit, 3),
                },
                "parallel_speedup": round(sequential / parallel, 2),
                "cache_hit_speedup_vs_parallel": round(parallel / cache_hit, 1),
                "publish_s": {
                    "size_mib": args.big_mib,
                    "multipart_threshold_mib": 8,
                    "seconds": round(publish, 3),
                },
                "verified_download_s": {"size_mib": args.big_mib, "seconds": round(big_download, 3)},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
