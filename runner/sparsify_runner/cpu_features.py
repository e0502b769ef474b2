"""What onnxruntime's integer kernels do on this CPU (torch-free).

On x86 CPUs without VNNI, onnxruntime's u8s8 GEMM/Conv kernels multiply with ``vpmaddubsw``,
which adds each pair of ``uint8 * int8`` products into a saturating int16: with full 8-bit
weights two products (up to 255 * 127 each) can exceed 32767 and the result is clipped. With
VNNI (``vpdpbusd`` accumulates in int32) nothing saturates. ``reduce_range`` (weights in
[-64, 64]) is onnxruntime's documented remedy: 2 * 255 * 64 < 32767.

Anything that has to predict what the INT8 model will compute (quantization-aware training's
simulation, the INT8 settings ``predict`` benchmarks, tests against onnxruntime) asks
:func:`int8_saturates` rather than assuming.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# Any of these flags gives onnxruntime an int32-accumulating u8s8 dot product.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
OVERRIDE_ENV = "SPARSIFY_INT8_SATURATES"


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def saturates_without_vnni(machine: str, cpuinfo: str) -> bool:
    """True for an x86 CPU whose flags show no VNNI; False elsewhere (ARM and others use
    kernels that accumulate in int32)."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    flags = _cpu_flags(cpuinfo)
    if not flags:  # cannot tell: assume the older kernels, the safe side (reduce_range works everywhere)
        return True
    return not any(flag in flags for flag in VNNI_FLAGS)


@functools.cache
def _this_cpu_saturates() -> bool:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        cpuinfo = ""
    return saturates_without_vnni(platform.machine(), cpuinfo)


def int8_saturates(device: str = "cpu") -> bool:
    """Do onnxruntime's u8s8 kernels saturate with full 8-bit weights on the target?

    ``SPARSIFY_INT8_SATURATES=1|0`` overrides the detection (e.g. when the model will be
    deployed on a different CPU than the one it is optimized on). CUDA runs are not
    affected by the CPU kernels."""
    override = os.environ.get(OVERRIDE_ENV, "").strip().lower()
    if override in ("1", "true", "yes"):
        return True
    if override in ("0", "false", "no"):
        return False
    if device != "cpu":
        return False
    return _this_cpu_saturates()
