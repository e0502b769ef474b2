"""Two torchrun "nodes" on loopback (gloo, CPU) run the command line the operator's JobSet
renders (``jobset.build_jobset``: ``torchrun -m sparsify_runner.cli run ...`` with the ``PET_*``
rendezvous variables) and train the same model as one process with the same global batch.

The model is a tiny BERT without dropout, the data text (no augmentation), QAT and INT8 off:
nothing in the run then depends on which process saw which sample, so DistributedDataParallel's
averaged gradients over two local batches of B equal one process's gradients over the 2B
samples of the same global batch (``_EpochSampler`` deals sample i of a global batch to rank
i % world), up to float summation order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import FAST_TIMINGS, FILLER, NEGATIVE, POSITIVE
from helpers import report
from safetensors.torch import load as load_safetensors
from sparsify_operator.jobs import build_job
from sparsify_operator.jobset import build_jobset
from sparsify_operator.settings import OperatorSettings

# end-to-end runs of the real CLI in subprocesses (-m 'not slow' skips them)
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PER_NODE_BATCH = 4
NODES = 2


@pytest.fixture(scope="module")
def bert_without_dropout(tmp_path_factory) -> Path:
    """The conftest's tiny BERT with dropout off: training is then deterministic per sample."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
    )
    BertForSequenceClassification(config).save_pretrained(str(folder))
    return folder


def _experiment(model: str, data: str, output: str, batch_size: int) -> dict[str, Any]:
    return {
        "type": "training-aware",
        "useCase": "text-classification",
        "model": model,
        "data": data,
        "optimLevel": 0.5,
        "trainKwargs": {"epochs": 2, "dense_epochs": 0, "batch_size": batch_size, "lr": 0.002},
        "recipeArgs": {**FAST_TIMINGS, "qat": False, "quantize": False},
        "output": output,
    }


def _cr(nodes: int, batch_size: int) -> dict[str, Any]:
    """The experiment as a cluster would hold it (s3:// URIs; the test swaps in local paths)."""
    exp = _experiment("s3://models/bert/", "s3://data/text/", "s3://out/run", batch_size)
    return {
        "apiVersion": "sparsify.dev/v1alpha1",
        "kind": "SparsifyExperiment",
        "metadata": {"name": "rdzv", "namespace": "ml", "uid": "u-1"},
        "spec": {"experiment": exp, "gpus": 0, "nodes": nodes},
    }


def _local(args: list[str], spec: Path) -> list[str]:
    """The rendered arguments with the inline experiment replaced by a local experiment file."""
    i = args.index("--experiment") + 1
    return [*args[:i], str(spec), *args[i + 1 :]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hf_weights(out: Path) -> dict[str, torch.Tensor]:
    with tarfile.open(out / "model-hf.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("model.safetensors"))
        return load_safetensors(tar.extractfile(member).read())


def _base_env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "SPARSIFY_NO_PROGRESS": "1",
        "SPARSIFY_TERMINATION_LOG": str(tmp / "termination.json"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def test_two_nodes_on_loopback_train_the_model_one_process_trains(
    bert_without_dropout: Path, text_data: Path, tmp_path: Path
):
    # -- two "nodes": the JobSet's pod command, PET_* as the pod would see them ------------------
    js = build_jobset(_cr(NODES, PER_NODE_BATCH), OperatorSettings())
    pod = js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    assert pod["command"] == ["torchrun"]
    rendered = {e["name"]: e for e in pod["env"] if e["name"].startswith("PET_")}
    assert set(rendered) == {
        "PET_NNODES",
        "PET_NPROC_PER_NODE",
        "PET_NODE_RANK",
        "PET_MASTER_ADDR",
        "PET_MASTER_PORT",
    }
    multi_out = tmp_path / "multi"
    multi_spec = tmp_path / "multi.yaml"
    multi_spec.write_text(
        yaml.safe_dump(_experiment(str(bert_without_dropout), str(text_data), str(multi_out), PER_NODE_BATCH))
    )
    port = str(_free_port())
    procs = []
    for rank in range(NODES):
        env = _base_env(tmp_path / f"node{rank}")
        (tmp_path / f"node{rank}").mkdir()
        env.update(
            PET_NNODES=rendered["PET_NNODES"]["value"],
            PET_NPROC_PER_NODE=rendered["PET_NPROC_PER_NODE"]["value"],
            PET_NODE_RANK=str(rank),  # the pod's completion index (downward API)
            PET_MASTER_ADDR="127.0.0.1",  # pod 0's DNS name in the cluster
            PET_MASTER_PORT=port,
        )
        cmd = [str(BIN / pod["command"][0]), *_local(pod["args"], multi_spec)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for rank, (proc, text) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"node {rank}:\n{text[-4000:]}"
    summary = json.loads((tmp_path / "node0" / "termination.json").read_text())
    assert summary["status"] == "succeeded"

    # -- one process, the same global batch: the Job's command for one node, one process --------
    job = build_job(_cr(1, NODES * PER_NODE_BATCH), OperatorSettings())
    single = job["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in single, "the image's ENTRYPOINT: sparsify-runner"
    single_out = tmp_path / "single"
    single_spec = tmp_path / "single.yaml"
    single_spec.write_text(
        yaml.safe_dump(
            _experiment(str(bert_without_dropout), str(text_data), str(single_out), NODES * PER_NODE_BATCH)
        )
    )
    (tmp_path / "single-run").mkdir()
    proc = subprocess.run(
        [str(BIN / "sparsify-runner"), *_local(single["args"], single_spec)],
        env=_base_env(tmp_path / "single-run"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    # -- the same training, the same model ----------------------------------------------------
    multi_r, single_r = report(multi_out), report(single_out)
    steps = [(e["phase"], e["step"]) for e in multi_r["training"]]
    assert steps == [(e["phase"], e["step"]) for e in single_r["training"]]
    assert steps[-1][1] == 2 * 32 // (NODES * PER_NODE_BATCH), "32 samples, global batch 8, 2 epochs"
    multi_w, single_w = _hf_weights(multi_out), _hf_weights(single_out)
    initial = load_safetensors((bert_without_dropout / "model.safetensors").read_bytes())
    assert multi_w.keys() == single_w.keys()
    for name, w in single_w.items():
        m = multi_w[name]
        assert torch.equal(m == 0, w == 0), f"{name}: different pruning masks"
        assert torch.allclose(m, w, rtol=1e-3, atol=1e-4), f"{name}: max diff {(m - w).abs().max():.2e}"
    trained = [
        n for n, w in single_w.items() if n in initial and not torch.allclose(w, initial[n], atol=1e-3)
    ]
    assert len(trained) > len(single_w) // 2, "the comparison is of trained models, not of two untouched ones"
    assert multi_r["settings"]["torch_sparsity"] > 0.3
