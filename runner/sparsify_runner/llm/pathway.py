"""One-shot for ``--use-case text-generation``: validate, measure the dense model, search, ship.

settings and policy (before any loading) -> the dense model (HF folder or dequantized GGUF) ->
calibration / held-out windows -> dense perplexity -> candidates most compressed first through
llm-compressor, each judged on the perplexity budget -> the chosen compressed-tensors folder
(or the dense model unchanged) as ``model/`` in the staging folder -> reloaded with
transformers and scored again -> ``LlmReport``. Scratch folders live outside the staging
folder, so only the shipped model is published.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from ..context import RunContext
from ..errors import InputError
from ..spec import Objective
from . import generations, perplexity
from .choose import SearchResult, search
from .compress import CandidateOutcome, run_candidate
from .levels import LlmPolicy, llm_policy
from .model_loading import Baseline, load_model, load_tokenizer, prepare_baseline, ship_baseline
from .onnx_export import ExportError, check_exportable, export_onnx
from .report import CpuExportReport, LlmCandidate, LlmReport, OnnxModelSpeed, PerplexityReport, folder_stats
from .schemes import SCHEMES, GroupChoice, SchemeName, choose_group_size, quantized_in_features
from .settings import LlmSettings, settings_from
from .text_data import TextWindows, load_windows

MODEL_DIR = "model"
ONNX_DIR = "onnx"
DECODE_PROMPT_TOKENS = 64
DECODE_NEW_TOKENS = 32
DECODE_ROUNDS = 6
"""Decode timing: each round prefills one 64-token prompt and decodes 32 greedy tokens in every
model, alternating; medians over 6 prompts and 192 tokens per model."""
CPU_EXPORTED = (SchemeName.W4A16,)
RELOAD_TOLERANCE = 1e-3
"""Largest relative difference between the shipped model's perplexity in memory and after reload."""
NO_SPEED = (
    "speed is not measured for vLLM (cuda) yet: fewer weight bytes is what makes decoding faster there; "
    "--deploy-device cpu measures the onnxruntime export's decode speed"
)
NO_CPU_EXPORT = (
    "speed is not measured: the shipped {scheme} has no onnxruntime CPU export (only W4A16, as 4-bit "
    "MatMulNBits, and the dense model are exported)"
)
CPU_SPEED = (
    "onnxruntime CPU at batch 1: median ms per generated token (KV cache) of the dense FP32 export vs the "
    "shipped export in onnx/, timed alternately in one process ({rounds} rounds of a {prompt}-token prompt "
    "+ {new} greedy tokens)"
)


def run(ctx: RunContext) -> LlmReport:
    exp = ctx.experiment
    settings = settings_from(exp)
    policy = llm_policy(
        exp.optim_level,
        objective=exp.objective,
        device=exp.deploy.device,
        max_increase=exp.max_accuracy_drop,
        only=settings.schemes,
    )
    if ctx.model_path is None:
        raise InputError("text-generation needs --model: a Hugging Face causal-LM folder or a .gguf file")
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sparsify-llm-") as scratch_name:
        scratch = Path(scratch_name)
        clock = time.perf_counter()
        ctx.telemetry.stage("load")
        baseline = prepare_baseline(ctx.model_path, scratch)
        to_cpu = exp.deploy.device == "cpu"
        if to_cpu:
            try:
                check_exportable(baseline.folder)
            except ExportError as err:
                raise InputError(str(err)) from None
        tokenizer = load_tokenizer(baseline.folder)
        windows = load_windows(
            ctx.data_path,
            tokenizer,
            sequence_length=settings.sequence_length,
            calibration_samples=settings.calibration_samples,
            eval_samples=settings.eval_samples,
        )
        dense = load_model(baseline.folder)
        parameters = sum(p.numel() for p in dense.parameters())
        group = _group_size(settings, policy, dense)
        timings["load"] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()
        ctx.telemetry.stage("evaluate")
        base_ppl = perplexity.measure(dense, windows.held_out)
        timings["baseline_perplexity"] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()
        prompts = generations.prompts_from(windows.held_out)
        dense_generated = generations.greedy(dense, prompts, tokenizer.eos_token_id)
        del dense
        generation_seconds = time.perf_counter() - clock
        ctx.telemetry.evaluation("baseline_perplexity", base_ppl.value)

        def build(scheme: SchemeName) -> CandidateOutcome:
            ctx.telemetry.stage(f"candidate {scheme.value}")
            return run_candidate(
                scheme,
                dense_folder=baseline.folder,
                tokenizer=tokenizer,
                group_size=group.size,
                calibration=windows.calibration,
                held_out=windows.held_out,
                out_dir=scratch / "candidates" / scheme.value,
            )

        clock = time.perf_counter()
        result = search(policy, base_ppl, build, lambda outcome: outcome.perplexity)
        timings["search"] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()
        ctx.telemetry.stage("save")
        target = ctx.work_dir / MODEL_DIR
        chosen = result.chosen
        if chosen is None:
            ship_baseline(baseline, target)
        else:
            shutil.move(str(chosen.outcome.folder), target)
        shipped_model = load_model(target)
        reloaded = perplexity.measure(shipped_model, windows.held_out)
        timings["reload_perplexity"] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()
        shipped_generated = generations.greedy(shipped_model, prompts, tokenizer.eos_token_id)
        del shipped_model
        generated = generations.compare(tokenizer, prompts, dense_generated, shipped_generated)
        timings["generations"] = round(generation_seconds + time.perf_counter() - clock, 3)
        shipped_ppl = chosen.outcome.perplexity if chosen else base_ppl
        cpu_export = None
        if to_cpu and (chosen is None or chosen.scheme in CPU_EXPORTED):
            clock = time.perf_counter()
            ctx.telemetry.stage("cpu export")
            cpu_export = _cpu_export(
                baseline.folder,
                target if chosen else None,
                shipped_ppl,
                windows,
                scratch,
                ctx.work_dir / ONNX_DIR,
            )
            timings["cpu_export_and_timing"] = round(time.perf_counter() - clock, 3)
        candidates = _candidates(result, target, parameters)
        baseline_stats = folder_stats(baseline.folder, parameters)
    pruned = chosen is not None and SCHEMES[chosen.scheme].sparsity > 0
    shipped_stats = folder_stats(target, parameters, chosen.outcome.sparsity if pruned else 0.0)
    if cpu_export is not None:
        baseline_stats.latency = cpu_export.dense.decode
        shipped_stats.latency = cpu_export.shipped.decode
        speed_source = CPU_SPEED.format(
            rounds=cpu_export.rounds, prompt=cpu_export.prefill_tokens, new=cpu_export.decode_tokens
        )
    elif to_cpu and chosen is not None:
        speed_source = NO_CPU_EXPORT.format(scheme=chosen.scheme.value)
    else:
        speed_source = NO_SPEED
    increase = chosen.increase if chosen else perplexity.relative_increase(base_ppl, base_ppl)
    ctx.telemetry.evaluation("optimized_perplexity", shipped_ppl.value)
    ppl_report = _perplexity_report(base_ppl, shipped_ppl, increase, reloaded, windows, policy)
    return LlmReport.of(
        baseline=baseline_stats,
        optimized=shipped_stats,
        identical=chosen is None,
        experiment=exp.to_wire(),
        mode=_mode(chosen.scheme if chosen else None, policy),
        settings=_settings(settings, group, baseline, windows),
        policy={
            **policy.to_dict(),
            "chosen": chosen.scheme.value if chosen else None,
            "reason": result.reason(policy),
        },
        candidates=candidates,
        perplexity=ppl_report,
        data=windows.describe(),
        generations=generated,
        speedup_source=speed_source,
        notes=_notes(baseline, group, policy, ppl_report, shipped_ppl, reloaded, exp.objective)
        + [generated.note()]
        + _cpu_notes(cpu_export),
        timings_s=timings,
        cpu_export=cpu_export,
    )


def _cpu_export(
    dense_folder: Path,
    shipped_folder: Path | None,
    shipped_ppl: perplexity.Perplexity,
    windows: TextWindows,
    scratch: Path,
    out_dir: Path,
) -> CpuExportReport:
    """Export the dense model (FP32) and the shipped one (``shipped_folder``; None: the dense model
    ships) to ONNX, score both on the held-out windows and time them alternately."""
    from ..report import compare_speed
    from .onnx_decode import OnnxCausalLM, time_models

    held = windows.held_out.numpy()
    tokens = int(held.shape[0] * (held.shape[1] - 1))
    identical = shipped_folder is None
    dense = export_onnx(dense_folder, out_dir if identical else scratch / "onnx-dense")
    shipped = dense if identical else export_onnx(shipped_folder, out_dir)
    folders = [dense.folder] if identical else [dense.folder, shipped.folder]
    ppls = [
        perplexity.from_losses(OnnxCausalLM(f, load_tokenizer=False).window_nll(held), tokens)
        for f in folders
    ]
    prompt = min(DECODE_PROMPT_TOKENS, windows.sequence_length)
    timed = time_models(folders, prompt_tokens=prompt, new_tokens=DECODE_NEW_TOKENS, rounds=DECODE_ROUNDS)

    def speed(result, timing, ppl) -> OnnxModelSpeed:
        return OnnxModelSpeed(
            weights=result.info.weights,
            prefill=timing.prefill,
            decode=timing.decode,
            decode_tokens_per_s=timing.decode_tokens_per_s,
            memory_bytes=timing.memory_bytes,
            size_bytes=result.size_bytes,
            perplexity=round(ppl.value, 4),
            perplexity_interval=[round(ppl.low, 4), round(ppl.high, 4)],
        )

    dense_speed = speed(dense, timed[0], ppls[0])
    shipped_speed = dense_speed if identical else speed(shipped, timed[1], ppls[1])
    return CpuExportReport(
        folder=ONNX_DIR,
        weights=shipped.info.weights,
        block_size=shipped.info.block_size,
        accuracy_level=shipped.info.accuracy_level,
        prefill_tokens=prompt,
        decode_tokens=DECODE_NEW_TOKENS,
        rounds=DECODE_ROUNDS,
        dense=dense_speed,
        shipped=shipped_speed,
        decode_speed=compare_speed(dense_speed.decode, shipped_speed.decode, identical=identical),
        prefill_speed=compare_speed(dense_speed.prefill, shipped_speed.prefill, identical=identical),
        torch_perplexity=round(shipped_ppl.value, 4),
        perplexity_matches=abs(ppls[-1].value / shipped_ppl.value - 1.0) <= RELOAD_TOLERANCE,
    )


def _cpu_notes(cpu: CpuExportReport | None) -> list[str]:
    if cpu is None:
        return []
    d, s = cpu.dense, cpu.shipped
    notes = [
        f"onnxruntime CPU export in {cpu.folder}/ ({cpu.weights}"
        + (f", MatMulNBits block {cpu.block_size} from the GPTQ integers" if cpu.weights == "int4" else "")
        + f"): decode {s.decode_tokens_per_s:.1f} tokens/s vs dense FP32 {d.decode_tokens_per_s:.1f} "
        f"({cpu.decode_speed.words()}), prefill of {cpu.prefill_tokens} tokens "
        f"{s.prefill.median_ms:.1f} ms vs "
        f"{d.prefill.median_ms:.1f} ms, {s.size_bytes / 1e6:.1f} MB vs {d.size_bytes / 1e6:.1f} MB on disk",
    ]
    if cpu.perplexity_matches:
        notes.append(
            f"the ONNX model's held-out perplexity {s.perplexity:.3f} matches torch's "
            f"{cpu.torch_perplexity:.3f}"
        )
    else:
        notes.append(
            f"the ONNX model's held-out perplexity {s.perplexity:.3f} differs from torch's "
            f"{cpu.torch_perplexity:.3f} by more than 0.1%"
        )
    contention = s.decode.contention_note()
    if contention:
        notes.append(contention)
    return notes


def _perplexity_report(
    base: perplexity.Perplexity,
    shipped: perplexity.Perplexity,
    increase: perplexity.Increase,
    reloaded: perplexity.Perplexity,
    windows: TextWindows,
    policy: LlmPolicy,
) -> PerplexityReport:
    return PerplexityReport(
        windows=base.windows,
        sequence_length=windows.sequence_length,
        tokens_scored=base.tokens,
        baseline=round(base.value, 4),
        baseline_interval=[round(base.low, 4), round(base.high, 4)],
        optimized=round(shipped.value, 4),
        optimized_interval=[round(shipped.low, 4), round(shipped.high, 4)],
        increase=round(increase.value, 6),
        increase_interval=[round(increase.low, 6), round(increase.high, 6)],
        budget=policy.max_perplexity_increase,
        reloaded=round(reloaded.value, 4),
    )


def _group_size(settings: LlmSettings, policy: LlmPolicy, model) -> GroupChoice:
    widths = quantized_in_features(model)
    if settings.group_size is not None:
        misfit = sorted({w for w in widths if w % settings.group_size})
        if misfit and any(SCHEMES[s].grouped for s in policy.schemes):
            raise InputError(
                f"--recipe-args 'group_size' {settings.group_size} does not divide the input "
                f"width(s) {misfit} of "
                "the model's layers; leave it out to have one chosen"
            )
        return GroupChoice(settings.group_size, None)
    try:
        return choose_group_size(widths)
    except ValueError as err:
        if any(SCHEMES[s].grouped for s in policy.schemes):
            raise InputError(f"--model: {err}; 4-bit schemes cannot fit this model") from None
        return GroupChoice(0, None)


def _mode(scheme: SchemeName | None, policy: LlmPolicy) -> str:
    if scheme is None:
        return "baseline"
    return "unstructured" if SCHEMES[scheme].sparsity > 0 else "quantization-only"


def _candidates(result: SearchResult[CandidateOutcome], shipped: Path, parameters: int) -> list[LlmCandidate]:
    records = []
    chosen = result.chosen
    for judged in result.judged:
        outcome, info = judged.outcome, SCHEMES[judged.scheme]
        stats = folder_stats(shipped if judged is chosen else outcome.folder, parameters)
        records.append(
            LlmCandidate(
                name=judged.scheme.value,
                scheme=info.how,
                chosen=judged is chosen,
                stage="sparsity+quantization" if info.sparsity else "quantization",
                perplexity=round(outcome.perplexity.value, 4),
                perplexity_interval=[round(outcome.perplexity.low, 4), round(outcome.perplexity.high, 4)],
                accuracy_drop=round(judged.increase.value, 6),
                accuracy_drop_interval=[round(judged.increase.low, 6), round(judged.increase.high, 6)],
                within_budget=judged.within_budget,
                size_bytes=stats.file_size_bytes,
                compressed_size_bytes=stats.compressed_size_bytes,
                sparsity=round(outcome.sparsity, 6) if info.sparsity else None,
                compress_seconds=round(outcome.compress_seconds, 3),
                note="accuracy_drop is the relative perplexity increase over the dense model",
            )
        )
    return records + not_built(result.skipped)


def not_built(skipped) -> list[LlmCandidate]:
    """Report rows for the schemes the search never built (a more compressed one was within budget)."""
    return [
        LlmCandidate(
            name=scheme.value,
            scheme=SCHEMES[scheme].how,
            chosen=False,
            stage="quantization",
            note="not built: a more compressed candidate was already within budget",
        )
        for scheme in skipped
    ]


def _settings(settings: LlmSettings, group: GroupChoice, baseline: Baseline, windows: TextWindows) -> dict:
    return {
        **settings.to_dict(),
        "group_size": group.size or None,
        "model_source": baseline.source,
        "architecture": baseline.architecture,
        "output_format": "compressed-tensors (save_compressed=True)",
        "holdout_samples": int(windows.held_out.shape[0]),
        "holdout_disjoint": True,
    }


def reload_note(reloaded: perplexity.Perplexity, shipped: perplexity.Perplexity) -> str:
    """Whether transformers reloads the published folder to the perplexity measured before saving."""
    drift = abs(reloaded.value / shipped.value - 1.0)
    if drift <= RELOAD_TOLERANCE:
        return f"transformers reloads the published folder to perplexity {reloaded.value:.3f} (same model)"
    return (
        f"the published folder reloads to perplexity {reloaded.value:.3f}, {drift:.2%} away from the "
        f"{shipped.value:.3f} measured before saving"
    )


def _notes(baseline, group, policy, ppl, shipped_ppl, reloaded, objective) -> list[str]:
    notes = list(baseline.notes)
    if group.note and any(SCHEMES[s].grouped for s in policy.schemes):
        notes.append(group.note)
    notes.append(
        f"held-out perplexity ({ppl.windows} windows of {ppl.sequence_length} tokens): dense "
        f"{ppl.baseline:.3f} "
        f"(90% {ppl.baseline_interval[0]:.3f}-{ppl.baseline_interval[1]:.3f}), shipped {ppl.optimized:.3f}, "
        f"{ppl.increase:+.2%} (90% {ppl.increase_interval[0]:+.2%} to "
        f"{ppl.increase_interval[1]:+.2%}) against a "
        f"budget of +{ppl.budget:.1%}"
    )
    notes.append(reload_note(reloaded, shipped_ppl))
    if objective is Objective.size and any(SCHEMES[s].sparsity for s in policy.schemes):
        notes.append(
            "sparsity makes the weights compress better but buys no speed: vLLM and onnxruntime "
            "multiply zeros "
            "like any weight, and compressed-tensors 0.19 stores sparse weights dense"
        )
    return notes
