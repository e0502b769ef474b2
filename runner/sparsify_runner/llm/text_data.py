"""Calibration and held-out text for a causal LM, cut into token windows that never overlap.

``--data`` is one file (``.txt``, or ``.jsonl`` / ``.csv`` with a ``text`` column) or a folder
with ``train.*`` (calibration) and ``val.*`` (held-out) files of those kinds, which keeps the
two sources apart. One file: its documents are joined into one token stream, cut into windows
of ``sequence_length`` tokens; calibration takes windows from the front, evaluation from the
back, so no token is in both. Bad data is one InputError line naming ``--data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.text import split_file
from ..errors import InputError

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")
TEXT_COLUMN = "text"
SPLITS = {"calibration": ("train", "calibration", "calib"), "held-out": ("val", "validation", "test", "eval")}


@dataclass(frozen=True)
class TextWindows:
    """Token windows (``[n, sequence_length]`` int64 tensors) and where they came from."""

    calibration: Any
    held_out: Any
    sequence_length: int
    sources: dict[str, str]
    available: dict[str, int]
    """Windows the data held for each role (before the sample counts were applied)."""

    def describe(self) -> dict[str, Any]:
        return {
            "sequence_length": self.sequence_length,
            "calibration_windows": int(self.calibration.shape[0]),
            "held_out_windows": int(self.held_out.shape[0]),
            "held_out_tokens": int(self.held_out.numel()),
            "sources": self.sources,
            "windows_available": self.available,
            "disjoint": True,
        }


def read_documents(path: Path) -> list[str]:
    """The texts of one file; InputError naming --data when it has none."""
    if path.suffix not in TEXT_SUFFIXES:
        raise InputError(
            f"--data '{path}' is not a .txt, .jsonl or .csv file; text-generation reads plain text or "
            f"rows with a '{TEXT_COLUMN}' column"
        )
    if path.suffix == ".txt":
        try:
            docs = [path.read_bytes().decode("utf-8-sig")]
        except UnicodeDecodeError as err:
            raise InputError(
                f"--data '{path}' is not UTF-8 text (invalid byte at offset {err.start}); re-save it as UTF-8"
            ) from None
    else:
        import csv

        from ..data.text import _read  # the project's CSV / JSON-lines reader (one-line errors)

        csv.field_size_limit(1 << 30)  # speeches and articles are longer than csv's 128 KB default
        rows = _read(path)
        if TEXT_COLUMN not in rows[0]:
            columns = ", ".join(str(c) for c in rows[0])
            raise InputError(
                f"--data '{path}' has no '{TEXT_COLUMN}' column (columns: {columns}); name the column "
                f"holding the passages '{TEXT_COLUMN}'"
            )
        docs = [str(r.get(TEXT_COLUMN) or "") for r in rows]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise InputError(f"--data '{path}' holds no text")
    return docs


def _split_file(root: Path, role: str) -> Path:
    found = split_file(root, SPLITS[role], TEXT_SUFFIXES)
    if found is not None:
        return found
    raise InputError(
        f"--data folder '{root}' has no {role} file; put the calibration text in train.txt/.jsonl/.csv "
        "and the held-out text in val.txt/.jsonl/.csv, or pass one file"
    )


def _tokens(tokenizer: Any, docs: list[str]) -> list[int]:
    """Documents joined by the tokenizer's end-of-sequence token (when it has one)."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(int(eos))
    return ids


def _windows(ids: list[int], length: int):
    import torch

    n = len(ids) // length
    return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)


def _too_short(path: Path, tokens: int, length: int, need: str) -> InputError:
    return InputError(
        f"--data '{path}' has {tokens} tokens, {need} of sequence_length {length}; pass more text or a "
        "smaller sequence_length in --recipe-args"
    )


def load_windows(
    data: Path, tokenizer: Any, *, sequence_length: int, calibration_samples: int, eval_samples: int
) -> TextWindows:
    """Calibration and held-out windows, disjoint by construction."""
    if data.is_dir():
        cal_path, val_path = _split_file(data, "calibration"), _split_file(data, "held-out")
        cal_ids, val_ids = (
            _tokens(tokenizer, read_documents(cal_path)),
            _tokens(tokenizer, read_documents(val_path)),
        )
        cal, held = _windows(cal_ids, sequence_length), _windows(val_ids, sequence_length)
        for path, ids, windows in ((cal_path, cal_ids, cal), (val_path, val_ids, held)):
            if windows.shape[0] == 0:
                raise _too_short(path, len(ids), sequence_length, "shorter than one window")
        available = {"calibration": int(cal.shape[0]), "held_out": int(held.shape[0])}
        sources = {"calibration": str(cal_path), "held_out": str(val_path)}
        return TextWindows(
            cal[:calibration_samples], held[:eval_samples], sequence_length, sources, available
        )
    if not data.is_file():
        raise InputError(f"--data '{data}' does not exist; pass a text file or a folder with train/val files")
    ids = _tokens(tokenizer, read_documents(data))
    windows = _windows(ids, sequence_length)
    n = int(windows.shape[0])
    if n < 2:
        raise _too_short(
            data, len(ids), sequence_length, "fewer than two windows (one to calibrate, one to evaluate)"
        )
    held_n = min(eval_samples, n // 2)
    cal_n = min(calibration_samples, n - held_n)
    return TextWindows(
        windows[:cal_n],
        windows[n - held_n :],
        sequence_length,
        {"calibration": f"{data} (first windows)", "held_out": f"{data} (last windows)"},
        {"calibration": n - held_n, "held_out": n // 2},
    )
