"""Calibration and held-out text for a causal LM, cut into token windows that never overlap.

``--data`` is one file (``.txt``, or ``.jsonl`` / ``.csv`` rows), a folder with ``train.*``
(calibration) and ``val.*`` (held-out) files of those kinds, which keeps the two sources apart, or
a ``datasets`` ``save_to_disk`` folder (a ``DatasetDict`` with calibration and held-out splits, or
one ``Dataset``). Rows give their text by the first of these columns they have:

* ``text``: the passage as it is;
* ``messages``: a conversation (a list of ``{"role", "content"}``; a JSON string in a CSV cell),
  rendered through the tokenizer's chat template;
* ``prompt`` (with ``completion`` or ``response`` when present): a user turn (and the assistant's
  answer), rendered through the chat template the same way.

One source: its documents are joined into one token stream, cut into windows of
``sequence_length`` tokens; calibration takes windows from the front, evaluation from the back,
so no token is in both. Bad data is one InputError line naming ``--data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.text import split_file
from ..errors import InputError

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")
TEXT_COLUMN = "text"
MESSAGES_COLUMN = "messages"
PROMPT_COLUMN = "prompt"
ANSWER_COLUMNS = ("completion", "response")
COLUMNS = (TEXT_COLUMN, MESSAGES_COLUMN, PROMPT_COLUMN)
ROLES = ("system", "user", "assistant", "tool")
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


def read_documents(path: Path, tokenizer: Any) -> list[str]:
    """The texts of one file; InputError naming --data when it has none."""
    if path.suffix not in TEXT_SUFFIXES:
        raise InputError(
            f"--data '{path}' is not a .txt, .jsonl or .csv file; text-generation reads plain text, rows "
            f"with a '{TEXT_COLUMN}', '{MESSAGES_COLUMN}' or '{PROMPT_COLUMN}' column, or a save_to_disk "
            "folder"
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
        docs = rows_to_documents(rows, list(rows[0]), str(path), tokenizer)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise InputError(f"--data '{path}' holds no text")
    return docs


def rows_to_documents(rows: Any, columns: list[str], where: str, tokenizer: Any) -> list[str]:
    """Rows (dicts) -> documents by the first of ``text`` / ``messages`` / ``prompt`` they have."""
    column = next((c for c in COLUMNS if c in columns), None)
    if column is None:
        shown = ", ".join(str(c) for c in columns)
        raise InputError(
            f"--data '{where}' has no '{TEXT_COLUMN}' column (columns: {shown}); name the column holding "
            f"the passages '{TEXT_COLUMN}', or give chat rows as '{MESSAGES_COLUMN}' or '{PROMPT_COLUMN}'"
        )
    if column == TEXT_COLUMN:
        return [str(r.get(TEXT_COLUMN) or "") for r in rows]
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"--data '{where}' has a '{column}' column, which is rendered through the tokenizer's chat "
            f"template, but the --model tokenizer has none; give the formatted passages in a "
            f"'{TEXT_COLUMN}' column, or use a model whose tokenizer_config.json has a chat_template"
        )
    answer = next((c for c in ANSWER_COLUMNS if c in columns), None)
    docs = []
    for n, row in enumerate(rows, start=1):
        if column == MESSAGES_COLUMN:
            messages = _messages(row.get(MESSAGES_COLUMN), where, n)
        else:
            messages = [{"role": "user", "content": str(row.get(PROMPT_COLUMN) or "")}]
            if answer is not None and row.get(answer) not in (None, ""):
                messages.append({"role": "assistant", "content": str(row[answer])})
        try:
            docs.append(tokenizer.apply_chat_template(messages, tokenize=False))
        except Exception as err:  # jinja errors of a user's template: one line
            raise InputError(
                f"--data '{where}' row {n}: the tokenizer's chat template failed on it "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); check the row"
            ) from None
    return docs


def _messages(value: Any, where: str, n: int) -> list[dict[str, str]]:
    """One row's ``messages``: a list of ``{"role", "content"}`` (a JSON string in a CSV cell)."""
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in value
        )
    )
    if not ok:
        raise InputError(
            f"--data '{where}' row {n}: '{MESSAGES_COLUMN}' must be a list of {{\"role\": "
            f'{"/".join(ROLES)}, "content": text}} objects (a JSON string in a CSV cell)'
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


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
        doc_ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        ids.extend(doc_ids)
        if eos is not None and (not doc_ids or doc_ids[-1] != eos):  # a chat template may end with it
            ids.append(int(eos))
    return ids


def _windows(ids: list[int], length: int):
    import torch

    n = len(ids) // length
    return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)


def _too_short(where: Path | str, tokens: int, length: int, need: str) -> InputError:
    return InputError(
        f"--data '{where}' has {tokens} tokens, {need} of sequence_length {length}; pass more text or a "
        "smaller sequence_length in --recipe-args"
    )


def is_saved_dataset(folder: Path) -> bool:
    """A ``datasets`` ``save_to_disk`` folder: a DatasetDict or one Dataset."""
    return folder.is_dir() and (
        (folder / "dataset_dict.json").is_file()
        or ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())
    )


def _saved_dataset(folder: Path, tokenizer: Any) -> list[tuple[str, list[str]]]:
    """[(where, documents)]: two entries (calibration split, held-out split) for a DatasetDict with
    both, else one (a Dataset, or a DatasetDict of one split)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as err:  # a damaged folder: one line
        raise InputError(
            f"--data '{folder}' looks like a save_to_disk folder but the datasets library cannot load it "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); save it again"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        cal = next((n for n in SPLITS["calibration"] if n in loaded), None)
        held = next((n for n in SPLITS["held-out"] if n in loaded), None)
        if cal is not None and held is not None:
            chosen = [cal, held]
        elif len(names) == 1:
            chosen = names
        else:
            raise InputError(
                f"--data '{folder}' has splits {', '.join(names)}; name the calibration split "
                f"{SPLITS['calibration'][0]} and the held-out split {SPLITS['held-out'][0]} (or "
                f"{SPLITS['held-out'][1]}), or save one split"
            )
        parts = [(f"{folder} [split {n}]", loaded[n]) for n in chosen]
    else:
        parts = [(str(folder), loaded)]
    out = []
    for where, ds in parts:
        if len(ds) == 0:
            raise InputError(f"--data '{where}' has no rows")
        columns = list(ds.column_names)
        wanted = [c for c in (*COLUMNS, *ANSWER_COLUMNS) if c in columns]
        rows = ds.select_columns(wanted) if wanted else ds
        docs = [d for d in rows_to_documents(rows, columns, where, tokenizer) if d.strip()]
        if not docs:
            raise InputError(f"--data '{where}' holds no text")
        out.append((where, docs))
    return out


def _two_sources(
    cal: tuple[str, list[str]],
    val: tuple[str, list[str]],
    tokenizer: Any,
    length: int,
    cal_n: int,
    val_n: int,
) -> TextWindows:
    (cal_where, cal_docs), (val_where, val_docs) = cal, val
    cal_ids, val_ids = _tokens(tokenizer, cal_docs), _tokens(tokenizer, val_docs)
    cal_w, held = _windows(cal_ids, length), _windows(val_ids, length)
    for where, ids, windows in ((cal_where, cal_ids, cal_w), (val_where, val_ids, held)):
        if windows.shape[0] == 0:
            raise _too_short(where, len(ids), length, "shorter than one window")
    available = {"calibration": int(cal_w.shape[0]), "held_out": int(held.shape[0])}
    sources = {"calibration": cal_where, "held_out": val_where}
    return TextWindows(cal_w[:cal_n], held[:val_n], length, sources, available)


def _one_source(
    where: str, docs: list[str], tokenizer: Any, length: int, cal_max: int, val_max: int
) -> TextWindows:
    ids = _tokens(tokenizer, docs)
    windows = _windows(ids, length)
    n = int(windows.shape[0])
    if n < 2:
        need = "fewer than two windows (one to calibrate, one to evaluate)"
        raise _too_short(where, len(ids), length, need)
    held_n = min(val_max, n // 2)
    cal_n = min(cal_max, n - held_n)
    return TextWindows(
        windows[:cal_n],
        windows[n - held_n :],
        length,
        {"calibration": f"{where} (first windows)", "held_out": f"{where} (last windows)"},
        {"calibration": n - held_n, "held_out": n // 2},
    )


def load_windows(
    data: Path, tokenizer: Any, *, sequence_length: int, calibration_samples: int, eval_samples: int
) -> TextWindows:
    """Calibration and held-out windows, disjoint by construction."""
    counts = (sequence_length, calibration_samples, eval_samples)
    if is_saved_dataset(data):
        parts = _saved_dataset(data, tokenizer)
        if len(parts) == 2:
            return _two_sources(parts[0], parts[1], tokenizer, *counts)
        return _one_source(*parts[0], tokenizer, *counts)
    if data.is_dir():
        cal_path, val_path = _split_file(data, "calibration"), _split_file(data, "held-out")
        return _two_sources(
            (str(cal_path), read_documents(cal_path, tokenizer)),
            (str(val_path), read_documents(val_path, tokenizer)),
            tokenizer,
            *counts,
        )
    if not data.is_file():
        raise InputError(
            f"--data '{data}' does not exist; pass a text file, a folder with train/val files or a "
            "save_to_disk folder"
        )
    return _one_source(str(data), read_documents(data, tokenizer), tokenizer, *counts)
