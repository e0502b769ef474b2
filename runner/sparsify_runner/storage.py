"""Where inputs come from and outputs go: local paths and file:// (this module), with
s3:// and http(s):// plugging in behind the same two entry points:

* ``fetch(uri, what=...)`` -> a local Path (file or folder), or InputError naming the URI;
* ``OutputLocation(uri)``: ``publish(staging_dir)`` makes a run's artifacts visible
  atomically (a crashed run never leaves a ``model.onnx`` that looks complete), and
  ``checkpoint_dir`` / ``save_checkpoints()`` keep resumable state at the output location.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import InputError
from .spec import uri_scheme

CHECKPOINT_DIRNAME = ".sparsify-checkpoints"


def local_path(uri: str) -> Path:
    """A plain path or file:// URI as a Path (no existence check)."""
    if uri_scheme(uri) != "file":
        raise InputError(f"'{uri}' is not a local path")
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path)).expanduser()
    return Path(uri).expanduser()


def fetch(uri: str, *, what: str) -> Path:
    """Resolve an input URI to a local file or folder. ``what`` names it in errors."""
    scheme = uri_scheme(uri)
    if scheme != "file":
        raise InputError(f"{what} '{uri}': storage scheme '{scheme}://' is not supported by this runner build")
    path = local_path(uri)
    if not path.exists():
        raise InputError(f"{what} '{uri}' does not exist; check the path")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} '{uri}' is not readable; check its permissions")
    return path


class OutputLocation:
    """A local output folder (the embedded default: the working directory)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = local_path(uri)

    def uri_for(self, name: str) -> str:
        return str(self.root / name)

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / CHECKPOINT_DIRNAME

    def save_checkpoints(self) -> None:
        """Checkpoints are written in place for local outputs."""

    def clear_checkpoints(self) -> None:
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def publish(self, staging: Path, order: list[str] | None = None) -> dict[str, str]:
        """Move every file of ``staging`` into the output folder, each by an atomic rename
        from a temporary name in the same folder. ``order`` lists names to publish last."""
        self.root.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in staging.iterdir() if p.is_file())
        last = [n for n in (order or []) if n in names]
        published: dict[str, str] = {}
        for name in [n for n in names if n not in last] + last:
            tmp = self.root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                shutil.copyfile(staging / name, tmp)
                os.replace(tmp, self.root / name)
            finally:
                tmp.unlink(missing_ok=True)
            published[name] = self.uri_for(name)
        return published
