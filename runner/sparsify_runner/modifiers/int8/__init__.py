"""Static INT8 post-training quantization chosen by measurement, in stages: ``prepare`` (the
model candidates are built from), ``candidates`` (build + measure one), ``sensitivity``
(nodes ranked by added error), ``acceptance`` (the fidelity budget and the pick) and
``search`` (the order candidates are tried in, within a time budget). ``quantize_int8`` is
the entry point; the one-shot outcome search (``outcome/search.py``) and the training
pathways (``training/int8_choice.py``) call it."""

from .acceptance import allowed_flips, within_budget
from .search import QuantizationResult, quantize_int8
from .sensitivity import node_sensitivity

__all__ = ["QuantizationResult", "allowed_flips", "node_sensitivity", "quantize_int8", "within_budget"]
