"""``sparsify-runner`` with a stand-in pathway, for testing the process contract (exit
codes, termination message, SIGTERM, /metrics during a run) without minutes of compute.

Everything but the pathway is the real runner: CLI, storage, telemetry, publish.
STANDIN_MODE: ok | crash | wait (wait until STANDIN_FLAGS/go exists) | native (block in C);
the pathway writes
STANDIN_FLAGS/started when it begins.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from sparsify_runner import cli, pathways
from sparsify_runner.report import ModelStats, Report


def _pathway(ctx):
    flags = Path(os.environ["STANDIN_FLAGS"])
    ctx.telemetry.stage("prune")
    ctx.telemetry.progress(0.5)
    ctx.telemetry.training_step(2.0, 7, 0.125)
    (flags / "started").write_text(str(os.getpid()))
    mode = os.environ.get("STANDIN_MODE", "ok")
    if mode == "crash":
        raise RuntimeError("stand-in pathway crashed")
    if mode == "native":  # the main thread stuck in C: glibc's system() retries waitpid on EINTR
        import ctypes

        ctypes.CDLL(None).system(
            f"touch '{flags}/in_native'; exec sleep 8 </dev/null >/dev/null 2>&1".encode()
        )
    if mode == "wait":
        while not (flags / "go").exists():
            time.sleep(0.05)
    (ctx.work_dir / "model.onnx").write_bytes(b"stand-in optimized model")
    return Report(
        experiment=ctx.experiment.to_wire(),
        mode="unstructured",
        baseline=ModelStats(file_size_bytes=100, compressed_size_bytes=90),
        optimized=ModelStats(file_size_bytes=24, compressed_size_bytes=20, sparsity=0.5),
        speedup=1.0,
    )


pathways.get_pathway = lambda kind: _pathway

if __name__ == "__main__":
    sys.argv[0] = "sparsify-runner"
    cli.main()
