"""``http(s)://`` read-only downloads (urllib), cached by URI + ETag/Last-Modified + size.

Presigned URLs work (the query string is kept for the request and redacted in messages).
Transient failures (connection errors, 429, 5xx) are retried with exponential backoff.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import InputError, TransientError
from .common import CHUNK, cache_key, cache_root, redact, replace_dir, stats, transfer_progress

USER_AGENT = "sparsify-runner"


def _attempts() -> int:
    try:
        return max(1, int(os.environ.get("SPARSIFY_HTTP_MAX_ATTEMPTS", "4")))
    except ValueError:
        return 4


def _open(url: str, method: str, what: str):
    """urlopen with retries; maps failures to InputError/TransientError."""
    shown = redact(url)
    last: str = ""
    attempts = _attempts()
    for attempt in range(attempts):
        req = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT})
        try:
            return urllib.request.urlopen(req, timeout=float(os.environ.get("SPARSIFY_HTTP_TIMEOUT", "30")))
        except urllib.error.HTTPError as err:
            if method == "HEAD" and err.code not in (404, 410) and err.code < 500:
                return None  # no HEAD (405/501) or a URL presigned for GET only (403): just GET
            if err.code == 404:
                raise InputError(f"{what} '{shown}': not found (HTTP 404); check the URL") from None
            if err.code in (401, 403):
                raise InputError(
                    f"{what} '{shown}': access denied (HTTP {err.code}); the URL needs credentials or has "
                    "expired (presigned URLs do); make a new one or use s3:// with credentials"
                ) from None
            if err.code != 429 and err.code < 500:
                raise InputError(f"{what} '{shown}': HTTP {err.code} {err.reason}; check the URL") from None
            last = f"HTTP {err.code}"
        except urllib.error.URLError as err:
            if "CERTIFICATE_VERIFY_FAILED" in str(err.reason):
                raise InputError(
                    f"{what} '{shown}': TLS certificate verification failed; fix the server's "
                    "certificate or set SSL_CERT_FILE to its CA"
                ) from None
            last = str(getattr(err, "reason", err))
        except (TimeoutError, ConnectionError) as err:
            last = type(err).__name__
        if attempt + 1 < attempts:
            time.sleep(min(20.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2))
    raise TransientError(
        f"{what} '{shown}': download failed after {attempts} attempts ({redact(last)}); "
        "check the host is reachable"
    )


def fetch(uri: str, *, what: str, show_progress: bool | None = None) -> Path:
    head = _open(uri, "HEAD", what)
    headers = dict(head.headers.items()) if head is not None else {}
    if head is not None:
        head.close()
    validator = headers.get("ETag") or headers.get("Last-Modified") or ""
    size = headers.get("Content-Length", "")
    name = Path(unquote(urlparse(uri).path)).name or "download"
    entry = cache_root() / "http" / cache_key(uri)
    target = entry / "data" / name
    meta = {"validator": validator, "size": size}
    if validator and _cached(entry, meta, target):
        stats.add("cache_hits")
        return target
    stats.add("cache_misses")
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        dest = tmp / "data" / name
        dest.parent.mkdir(parents=True)
        resp = _open(uri, "GET", what)
        expected = resp.headers.get("Content-Length")
        got = 0
        with (
            resp,
            open(dest, "wb") as out,
            transfer_progress(f"{what}: {name}", int(expected or 0), show_progress) as advance,
        ):
            try:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    got += len(chunk)
                    advance(len(chunk))
            except (OSError, TimeoutError) as err:
                raise TransientError(
                    f"{what} '{redact(uri)}': transfer broke off ({type(err).__name__}); try again"
                ) from None
        if expected and int(expected) != got:
            raise TransientError(f"{what} '{redact(uri)}': got {got} of {expected} bytes; try again")
        stats.add("downloaded_bytes", got)
        stats.add("downloaded_objects")
        meta = {
            "validator": resp.headers.get("ETag") or resp.headers.get("Last-Modified") or validator,
            "size": expected or size,
        }
        (tmp / "cache.json").write_text(json.dumps(meta))
        replace_dir(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _cached(entry: Path, meta: dict, target: Path) -> bool:
    try:
        return json.loads((entry / "cache.json").read_text()) == meta and target.is_file()
    except (OSError, ValueError):
        return False
