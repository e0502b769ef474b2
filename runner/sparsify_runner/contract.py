"""The runner <-> operator contract: the JSON summary written to the termination log.

Kubernetes keeps at most 4 KiB of a container's termination message; the operator parses
it into the experiment's status. Pure pydantic, no torch (the operator imports this).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

TERMINATION_LOG_LIMIT = 4096
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


class RunResults(BaseModel):
    """The headline results of a run: the summary's result part, and the experiment's
    ``status.results`` (the operator's ``Results`` is this model; full details are in the report)."""

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="ignore")

    model_uri: str | None = None
    report_uri: str | None = None
    serving_uri: str | None = Field(
        None,
        description="A KServe InferenceService's storageUri: the result's Triton model repository, or "
        "for text-generation its Hugging Face (compressed-tensors) model folder.",
    )
    mode: str | None = None  # unstructured / channels / quantization-only / baseline
    baseline_accuracy: float | None = None
    optimized_accuracy: float | None = None
    fidelity: float | None = None
    baseline_latency_ms: float | None = None
    optimized_latency_ms: float | None = None
    baseline_size_bytes: int | None = None
    optimized_size_bytes: int | None = None
    sparsity: float | None = None
    speedup: float | None = None


class RunSummary(RunResults):
    """What the operator needs to know about a finished run."""

    status: Literal["succeeded", "failed"]
    exit_code: int = 0
    reason: str | None = None  # InvalidInput / TransientFailure / Preempted / InternalError
    error: str | None = None

    def to_message(self) -> str:
        """Compact JSON that always fits the 4 KiB limit (the error text is cut first)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        text = json.dumps(data, separators=(",", ":"))
        while len(text.encode()) > TERMINATION_LOG_LIMIT and data.get("error"):
            data["error"] = data["error"][: max(0, len(data["error"]) - 256)] + "..."
            if len(data["error"]) <= 3:
                data.pop("error")
            text = json.dumps(data, separators=(",", ":"))
        return text

    @classmethod
    def from_message(cls, message: str | None) -> RunSummary | None:
        """Parse a termination message; None when it is not one of ours."""
        if not message:
            return None
        try:
            return cls.model_validate_json(message.strip())
        except ValueError:
            return None


def write_termination_log(summary: RunSummary, path: str | None = None) -> None:
    """Best effort: write the summary where Kubernetes reads the termination message."""
    target = path or os.environ.get("SPARSIFY_TERMINATION_LOG", DEFAULT_TERMINATION_LOG)
    if not target:
        return
    from .storage.common import redact  # stdlib-only; credentials never reach the message

    if summary.error:
        summary = summary.model_copy(update={"error": redact(summary.error)})
    # Not in a pod (no /dev/termination-log) or not writable: nothing to report to.
    with contextlib.suppress(OSError):
        Path(target).write_text(summary.to_message(), encoding="utf-8")
