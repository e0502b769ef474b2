"""CPU export of a causal LM: an onnxruntime decode graph with a KV cache and 4-bit ``MatMulNBits``.

The graph is written with ``onnx.helper`` from onnxruntime's contrib operators, the way
onnxruntime-genai's model builder writes its CPU models (fastest decode on onnxruntime):
``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` (RMSNorm with the
residual add fused), ``RotaryEmbedding`` (explicit ``position_ids``), ``GroupQueryAttention``
(causal attention over the past + new keys, returns the grown cache) and, for each linear
layer, either ``MatMulNBits`` (4-bit weights) or a plain ``MatMul`` (float weights). The dense
FP32 model goes through the same writer with plain ``MatMul``: speed is compared like for like.

4-bit weights come **straight from the compressed-tensors folder** that llm-compressor saved
(``format: pack-quantized``, symmetric int4 in groups): ``weight_packed`` is unpacked to the
GPTQ integers q in [-8, 7] with compressed-tensors' own ``unpack_from_int32``, stored as
``MatMulNBits``' unsigned nibbles ``q + 8`` (two per byte, low nibble first, ``B`` shaped
``[N, K / block, block / 2]``) with the implicit zero point 8, and ``weight_scale`` becomes
``scales`` (``[N * K / block]``) unchanged. No second rounding: the graph computes
``(q + 8 - 8) * scale`` = the fake-quantized weight the GPTQ model ran with. ``block_size`` is
the GPTQ group size. With ``accuracy_level`` 0 (the default) onnxruntime multiplies in float32
and the logits match the torch model to float tolerance; level 4 quantizes activations to int8
on the fly (faster on CPUs with int8 dot products, not the same numbers), opt-in.

Layers that are not quantized (embeddings, ``lm_head`` unless GPTQ quantized it, norms) stay
float32; a tied ``lm_head`` reuses the embedding matrix through ``Gemm(transB=1)``.

Folder written (``out_dir``):

- ``model.onnx`` + ``model.onnx.data`` (external weights)
- ``export.json``: :class:`ExportInfo` (layers, heads, input / output names, eos ids, weights)
- the tokenizer files and ``generation_config.json`` copied from the source folder

Inputs: ``input_ids`` [batch, seq] int64, ``attention_mask`` [batch, past + seq] int64,
``position_ids`` [batch, seq] int64, ``past_key_values.{i}.key`` / ``.value``
[batch, kv_heads, past, head_dim] float32. Outputs: ``logits`` [batch, seq, vocab],
``present.{i}.key`` / ``.value`` [batch, kv_heads, past + seq, head_dim] (optimum /
onnxruntime-genai names). Supported: Llama-family decoders (``LlamaForCausalLM``,
``MistralForCausalLM`` without sliding window); anything else raises :class:`ExportError`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
INFO_FILE = "export.json"
FORMAT = "sparsify-onnx-decode/1"
OPSET = 21
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
LINEARS = (
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
)


class ExportError(ValueError):
    """The model cannot be exported (architecture or quantization format not supported): one line."""


@dataclass(frozen=True)
class ExportInfo:
    """``export.json``: what a reader of the folder needs without opening the graph."""

    format: str
    model: str
    architecture: str
    weights: str  # "int4" (MatMulNBits) or "fp32"
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_positions: int
    eos_token_ids: list[int]
    bos_token_id: int | None
    block_size: int | None
    accuracy_level: int
    quantized_linears: int
    float_linears: int
    inputs: list[str]
    outputs: list[str]
    past_key: str = "past_key_values.{i}.key"
    past_value: str = "past_key_values.{i}.value"
    present_key: str = "present.{i}.key"
    present_value: str = "present.{i}.value"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, folder: Path) -> ExportInfo:
        return cls(**json.loads((Path(folder) / INFO_FILE).read_text()))


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    info: ExportInfo
    size_bytes: int
    """Bytes of model.onnx + its external data."""


@dataclass(frozen=True)
class _Quant:
    bits: int
    group_size: int


def export_onnx(model_folder: Path, out_dir: Path, *, accuracy_level: int = 0) -> ExportResult:
    """Write the decode graph of the HF / compressed-tensors folder ``model_folder`` to ``out_dir``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model_folder, out_dir = Path(model_folder), Path(out_dir)
    config = _config(model_folder)
    quant = _quant_scheme(config)
    tensors = _Tensors(model_folder)
    arch = config["architectures"][0]
    layers = int(config["num_hidden_layers"])
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    vocab = int(config["vocab_size"])
    eps = float(config.get("rms_norm_eps", 1e-6))
    max_pos = int(config.get("max_position_embeddings", 2048))
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ExportError("--model: the CPU ONNX export supports Llama-family layers without biases")

    nodes: list[Any] = []
    inits: list[Any] = []
    counts = {"quantized": 0, "float": 0}

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any) -> None:
        nodes.append(
            helper.make_node(op, inputs, outputs, name=f"/{op}_{len(nodes)}", domain=domain, **attrs)
        )

    def linear(x: str, prefix: str, out: str) -> str:
        if quant is not None and tensors.has(f"{prefix}.weight_packed"):
            b, scales, n, k = _matmul_nbits_weights(tensors, prefix, quant)
            node(
                "MatMulNBits",
                [x, init(f"{prefix}.qweight", b), init(f"{prefix}.scales", scales)],
                [out],
                domain="com.microsoft",
                K=k,
                N=n,
                bits=quant.bits,
                block_size=quant.group_size,
                accuracy_level=accuracy_level,
            )
            counts["quantized"] += 1
        else:
            weight = tensors.float(f"{prefix}.weight")  # [N, K]
            node("MatMul", [x, init(f"{prefix}.weight_t", weight.T)], [out])
            counts["float"] += 1
        return out

    # Shared values: sequence lengths for GroupQueryAttention, rotary caches.
    node("ReduceSum", ["attention_mask", init("axes_1", np.array([1], np.int64))], ["mask_sum"], keepdims=0)
    node("Sub", ["mask_sum", init("one_i64", np.array(1, np.int64))], ["seqlens_k_i64"])
    node("Cast", ["seqlens_k_i64"], ["seqlens_k"], to=TensorProto.INT32)
    node("Shape", ["attention_mask"], ["mask_shape"])
    node("Gather", ["mask_shape", init("idx_1", np.array(1, np.int64))], ["total_len_i64"], axis=0)
    node("Cast", ["total_len_i64"], ["total_sequence_length"], to=TensorProto.INT32)
    cos, sin = _rotary_caches(config, max_pos, head_dim)
    init("cos_cache", cos)
    init("sin_cache", sin)

    embed = init("model.embed_tokens.weight", tensors.float("model.embed_tokens.weight"))
    node("Gather", [embed, "input_ids"], ["embeddings"], axis=0)

    residual = "embeddings"
    normed = "l0_attn_norm"
    node(
        "SimplifiedLayerNormalization",
        [
            residual,
            init(
                "model.layers.0.input_layernorm.weight",
                tensors.float("model.layers.0.input_layernorm.weight"),
            ),
        ],
        [normed],
        axis=-1,
        epsilon=eps,
        stash_type=1,
    )
    for i in range(layers):
        p = f"model.layers.{i}"
        q = linear(normed, f"{p}.self_attn.q_proj", f"l{i}_q")
        k = linear(normed, f"{p}.self_attn.k_proj", f"l{i}_k")
        v = linear(normed, f"{p}.self_attn.v_proj", f"l{i}_v")
        node(
            "RotaryEmbedding",
            [q, "position_ids", "cos_cache", "sin_cache"],
            [f"l{i}_q_rot"],
            domain="com.microsoft",
            interleaved=0,
            num_heads=heads,
        )
        node(
            "RotaryEmbedding",
            [k, "position_ids", "cos_cache", "sin_cache"],
            [f"l{i}_k_rot"],
            domain="com.microsoft",
            interleaved=0,
            num_heads=kv_heads,
        )
        node(
            "GroupQueryAttention",
            [
                f"l{i}_q_rot",
                f"l{i}_k_rot",
                v,
                f"past_key_values.{i}.key",
                f"past_key_values.{i}.value",
                "seqlens_k",
                "total_sequence_length",
            ],
            [f"l{i}_attn", f"present.{i}.key", f"present.{i}.value"],
            domain="com.microsoft",
            num_heads=heads,
            kv_num_heads=kv_heads,
            scale=float(head_dim**-0.5),
        )
        o = linear(f"l{i}_attn", f"{p}.self_attn.o_proj", f"l{i}_o")
        post = init(
            f"{p}.post_attention_layernorm.weight", tensors.float(f"{p}.post_attention_layernorm.weight")
        )
        node(
            "SkipSimplifiedLayerNormalization",
            [o, residual, post],
            [f"l{i}_mlp_norm", "", "", f"l{i}_res1"],
            domain="com.microsoft",
            epsilon=eps,
        )
        residual = f"l{i}_res1"
        g = linear(f"l{i}_mlp_norm", f"{p}.mlp.gate_proj", f"l{i}_gate")
        u = linear(f"l{i}_mlp_norm", f"{p}.mlp.up_proj", f"l{i}_up")
        node("Sigmoid", [g], [f"l{i}_sig"])
        node("Mul", [g, f"l{i}_sig"], [f"l{i}_silu"])
        node("Mul", [f"l{i}_silu", u], [f"l{i}_act"])
        d = linear(f"l{i}_act", f"{p}.mlp.down_proj", f"l{i}_down")
        if i + 1 < layers:
            nxt = f"model.layers.{i + 1}.input_layernorm.weight"
            gamma, normed = init(nxt, tensors.float(nxt)), f"l{i + 1}_attn_norm"
        else:
            gamma, normed = init("model.norm.weight", tensors.float("model.norm.weight")), "final_norm"
        node(
            "SkipSimplifiedLayerNormalization",
            [d, residual, gamma],
            [normed, "", "", f"l{i}_res2"],
            domain="com.microsoft",
            epsilon=eps,
        )
        residual = f"l{i}_res2"

    # lm_head: quantized by GPTQ -> MatMulNBits; float -> Gemm(transB) on its [vocab, hidden]
    # matrix, which is the embedding matrix itself when tied (one copy on disk).
    if quant is not None and tensors.has("lm_head.weight_packed"):
        linear(normed, "lm_head", "logits")
    else:
        head = (
            embed
            if not tensors.has("lm_head.weight")
            else init("lm_head.weight", tensors.float("lm_head.weight"))
        )
        counts["float"] += 1
        node("Reshape", [normed, init("flat_shape", np.array([-1, hidden], np.int64))], ["final_flat"])
        node("Gemm", ["final_flat", head], ["logits_flat"], transB=1)
        node("Shape", ["input_ids"], ["ids_shape"])
        node(
            "Concat", ["ids_shape", init("vocab_dim", np.array([vocab], np.int64))], ["logits_shape"], axis=0
        )
        node("Reshape", ["logits_flat", "logits_shape"], ["logits"])

    f32 = TensorProto.FLOAT
    cache = ["batch_size", kv_heads, "past_sequence_length", head_dim]
    present = ["batch_size", kv_heads, "total_sequence_length", head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info(
            "attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]
        ),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", vocab])]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32, cache))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32, present))
    graph = helper.make_graph(nodes, "decoder", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="sparsify",
    )
    model.ir_version = 10
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / MODEL_FILE, out_dir / DATA_FILE):
        stale.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(out_dir / MODEL_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )
    del model
    inits.clear()
    for name in TOKENIZER_FILES:
        if (model_folder / name).is_file():
            shutil.copyfile(model_folder / name, out_dir / name)
    int4 = counts["quantized"] > 0
    info = ExportInfo(
        format=FORMAT,
        model=MODEL_FILE,
        architecture=arch,
        weights="int4" if int4 else "fp32",
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=vocab,
        max_positions=max_pos,
        eos_token_ids=_eos_ids(model_folder, config),
        bos_token_id=config.get("bos_token_id"),
        block_size=quant.group_size if int4 and quant else None,
        accuracy_level=accuracy_level,
        quantized_linears=counts["quantized"],
        float_linears=counts["float"],
        inputs=[i.name for i in inputs],
        outputs=[o.name for o in outputs],
        notes=[
            "4-bit weights are the GPTQ integers and scales of the compressed-tensors folder "
            "(MatMulNBits, zero point 8), not re-quantized"
        ]
        if int4
        else [],
    )
    (out_dir / INFO_FILE).write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    size = (out_dir / MODEL_FILE).stat().st_size + (out_dir / DATA_FILE).stat().st_size
    return ExportResult(folder=out_dir, info=info, size_bytes=size)


def check_exportable(model_folder: Path) -> None:
    """Raise :class:`ExportError` (one line) when the folder's architecture cannot be exported."""
    config = _config(Path(model_folder))
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ExportError("--model: the CPU ONNX export supports Llama-family layers without biases")


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ExportError(
            f"--model: '{folder}' has no config.json; the CPU ONNX export needs a Hugging Face folder"
        )
    config = json.loads(path.read_text())
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED:
        raise ExportError(
            f"--model: the CPU ONNX export supports {', '.join(SUPPORTED)}, not {arch}; "
            "deploy to cuda (vLLM) or use a Llama-family model"
        )
    window = config.get("sliding_window")
    if (
        arch == "MistralForCausalLM"
        and window
        and int(window) < int(config.get("max_position_embeddings", 0))
    ):
        raise ExportError("--model: Mistral with a sliding window is not supported by the CPU ONNX export")
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = (
        scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "default"
    )
    if kind not in ("default", "linear", "llama3", "dynamic"):
        raise ExportError(f"--model: rope scaling '{kind}' is not supported by the CPU ONNX export")
    return config


def _quant_scheme(config: dict[str, Any]) -> _Quant | None:
    """The 4-bit scheme of a compressed-tensors folder; None for a float model."""
    qc = config.get("quantization_config")
    if not qc:
        return None
    if qc.get("quant_method") != "compressed-tensors" or qc.get("format") != "pack-quantized":
        raise ExportError(
            f"--model: the CPU ONNX export reads float models and compressed-tensors 'pack-quantized' "
            f"4-bit weights, not {qc.get('quant_method')} / {qc.get('format')}"
        )
    schemes = []
    for group in qc.get("config_groups", {}).values():
        w = group.get("weights") or {}
        if group.get("input_activations"):
            raise ExportError("--model: the CPU ONNX export supports weight-only quantization (W4A16)")
        if (
            w.get("num_bits") != 4
            or w.get("type") != "int"
            or not w.get("symmetric", False)
            or w.get("strategy") != "group"
            or w.get("actorder") == "group"
        ):
            raise ExportError(
                "--model: the CPU ONNX export supports symmetric 4-bit integer weights in contiguous "
                f"groups (W4A16), not {w}"
            )
        schemes.append(_Quant(4, int(w["group_size"])))
    if len(set(schemes)) != 1:
        raise ExportError("--model: the CPU ONNX export needs one weight scheme for all quantized layers")
    quant = schemes[0]
    if quant.group_size < 16 or quant.group_size & (quant.group_size - 1):
        raise ExportError(
            f"--model: MatMulNBits needs a power-of-two group size >= 16, not {quant.group_size}"
        )
    return quant


class _Tensors:
    """Every tensor of a folder's ``*.safetensors`` files, read lazily as torch tensors."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self._where: dict[str, Any] = {}
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ExportError(f"--model: '{folder}' has no .safetensors weights to export")
        for path in files:
            handle = safe_open(str(path), framework="pt")
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                self._where[name] = handle

    def has(self, name: str) -> bool:
        return name in self._where

    def torch(self, name: str):
        if name not in self._where:
            raise ExportError(
                f"--model: tensor '{name}' is missing from the weights; not a Llama-family layout"
            )
        return self._where[name].get_tensor(name)

    def float(self, name: str) -> np.ndarray:
        import torch

        return self.torch(name).to(torch.float32).numpy()


def _matmul_nbits_weights(
    tensors: _Tensors, prefix: str, quant: _Quant
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(B uint8 [N, K/block, block/2], scales float32 [N * K/block], N, K) from compressed-tensors."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    if tensors.has(f"{prefix}.weight_g_idx"):
        g_idx = tensors.torch(f"{prefix}.weight_g_idx").to(torch.int64)
        if not torch.equal(g_idx, torch.arange(g_idx.numel()) // quant.group_size):
            raise ExportError(
                "--model: activation-ordered groups (g_idx) are not supported by the CPU ONNX export"
            )
    if tensors.has(f"{prefix}.weight_zero_point"):
        zp = tensors.torch(f"{prefix}.weight_zero_point")
        if bool(zp.to(torch.float32).abs().max() > 0):
            raise ExportError("--model: asymmetric 4-bit weights are not supported by the CPU ONNX export")
    n, k = (int(x) for x in tensors.torch(f"{prefix}.weight_shape").tolist())
    if k % quant.group_size:
        raise ExportError(
            f"--model: {prefix} input width {k} is not a multiple of group size {quant.group_size}"
        )
    q = unpack_from_int32(tensors.torch(f"{prefix}.weight_packed"), quant.bits, torch.Size([n, k]))
    u = (q.to(torch.int16) + 8).to(torch.uint8).numpy()  # [-8, 7] -> [0, 15], zero point 8
    blocks = k // quant.group_size
    packed = (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8).reshape(n, blocks, quant.group_size // 2)
    scale = tensors.float(f"{prefix}.weight_scale").reshape(n, -1)
    if scale.shape[1] != blocks:
        raise ExportError(f"--model: {prefix} has {scale.shape[1]} scales per row for {blocks} groups")
    return packed, scale.reshape(-1).astype(np.float32), n, k


def _rotary_caches(config: dict[str, Any], max_pos: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos / sin [max_pos, head_dim / 2] from transformers' own rotary embedding (its rope
    scaling and attention scaling included)."""
    import torch
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "quantization_config"})
    rotary = LlamaRotaryEmbedding(cfg)
    positions = torch.arange(max_pos, dtype=torch.int64)[None]
    probe = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(probe, positions)
    half = head_dim // 2
    return cos[0, :, :half].numpy().astype(np.float32), sin[0, :, :half].numpy().astype(np.float32)


def _eos_ids(folder: Path, config: dict[str, Any]) -> list[int]:
    ids: list[int] = []
    gen = folder / "generation_config.json"
    for source in ([json.loads(gen.read_text())] if gen.is_file() else []) + [config]:
        value = source.get("eos_token_id")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return ids
