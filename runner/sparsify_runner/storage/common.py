"""Helpers shared by the storage backends: cache folder, checksums, progress bars,
transfer counters and secret redaction."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 1 << 20

# Environment variables whose values must never appear in logs, errors or reports.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "MINIO_SECRET_KEY",
    "MINIO_ROOT_PASSWORD",
    "HF_TOKEN",  # a Hugging Face token (spec.hfTokenSecretRef in a cluster)
    "HUGGING_FACE_HUB_TOKEN",
)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SIGNED_QUERY = re.compile(
    r"(?P<base>https?://[^\s?#]+)\?[^\s#]*(?:signature|credential|token|key|sig)=[^\s#]*", re.IGNORECASE
)


def redact(text: str) -> str:
    """Remove credentials from a message: secret env values, URL user:password@, and the
    query string of presigned URLs."""
    if not text:
        return text
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    return _SIGNED_QUERY.sub(lambda m: m.group("base") + "?<redacted>", text)


def redact_obj(value):
    """``redact`` applied to every string inside a JSON-like structure."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_obj(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_obj(v) for v in value]
    return value


def cache_root() -> Path:
    """``SPARSIFY_CACHE_DIR``, default ``~/.cache/sparsify``."""
    root = os.environ.get("SPARSIFY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sparsify"
    )
    return Path(root)


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target`` (both on the same filesystem), removing the old one."""
    trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, trash)
    os.replace(new, target)
    shutil.rmtree(trash, ignore_errors=True)


class TransferStats:
    """Process-wide transfer counters (exported as ``sparsify_storage_*_total`` metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, float] = {}

    def add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self.values[name] = self.values.get(name, 0) + amount

    def get(self, name: str) -> float:
        with self._lock:
            return self.values.get(name, 0)

    def reset(self) -> None:
        with self._lock:
            self.values.clear()


stats = TransferStats()


def want_progress(show: bool | None) -> bool:
    if show is None:
        show = True
    return bool(show) and sys.stderr.isatty() and not os.environ.get("SPARSIFY_NO_PROGRESS")


@contextlib.contextmanager
def transfer_progress(
    description: str, total_bytes: int, show: bool | None
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (bytes, rate, ETA) on a terminal; yields ``advance(nbytes)``,
    thread-safe (boto3 calls it from its worker threads)."""
    if not want_progress(show):
        yield lambda n: None
        return
    from rich.progress import DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

    from ..progress import make_progress

    lock = threading.Lock()
    columns = (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with make_progress(label="{task.description}", extra=columns, transient=True) as bar:
        task = bar.add_task(description, total=total_bytes or None)

        def advance(n: int) -> None:
            with lock:
                bar.update(task, advance=n)

        yield advance


class RedactingFilter:
    """A logging filter that removes credentials from every record it formats."""

    def filter(self, record) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_redacting_filter = RedactingFilter()


def install_log_redaction() -> None:
    """Attach the redacting filter to the root logger's handlers (idempotent)."""
    import logging

    for handler in logging.getLogger().handlers:
        if _redacting_filter not in handler.filters:
            handler.addFilter(_redacting_filter)
