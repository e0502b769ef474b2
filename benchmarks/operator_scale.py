"""Operator scale benchmark: N SparsifyExperiments against kmock's Kubernetes emulator.

The real operator process (``sparsify-operator --all-namespaces``) runs against an
in-process emulator; the benchmark creates N experiments at once and measures

* time until every experiment has its Job,
* per-experiment reconcile latency (create request -> status.jobName written), p50/p99,
* the operator process's memory (RSS now and peak, from /proc).

Prints JSON. Usage: ``python benchmarks/operator_scale.py [--n 100 --n 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

from op_harness import EXP, JOBS, Cluster, experiment  # noqa: E402

NS = "bench"


def _rss_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": out.get("VmRSS", 0.0), "peak_rss_mb": out.get("VmHWM", 0.0)}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _one(n: int) -> dict:
    async with Cluster() as c:
        await c.secret(NS, "s3-creds")
        env = {**os.environ, "KUBECONFIG": c.kubeconfig, "SPARSIFY_PEERING": ""}
        log_path = Path(tempfile.mkdtemp(prefix="operator-bench-")) / "operator.log"
        log = log_path.open("w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from sparsify_operator.main import main; main()",
                "--all-namespaces",
                "--liveness",
                "",
                "--metrics-port",
                "0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            await asyncio.sleep(3.0)  # operator start-up (imports, API discovery, watches)
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited; log: {log_path}")
            idle = _rss_mb(proc.pid)
            created: dict[str, float] = {}
            done: dict[str, float] = {}
            start = time.perf_counter()

            async def create(i: int) -> None:
                name = f"exp-{i:05d}"
                created[name] = time.perf_counter()
                await c.create(EXP, experiment(name, namespace=NS))

            sem = asyncio.Semaphore(50)

            async def limited(i: int) -> None:
                async with sem:
                    await create(i)

            creating = asyncio.gather(*(limited(i) for i in range(n)))
            deadline = time.monotonic() + max(120.0, n * 0.5)
            peak = idle
            while len(done) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(done)}/{n} reconciled; operator log: {log_path}")
                for obj in await c.list(EXP, NS):
                    name = obj["metadata"]["name"]
                    if name not in done and (obj.get("status") or {}).get("jobName"):
                        done[name] = time.perf_counter()
                peak = max(peak, _rss_mb(proc.pid), key=lambda r: r["rss_mb"])
                await asyncio.sleep(0.05)
            await creating
            jobs = await c.list(JOBS, NS)
            all_jobs_s = time.perf_counter() - start
            latencies = [done[k] - created[k] for k in done]
            mem = _rss_mb(proc.pid)
            return {
                "experiments": n,
                "jobs_created": len(jobs),
                "time_to_all_jobs_s": round(all_jobs_s, 2),
                "throughput_experiments_per_s": round(n / all_jobs_s, 1),
                "reconcile_latency_p50_ms": round(_pct(latencies, 0.5) * 1000, 1),
                "reconcile_latency_p99_ms": round(_pct(latencies, 0.99) * 1000, 1),
                "reconcile_latency_mean_ms": round(statistics.fmean(latencies) * 1000, 1),
                "operator_rss_idle_mb": idle["rss_mb"],
                "operator_rss_after_mb": mem["rss_mb"],
                "operator_peak_rss_mb": mem["peak_rss_mb"],
            }
        finally:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="experiments per run (repeatable)")
    args = parser.parse_args()
    sizes = args.n or [100, 1000]
    results = [asyncio.run(_one(n)) for n in sizes]
    print(
        json.dumps(
            {
                "benchmark": "operator_scale",
                "setup": "real sparsify-operator process vs kmock emulator on loopback; latency = create -> "
                "status.jobName; emulator runs in the benchmark process (shared CPU)",
                "cpu_count": os.cpu_count(),
                "runs": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
