"""`sparsifyctl apply/get/list/watch/logs/delete` through the real CLI against the emulator + operator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from op_harness import EXP, Cluster, running_operator, wait_for
from sparsify_runner.contract import RunSummary
from test_operator_loop import _jobs, _phase

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]
NS = "ml"


async def ctl(c: Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": c.kubeconfig}
    cmd = [sys.executable, "-c", "from sparsifyctl.cli import main; main()", *args]
    return await asyncio.to_thread(subprocess.run, cmd, input=stdin, env=env, capture_output=True, text=True,
                                   timeout=120)


def test_cluster_commands_end_to_end():
    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            async with running_operator([NS]):
                flags = ["--name", "cli-demo", "--use-case", "ic", "--model", "s3://m/model.onnx"]
                flags += ["--data", "s3://d/calib/", "--output", "s3://o/cli-demo", "--secret", "s3-creds"]
                manifest = (await ctl(c, "generate", "one-shot", *flags, "--gpus", "0")).stdout
                applied = await ctl(c, "apply", "-n", NS, "-f", "-", stdin=manifest)
                assert applied.returncode == 0, applied.stderr
                assert applied.stdout.strip() == "sparsifyexperiment/cli-demo created"
                await _phase(c, "cli-demo", "Pending")
                assert len(await _jobs(c)) == 1

                listed = await ctl(c, "list", "-n", NS)
                assert listed.returncode == 0, listed.stderr
                header, row = listed.stdout.splitlines()
                assert header.split()[:3] == ["NAME", "PHASE", "TYPE"]
                assert row.split()[:4] == ["cli-demo", "Pending", "one-shot", "image-classification"]

                # the runner finishes; watch follows to the end and exits 0
                summary = RunSummary(status="succeeded", model_uri="s3://o/cli-demo/model.onnx", speedup=1.5)
                watch = asyncio.create_task(ctl(c, "watch", "cli-demo", "-n", NS, "--interval", "0.2",
                                                "--timeout", "60"))
                await asyncio.sleep(0.5)
                await c.finish_job(NS, "cli-demo-sparsify", exit_code=0, message=summary.to_message())
                watched = await watch
                assert watched.returncode == 0, watched.stderr
                assert "Succeeded" in watched.stdout
                assert "modelUri: s3://o/cli-demo/model.onnx" in watched.stdout

                got = await ctl(c, "get", "cli-demo", "-n", NS, "-o", "json")
                assert json.loads(got.stdout)["status"]["results"]["speedup"] == 1.5

                c.k[f"get /api/v1/namespaces/{NS}/pods/cli-demo-sparsify-x1/log"] << b"stage: prune\ndone\n"
                logs = await ctl(c, "logs", "cli-demo", "-n", NS)
                assert logs.returncode == 0, logs.stderr
                assert logs.stdout == "stage: prune\ndone\n"

                again = await ctl(c, "apply", "-n", NS, "-f", "-", stdin=manifest)
                assert again.stdout.strip() == "sparsifyexperiment/cli-demo configured"
                assert len(await _jobs(c)) == 1

                deleted = await ctl(c, "delete", "cli-demo", "-n", NS)
                assert deleted.returncode == 0, deleted.stderr

                async def gone():
                    return await c.get(EXP, NS, "cli-demo") is None and not await _jobs(c)

                await wait_for(gone, what="deleted")

                missing = await ctl(c, "get", "nope", "-n", NS)
                assert missing.returncode == 2 and missing.stderr.startswith("error: not found")

    asyncio.run(scenario())


def test_apply_rejects_bad_manifest_before_sending(tmp_path):
    bad = tmp_path / "bad.yaml"
    doc = (ROOT / "examples/k8s/one-shot.yaml").read_text().replace("optimLevel: 0.5", "optimLevel: 500")
    bad.write_text(doc)
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-such-kubeconfig")}
    proc = subprocess.run([sys.executable, "-c", "from sparsifyctl.cli import main; main()", "apply",
                           "-f", str(bad)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimLevel" in lines[0] and lines[0].startswith("error: ")
