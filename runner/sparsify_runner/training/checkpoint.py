"""Resumable training state in ``ctx.checkpoint_dir``.

Everything is stored as plain tensors, numbers, strings, lists and dicts so that a
checkpoint loads with ``torch.load(weights_only=True)``. Each file carries the run's
fingerprint (spec + effective settings): a checkpoint from a different spec is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("sparsify.training")


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    """Named checkpoint files (``<phase>.pt``) + a sync callback (upload to the output)."""

    def __init__(
        self, root: Path, run_fingerprint: str, sync: Callable[[], None], *, enabled: bool = True
    ) -> None:
        self.root, self.fp, self.sync, self.enabled = root, run_fingerprint, sync, enabled
        self.notes: list[str] = []

    def path(self, name: str) -> Path:
        return self.root / f"{name}.pt"

    def save(self, name: str, payload: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.pt.tmp"
        torch.save({"fingerprint": self.fp, **payload}, tmp)
        os.replace(tmp, self.path(name))
        try:
            self.sync()
        except Exception as err:  # a failed upload must not kill training; the next one retries
            log.warning("checkpoint sync failed: %s", err)

    def load(self, name: str) -> dict[str, Any] | None:
        path = self.path(name)
        if not self.enabled or not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            self.notes.append(f"checkpoint '{path.name}' unreadable ({type(err).__name__}); started fresh")
            return None
        if payload.get("fingerprint") != self.fp:
            self.notes.append(
                f"checkpoint '{path.name}' belongs to a different experiment spec; ignored and started fresh"
            )
            return None
        return payload
