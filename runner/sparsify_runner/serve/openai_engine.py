"""The text generator behind the OpenAI-compatible routes: where the CPU export comes from (a
text-generation run's output folder with ``onnx/``, the ``onnx/`` folder itself, or s3://...),
prompts and chat messages -> token ids (the tokenizer's chat template), and decoding with the
KV cache through :class:`~sparsify_runner.llm.onnx_decode.OnnxCausalLM` -- greedy or sampled
(temperature, top_p, seed) -- into text pieces that never split a UTF-8 character and never
show a stop string.

Synchronous and not thread-safe (one onnxruntime session, one cache): the app runs one
request at a time in a worker thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .model import REPORT_FILE, _valid_name

ONNX_DIR = "onnx"
INFO_FILE = "export.json"  # llm.onnx_export.INFO_FILE (not imported: that module needs onnx at import)
NO_EXPORT_FIX = (
    "pass a text-generation run's output folder with onnx/ (written by `sparsifyctl run one-shot "
    "--use-case text-generation --deploy-device cpu`) or that onnx/ folder itself"
)


class RequestError(ValueError):
    """A request this model cannot answer (400), one line."""


@dataclass(frozen=True)
class LlmSource:
    folder: Path
    """The export folder: model.onnx, model.onnx.data, export.json, tokenizer files."""
    name: str


def _read_name(report: Path) -> str | None:
    try:
        exp = json.loads(report.read_text(encoding="utf-8")).get("experiment") or {}
        return exp.get("name") if isinstance(exp.get("name"), str) else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def _fetch(source: str) -> tuple[Path, Path | None]:
    """The local folder for ``source`` and where its run's report.json is (if anywhere). A remote
    run folder: only its ``onnx/`` prefix and ``report.json`` are downloaded, not ``model/``."""
    from .. import storage
    from ..spec import uri_scheme

    if uri_scheme(source) == "file":
        path = storage.fetch(source, what="model")
        return path, path / REPORT_FILE if path.is_dir() else None
    base = source.rstrip("/")
    if not base.endswith("/" + ONNX_DIR):
        try:
            folder = storage.fetch(f"{base}/{ONNX_DIR}", what="model")
        except InputError:
            pass
        else:
            try:
                report = storage.fetch(f"{base}/{REPORT_FILE}", what="report")
            except InputError:
                report = None
            return folder, report
    path = storage.fetch(source, what="model")
    return path, None


def resolve_llm(source: str, name: str | None = None) -> LlmSource:
    """``MODEL`` of ``sparsifyctl serve --task text-generation``: a run folder (its ``onnx/``), an
    export folder, or a storage URI of either. The name defaults to the experiment's name, else
    the run folder's name."""
    from ..spec import uri_scheme

    path, report = _fetch(source)
    if not path.is_dir():
        raise InputError(
            f"MODEL '{source}' is a file; --task text-generation serves a folder: {NO_EXPORT_FIX}"
        )
    if (path / INFO_FILE).is_file():
        folder = path
        if report is None or not report.is_file():  # onnx/ given: the run's report is beside it
            report = path.parent / REPORT_FILE if uri_scheme(source) == "file" else None
    elif (path / ONNX_DIR / INFO_FILE).is_file():
        folder = path / ONNX_DIR
    else:
        raise InputError(f"MODEL '{source}' has no ONNX export (onnx/{INFO_FILE}); {NO_EXPORT_FIX}")
    default = _read_name(report) if report is not None and report.is_file() else None
    if default is None:
        stem = source.rstrip("/").rsplit("/", 1)[-1]
        if stem == ONNX_DIR:
            remote = uri_scheme(source) != "file"
            stem = source.rstrip("/").rsplit("/", 2)[-2] if remote else folder.resolve().parent.name
        default = stem or folder.name
    return LlmSource(folder=folder, name=_valid_name(name or default))


@dataclass(frozen=True)
class Sampling:
    """temperature 0: argmax (greedy); otherwise softmax(logits / temperature) restricted to the
    smallest set of tokens whose probability reaches top_p, drawn with ``seed``."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def picker(self):
        if self.temperature == 0.0:
            return lambda logits: int(np.argmax(logits))
        rng = np.random.default_rng(self.seed)

        def pick(logits: np.ndarray) -> int:
            z = logits.astype(np.float64) / self.temperature
            p = np.exp(z - z.max())
            p /= p.sum()
            if self.top_p < 1.0:
                order = np.argsort(-p, kind="stable")
                keep = order[: int(np.searchsorted(np.cumsum(p[order]), self.top_p)) + 1]
                return int(keep[rng.choice(len(keep), p=p[keep] / p[keep].sum())])
            return int(rng.choice(len(p), p=p))

        return pick


@dataclass(frozen=True)
class Step:
    """One generated token: the text it released (may be empty), how long it took, and on the
    last step why generation ended."""

    text: str
    seconds: float
    finish: str | None = None


class _TextStops:
    """Generated ids -> text released so far: holds back an incomplete UTF-8 character and any
    tail that could be the start of a stop string; cuts at the first stop string."""

    def __init__(self, tokenizer, stops: Sequence[str], lock: threading.Lock | None = None) -> None:
        self.tokenizer, self.stops = tokenizer, list(stops)
        self.lock = lock or threading.Lock()
        self.ids: list[int] = []
        self.sent = 0
        self.longest = max((len(s) for s in self.stops), default=0)

    def _text(self) -> str:
        with self.lock:
            return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def add(self, token: int) -> tuple[str, bool]:
        """(new text, whether a stop string ended it)."""
        self.ids.append(token)
        text = self._text()
        hits = [i for i in (text.find(s, max(0, self.sent - self.longest)) for s in self.stops) if i >= 0]
        if hits:
            cut = max(min(hits), self.sent)
            piece, self.sent = text[self.sent : cut], cut
            return piece, True
        safe = len(text.rstrip("\ufffd"))
        for k in range(min(self.longest - 1, safe - self.sent), 0, -1):
            if any(s.startswith(text[safe - k : safe]) for s in self.stops):
                safe -= k
                break
        if safe <= self.sent:
            return "", False
        piece, self.sent = text[self.sent : safe], safe
        return piece, False

    def flush(self) -> str:
        text = self._text()
        piece, self.sent = text[self.sent :], len(text)
        return piece


class TextGenerator:
    """One export loaded for serving."""

    def __init__(self, source: LlmSource, *, threads: int = 0) -> None:
        try:
            from ..llm.onnx_decode import OnnxCausalLM

            self.model = OnnxCausalLM(source.folder, threads=threads)
        except ImportError as err:
            raise InputError(
                f"--task text-generation needs '{err.name}' (pip install 'sparsify-k8s[runner,serve]')"
            ) from None
        except Exception as err:  # onnxruntime, transformers and json raise their own types
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise InputError(f"export '{source.folder}' cannot be loaded: {first}") from None
        self.name = source.name
        self.folder = source.folder
        self.tokenizer = self.model.tokenizer
        # transformers resets the fast tokenizer's truncation/padding on every call, a mutation the
        # Rust side refuses while another thread uses it ("Already borrowed"): one call at a time
        self.tokenizer_lock = threading.Lock()
        self.context = int(self.model.info.max_positions)
        self.eos = set(self.model.eos_token_ids)
        self.created = int(time.time())

    # ---- prompts -------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            with self.tokenizer_lock:
                ids = list(self.tokenizer(prompt)["input_ids"])
        else:
            vocab = int(self.model.info.vocab_size)
            if any(not 0 <= t < vocab for t in prompt):
                raise RequestError(f"prompt token ids must be in [0, {vocab})")
            ids = list(prompt)
        if not ids:
            raise RequestError("the prompt is empty; send at least one token")
        return ids

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The tokenizer's chat template with the assistant's turn opened."""
        if not self.has_chat_template:
            raise RequestError(
                f"model '{self.name}' has no chat template in its tokenizer (tokenizer_config.json or "
                "chat_template.jinja); use /v1/completions with a plain prompt"
            )
        try:
            with self.tokenizer_lock:
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
        except Exception as err:  # jinja2's TemplateError (raise_exception in the template) and friends
            first = (str(err).splitlines() or [type(err).__name__])[0][:200]
            raise RequestError(f"the chat template refused the messages: {first}") from None
        with self.tokenizer_lock:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.encode(ids)

    def budget(self, prompt_tokens: int, requested: int | None, default: int | None) -> int:
        """New tokens for a prompt: what the request asked for (400 past the context), else the
        default, clipped to what the context has left."""
        room = self.context - prompt_tokens
        if room < 1:
            raise RequestError(
                f"this model's maximum context length is {self.context} tokens; "
                f"the prompt has {prompt_tokens}"
            )
        if requested is not None:
            if requested > room:
                raise RequestError(
                    f"this model's maximum context length is {self.context} tokens; the prompt has "
                    f"{prompt_tokens} and max_tokens asks for {requested} more (at most {room})"
                )
            return requested
        return min(default, room) if default is not None else room

    # ---- decoding ------------------------------------------------------------------------
    def tokens(
        self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling, cancel: threading.Event
    ) -> Iterator[tuple[int, float]]:
        """(token id, seconds it took) after the prompt, one forward per token with the KV cache;
        ends after an end-of-sequence id, ``max_new_tokens`` or ``cancel``."""
        pick = sampling.picker()
        started = time.perf_counter()
        logits, cache = self.model.forward(np.asarray(prompt_ids, dtype=np.int64)[None])
        for n in range(max_new_tokens):
            token = pick(logits[0, -1])
            now = time.perf_counter()
            yield token, now - started
            started = now
            if token in self.eos or n == max_new_tokens - 1 or cancel.is_set():
                return
            logits, cache = self.model.forward(np.array([[token]], np.int64), cache)

    def steps(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        sampling: Sampling,
        stops: Sequence[str],
        cancel: threading.Event,
    ) -> Iterator[Step]:
        """One :class:`Step` per generated token; the last one carries ``finish``: "stop" (an
        end-of-sequence token or a stop string, which is not part of the text) or "length"."""
        text = _TextStops(self.tokenizer, stops, self.tokenizer_lock)
        for count, (token, seconds) in enumerate(
            self.tokens(prompt_ids, max_new_tokens, sampling, cancel), 1
        ):
            if token in self.eos:
                yield Step(text.flush(), seconds, "stop")
                return
            piece, stopped = text.add(token)
            if stopped:
                yield Step(piece, seconds, "stop")
                return
            if count == max_new_tokens:
                yield Step(piece + text.flush(), seconds, "length")
                return
            yield Step(piece, seconds)
