"""Where inputs come from and outputs go.

* ``fetch(uri, what=...)`` -> a local Path (file or folder) for a plain path, ``file://``,
  ``s3://bucket/key`` (an object -> a file, a prefix -> a folder) or ``http(s)://`` (a
  file). Remote inputs land in a cache (``SPARSIFY_CACHE_DIR``, default
  ``~/.cache/sparsify``) keyed by URI + ETag/size and verified by checksum, so a retried
  pod does not download twice.
* ``OutputLocation(uri)`` (a folder or an ``s3://`` prefix): ``publish(staging)`` makes a
  run's artifacts visible atomically: everything is first written under a temporary
  prefix, then moved/copied into place, and the completion marker ``_SUCCESS.json``
  (files, sizes, sha256, experiment fingerprint) is written last. Readers treat a result
  as finished only when the marker is there; ``completed(fingerprint)`` is how a retried
  run finds a finished result. ``checkpoint_dir`` / ``save_checkpoints()`` keep
  resumable state at ``<output>/.sparsify-checkpoints/``.

Layout of the package: ``s3.py`` (boto3), ``http.py`` (urllib), ``common.py`` (cache,
checksums, progress bars, redaction).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import InputError
from ..spec import uri_scheme
from .common import cache_key, cache_root, file_digest, redact, redact_obj, stats

__all__ = [
    "CHECKPOINT_DIRNAME",
    "MARKER_FILE",
    "OutputLocation",
    "fetch",
    "local_path",
    "redact",
    "redact_obj",
    "stats",
]

log = logging.getLogger("sparsify.storage")

CHECKPOINT_DIRNAME = ".sparsify-checkpoints"
STAGING_DIRNAME = ".sparsify-staging"
MARKER_FILE = "_SUCCESS.json"
CHECKPOINT_MANIFEST = "_CHECKPOINT.json"
MARKER_SCHEMA = "1"


def local_path(uri: str) -> Path:
    """A plain path or file:// URI as a Path (no existence check)."""
    if uri_scheme(uri) != "file":
        raise InputError(f"'{redact(uri)}' is not a local path")
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path)).expanduser()
    return Path(uri).expanduser()


def fetch(uri: str, *, what: str, show_progress: bool | None = None) -> Path:
    """Resolve an input URI to a local file or folder. ``what`` names it in errors."""
    scheme = uri_scheme(uri)
    if scheme == "s3":
        from . import s3

        return s3.fetch(uri, what=what, show_progress=show_progress)
    if scheme in ("http", "https"):
        from . import http

        return http.fetch(uri, what=what, show_progress=show_progress)
    if scheme != "file":
        raise InputError(
            f"{what} '{redact(uri)}': storage scheme '{scheme}://' is not supported; "
            "use a path, file://, s3:// or https://"
        )
    path = local_path(uri)
    if not path.exists():
        raise InputError(f"{what} '{uri}' does not exist; check the path")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} '{uri}' is not readable; check its permissions")
    return path


def _files(folder: Path) -> list[str]:
    """Relative POSIX paths of all files under ``folder`` (sorted)."""
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


class _LocalStore:
    """The output-side operations on a local folder (same interface as ``s3.S3Store``)."""

    def __init__(self, uri: str) -> None:
        self.root = local_path(uri)

    def uri_for(self, name: str) -> str:
        return str(self.root / name)

    def check_bucket(self) -> None:
        """The folder, or its nearest existing parent, must be a folder we can create files in
        (probed with a folder made and removed there: permission bits do not stop root)."""
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            what = "is a file" if existing == self.root else f"is inside '{existing}', which is a file"
            raise InputError(f"--output '{self.root}' {what}; pass --output to a folder")
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".sparsify-probe-", dir=existing))
        except OSError as err:
            raise InputError(
                f"--output '{self.root}' is not writable ({err.strerror}); choose another --output folder"
            ) from None

    def upload(self, path: Path, name: str, sha256: str | None = None, show: bool | None = None) -> None:
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)

    def copy(self, src_name: str, dst_name: str) -> None:
        """Staging and the final place share a filesystem: a rename is atomic."""
        dest = self.root / dst_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / src_name, dest)

    def put_bytes(self, name: str, data: bytes, content_type: str = "") -> None:
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def get_bytes(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def size(self, name: str) -> int | None:
        path = self.root / name
        return path.stat().st_size if path.is_file() else None

    def list(self, sub: str) -> list[dict]:
        base = self.root / sub
        return [{"rel": rel, "size": (base / rel).stat().st_size} for rel in _files(base)]

    def delete(self, names: list[str]) -> None:
        for name in names:
            path = self.root / name
            path.unlink(missing_ok=True)
            for parent in path.parents:  # drop folders the deletion emptied (staging)
                if parent == self.root or not parent.is_relative_to(self.root):
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break

    def download(self, name: str, dest: Path) -> None:
        shutil.copyfile(self.root / name, dest)


class OutputLocation:
    """A local output folder or an ``s3://`` prefix, with atomic publish and checkpoints."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.remote = uri_scheme(uri) == "s3"
        if self.remote:
            from .s3 import S3Store

            self.store: Any = S3Store(uri)
        else:
            self.store = _LocalStore(uri)
            self.root = self.store.root
        self._checkpoints_restored = False

    def uri_for(self, name: str) -> str:
        return self.store.uri_for(name)

    def check(self) -> None:
        """Fail fast (before any compute) when the output cannot be written."""
        self.store.check_bucket()

    # ---- finished results --------------------------------------------------------------
    def marker(self) -> dict | None:
        data = self.store.get_bytes(MARKER_FILE)
        if data is None:
            return None
        try:
            marker = json.loads(data)
        except ValueError:
            return None
        return marker if isinstance(marker, dict) else None

    def completed(self, fingerprint: str) -> dict | None:
        """The marker when a finished result of this experiment is here (every listed file
        present with its size), else None."""
        marker = self.marker()
        if not marker or marker.get("experimentFingerprint") != fingerprint:
            return None
        for name, info in (marker.get("files") or {}).items():
            if self.store.size(name) != info.get("size"):
                return None
        return marker

    def read_text(self, name: str) -> str | None:
        data = self.store.get_bytes(name)
        return None if data is None else data.decode("utf-8")

    def publish(
        self,
        staging: Path,
        order: list[str] | None = None,
        *,
        fingerprint: str | None = None,
        show_progress: bool | None = None,
    ) -> dict[str, str]:
        """Upload every file of ``staging`` under a temporary prefix, move them into place
        (``order`` names go last), then write the marker. A failure at any point leaves no
        marker (and cleans up the temporary prefix)."""
        names = _files(staging)
        last = [n for n in (order or []) if n in names]
        sequence = [n for n in names if n not in last] + last
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        prefix = f"{STAGING_DIRNAME}/{run_id}"
        files = {
            n: {"size": (staging / n).stat().st_size, "sha256": file_digest(staging / n)} for n in sequence
        }
        staged: list[str] = []
        try:
            for name in sequence:
                self.store.upload(staging / name, f"{prefix}/{name}", files[name]["sha256"], show_progress)
                staged.append(f"{prefix}/{name}")
            # From here on the old result (if any) is being replaced: retract its marker first.
            self.store.delete([MARKER_FILE])
            for name in sequence:
                self.store.copy(f"{prefix}/{name}", name)
            marker = {
                "schemaVersion": MARKER_SCHEMA,
                "experimentFingerprint": fingerprint,
                "runId": run_id,
                "completedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": files,
            }
            self.store.put_bytes(MARKER_FILE, json.dumps(marker, indent=2).encode())
        finally:
            try:
                self.store.delete(staged)
            except Exception as err:  # leftovers under the staging prefix are harmless
                log.warning("could not clean up %s: %s", prefix, redact(str(err)))
        return {name: self.uri_for(name) for name in sequence}

    # ---- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        """A local folder; for s3 outputs it is restored from the output on first access."""
        if not self.remote:
            return self.root / CHECKPOINT_DIRNAME
        local = cache_root() / "checkpoints" / cache_key(self.uri.rstrip("/"))
        if not self._checkpoints_restored:
            self._checkpoints_restored = True
            self._restore_checkpoints(local)
        return local

    def _restore_checkpoints(self, local: Path) -> None:
        raw = self.store.get_bytes(f"{CHECKPOINT_DIRNAME}/{CHECKPOINT_MANIFEST}")
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True, exist_ok=True)
        if raw is None:
            return
        try:
            manifest = json.loads(raw).get("files", {})
        except (ValueError, AttributeError):
            return
        for name, info in manifest.items():
            dest = local / name
            self.store.download(f"{CHECKPOINT_DIRNAME}/{name}", dest)
            if file_digest(dest) != info.get("sha256"):
                log.warning("checkpoint %s does not match its manifest; starting fresh", name)
                shutil.rmtree(local, ignore_errors=True)
                local.mkdir(parents=True, exist_ok=True)
                return
        stats.add("checkpoint_restores")
        log.info("restored %d checkpoint file(s) from %s", len(manifest), redact(self.uri))

    def save_checkpoints(self) -> None:
        """Upload changed checkpoint files, drop removed ones, then write the manifest."""
        if not self.remote:
            return
        local = self.checkpoint_dir
        previous: dict = {}
        raw = self.store.get_bytes(f"{CHECKPOINT_DIRNAME}/{CHECKPOINT_MANIFEST}")
        if raw:
            try:
                previous = json.loads(raw).get("files", {})
            except (ValueError, AttributeError):
                previous = {}
        current = {
            n: {"size": (local / n).stat().st_size, "sha256": file_digest(local / n)}
            for n in _files(local)
            if not Path(n).name.startswith(".")
        }
        for name, info in current.items():
            if previous.get(name) != info:
                self.store.upload(local / name, f"{CHECKPOINT_DIRNAME}/{name}", info["sha256"], False)
        self.store.put_bytes(
            f"{CHECKPOINT_DIRNAME}/{CHECKPOINT_MANIFEST}", json.dumps({"files": current}).encode()
        )
        gone = [f"{CHECKPOINT_DIRNAME}/{n}" for n in previous if n not in current]
        if gone:
            self.store.delete(gone)
        stats.add("checkpoint_saves")

    def clear_checkpoints(self) -> None:
        if self.remote:
            names = [f"{CHECKPOINT_DIRNAME}/{o['rel']}" for o in self.store.list(CHECKPOINT_DIRNAME)]
            if names:
                self.store.delete(names)
            shutil.rmtree(cache_root() / "checkpoints" / cache_key(self.uri.rstrip("/")), ignore_errors=True)
        else:
            shutil.rmtree(self.root / CHECKPOINT_DIRNAME, ignore_errors=True)
