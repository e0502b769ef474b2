"""``s3://bucket/key`` through boto3, for AWS S3 and S3-compatible stores (MinIO, Ceph RGW,
GCS interop).

Configuration comes from the environment the way AWS tools and KServe read it:

* endpoint: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (a URL), else KServe's
  ``S3_ENDPOINT`` (``host:port``) with ``S3_USE_HTTPS`` (default ``1``); a custom endpoint
  switches to path-style addressing (what MinIO/Ceph expect);
* region: ``AWS_REGION``, ``AWS_DEFAULT_REGION`` (default ``us-east-1``);
* credentials: boto3's chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
  ``AWS_SESSION_TOKEN``, profile, web identity / IRSA, instance metadata); with none at
  all, requests are sent unsigned (public buckets);
* TLS: ``S3_VERIFY_SSL=0`` disables certificate checks, ``AWS_CA_BUNDLE`` adds a CA;
* retries: botocore's ``standard`` retry mode with ``SPARSIFY_S3_MAX_ATTEMPTS`` attempts
  (default 5, exponential backoff with jitter).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, SparsifyError, TransientError
from .common import CHUNK, cache_key, cache_root, file_digest, redact, replace_dir, stats, transfer_progress

log = logging.getLogger("sparsify.storage")

SHA256_META = "sha256"  # x-amz-meta-sha256: written by our uploads, checked by downloads
MB = 1024 * 1024


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        rest = uri.split("://", 1)[1]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise InputError(f"'{uri}' has no bucket; write s3://BUCKET/KEY")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> S3Uri:
        base = self.key.rstrip("/")
        return S3Uri(self.bucket, f"{base}/{name}" if base else name)


# ---- configuration ---------------------------------------------------------------------
def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def endpoint_url() -> str | None:
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if url:
        return url
    host = os.environ.get("S3_ENDPOINT")
    if host:
        if "://" in host:
            return host
        scheme = "https" if _truthy(os.environ.get("S3_USE_HTTPS"), True) else "http"
        return f"{scheme}://{host}"
    return None


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _max_attempts() -> int:
    try:
        return max(1, int(os.environ.get("SPARSIFY_S3_MAX_ATTEMPTS", "5")))
    except ValueError:
        return 5


def concurrency() -> int:
    try:
        return max(1, int(os.environ.get("SPARSIFY_S3_CONCURRENCY", "8")))
    except ValueError:
        return 8


_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def _config_key() -> tuple:
    names = (
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL",
        "S3_ENDPOINT",
        "S3_USE_HTTPS",
        "S3_VERIFY_SSL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CA_BUNDLE",
        "SPARSIFY_S3_MAX_ATTEMPTS",
        "AWS_REQUEST_CHECKSUM_CALCULATION",
        "AWS_RESPONSE_CHECKSUM_VALIDATION",
    )
    return tuple(os.environ.get(n) for n in names)


def client():
    """A boto3 S3 client configured from the environment (cached per configuration)."""
    key = _config_key()
    with _clients_lock:
        if key in _clients:
            return _clients[key]
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        session = boto3.session.Session()
        endpoint = endpoint_url()
        cfg = {
            "region_name": _region(),
            "retries": {"max_attempts": _max_attempts(), "mode": "standard"},
            "connect_timeout": float(os.environ.get("SPARSIFY_S3_CONNECT_TIMEOUT", "10")),
            "read_timeout": float(os.environ.get("SPARSIFY_S3_READ_TIMEOUT", "60")),
            "max_pool_connections": max(10, concurrency() * 2),
            "s3": {"addressing_style": "path" if endpoint else "auto"},
        }
        if endpoint:
            # botocore >= 1.36 adds CRC checksum headers by default, which many S3-compatible
            # stores (older MinIO, Ceph RGW, GCS interop, B2) reject; keep the pre-1.36
            # behaviour there unless the user chose (our own MD5/SHA-256 checks still run).
            if not os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION"):
                cfg["request_checksum_calculation"] = "when_required"
            if not os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION"):
                cfg["response_checksum_validation"] = "when_required"
        if session.get_credentials() is None:
            cfg["signature_version"] = UNSIGNED
        verify: bool | str | None = None
        if not _truthy(os.environ.get("S3_VERIFY_SSL"), True):
            verify = False
        made = session.client("s3", endpoint_url=endpoint, verify=verify, config=Config(**cfg))
        _clients[key] = made
        return made


def transfer_config():
    """Multipart above 64 MiB (``SPARSIFY_S3_MULTIPART_THRESHOLD_MB``), parallel parts."""
    from boto3.s3.transfer import TransferConfig

    threshold = int(float(os.environ.get("SPARSIFY_S3_MULTIPART_THRESHOLD_MB", "64")) * MB)
    return TransferConfig(
        multipart_threshold=threshold,
        multipart_chunksize=max(5 * MB, threshold // 2 if threshold >= 10 * MB else 5 * MB),
        max_concurrency=concurrency(),
        use_threads=True,
    )


# ---- errors ----------------------------------------------------------------------------
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "AuthorizationHeaderMalformed",
}
_EXPIRED = {"ExpiredToken", "TokenRefreshRequired", "RequestExpired", "ExpiredTokenException"}
_TRANSIENT = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
    "OperationAborted",
    "PreconditionFailed",
}


def _endpoint_hint() -> str:
    return redact(endpoint_url() or "AWS S3 (no AWS_ENDPOINT_URL set)")


def translate(err: BaseException, uri: str, action: str) -> SparsifyError:
    """A botocore/boto3 exception as one line naming the URI and the likely fix."""
    from botocore import exceptions as bex

    uri = redact(uri)
    where = f"{action} '{uri}'"
    if isinstance(err, SparsifyError):
        return err
    if isinstance(err, bex.ClientError):
        error = err.response.get("Error", {})
        code = str(error.get("Code") or err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            bucket = uri.split("://", 1)[-1].split("/", 1)[0]
            return InputError(
                f"{where}: bucket '{bucket}' does not exist at {_endpoint_hint()}; "
                "check the bucket name and the endpoint (AWS_ENDPOINT_URL)"
            )
        if code in _MISSING:
            return InputError(f"{where}: no such object or prefix; check the key (paths are case-sensitive)")
        if code in _EXPIRED:
            return InputError(
                f"{where}: the S3 credentials have expired; "
                "refresh AWS_SESSION_TOKEN / the credentials secret"
            )
        if code in _BAD_CREDENTIALS:
            return InputError(
                f"{where}: the S3 credentials were rejected ({code}); check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (the credentials secret) and the endpoint"
            )
        if code in _DENIED:
            return InputError(
                f"{where}: access denied; grant these credentials "
                f"{'write' if action in ('upload', 'output') else 'read'} "
                "access to the bucket/prefix or use other credentials"
            )
        if code == "InvalidBucketName":
            return InputError(f"{where}: invalid bucket name; use s3://BUCKET/KEY")
        if code in _TRANSIENT or (isinstance(status, int) and status >= 500):
            return TransientError(f"{where}: the storage service failed ({code}) after retries; try again")
        return InputError(
            f"{where}: the storage service refused the request ({code}); check the URI and endpoint"
        )
    if isinstance(err, bex.NoCredentialsError | bex.PartialCredentialsError):
        return InputError(
            f"{where}: no usable S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(err, bex.SSLError):
        return InputError(
            f"{where}: TLS verification with {_endpoint_hint()} failed; set AWS_CA_BUNDLE to the CA "
            "certificate or S3_VERIFY_SSL=0"
        )
    if isinstance(err, bex.EndpointConnectionError | bex.ConnectionError | bex.ConnectTimeoutError):
        return TransientError(
            f"{where}: cannot connect to the S3 endpoint {_endpoint_hint()} after retries; check "
            "AWS_ENDPOINT_URL (or S3_ENDPOINT/S3_USE_HTTPS) and that the service is reachable"
        )
    if isinstance(err, bex.ReadTimeoutError | bex.ResponseStreamingError | bex.IncompleteReadError):
        return TransientError(f"{where}: the transfer timed out or broke off after retries; try again")
    if isinstance(err, bex.ParamValidationError):
        return InputError(f"{where}: invalid S3 request ({redact(str(err)).splitlines()[0]})")
    if isinstance(err, bex.BotoCoreError):
        return TransientError(f"{where}: {type(err).__name__}: {redact(str(err))}")
    return TransientError(f"{where}: {type(err).__name__}: {redact(str(err))}")


def _translating(uri: str, action: str):
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except (ClientError, BotoCoreError) as err:
            raise translate(err, uri, action) from None
        except (S3UploadFailedError, S3TransferFailedError) as err:
            cause = err.__cause__ or err.__context__
            if isinstance(cause, ClientError | BotoCoreError):
                raise translate(cause, uri, action) from None
            text = str(err)
            for code in sorted(
                _DENIED | _BAD_CREDENTIALS | _EXPIRED | {"NoSuchBucket"}, key=len, reverse=True
            ):
                if f"({code})" in text:
                    from botocore.exceptions import ClientError as CE

                    raise translate(CE({"Error": {"Code": code}}, action), uri, action) from None
            raise TransientError(f"{action} '{redact(uri)}': {redact(text)}") from None

    return ctx()


# ---- downloads -------------------------------------------------------------------------
def _list(uri: S3Uri, full: str, action: str = "list") -> list[dict]:
    """Objects under a prefix (ending in '/'), skipping folder placeholders."""
    s3 = client()
    prefix = uri.key.rstrip("/") + "/" if uri.key else ""
    out: list[dict] = []
    with _translating(full, action):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                if rel and not rel.endswith("/"):
                    out.append(
                        {"key": obj["Key"], "rel": rel, "etag": obj["ETag"].strip('"'), "size": obj["Size"]}
                    )
    return out


def _head(uri: S3Uri, full: str, action: str = "download") -> dict | None:
    from botocore.exceptions import ClientError

    if not uri.key or uri.key.endswith("/"):
        return None
    try:
        resp = client().head_object(Bucket=uri.bucket, Key=uri.key)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code"))
        if code in _MISSING:
            return None
        if code in _DENIED and not os.environ.get("SPARSIFY_S3_STRICT_HEAD"):
            # Some policies allow ListBucket but not HeadObject on prefixes: try the listing.
            return None
        raise translate(err, full, action) from None
    except Exception as err:
        raise translate(err, full, action) from None
    return {
        "key": uri.key,
        "rel": uri.key.rsplit("/", 1)[-1],
        "etag": resp["ETag"].strip('"'),
        "size": resp["ContentLength"],
        "sha256": resp.get("Metadata", {}).get(SHA256_META),
    }


def _verify(path: Path, obj: dict, full: str) -> None:
    """Size always; MD5 when the ETag is a single-part MD5; our sha256 metadata otherwise."""
    size = path.stat().st_size
    if size != obj["size"]:
        raise TransientError(f"download '{full}': got {size} bytes, expected {obj['size']}; try again")
    if os.environ.get("SPARSIFY_VERIFY_CHECKSUMS", "1") in ("0", "false"):
        return
    etag = obj["etag"]
    if len(etag) == 32 and "-" not in etag:
        if file_digest(path, "md5") != etag.lower():
            raise TransientError(
                f"download '{full}': MD5 does not match the ETag (corrupted transfer); try again"
            )
        return
    sha = obj.get("sha256")
    if sha is None and "-" in etag:
        with contextlib.suppress(Exception):
            sha = (
                client()
                .head_object(Bucket=obj["bucket"], Key=obj["key"])
                .get("Metadata", {})
                .get(SHA256_META)
            )
    if sha and file_digest(path) != sha:
        raise TransientError(f"download '{full}': sha256 does not match the uploaded checksum; try again")


def fetch(uri: str, *, what: str, show_progress: bool | None = None) -> Path:
    """Download an object (-> file) or a prefix (-> folder) into the cache; reuse it when
    the listing (keys, ETags, sizes) has not changed."""
    parsed = S3Uri.parse(uri)
    obj = _head(parsed, uri, what)
    objects = [obj] if obj else _list(parsed, uri, what)
    if not objects:
        raise InputError(
            f"{what} '{redact(uri)}': no such object or prefix in bucket '{parsed.bucket}' at "
            f"{_endpoint_hint()}; check the key (paths are case-sensitive)"
        )
    for o in objects:
        o["bucket"] = parsed.bucket
    entry = cache_root() / "s3" / cache_key(endpoint_url() or "aws", uri.rstrip("/"))
    files = {o["rel"]: {"etag": o["etag"], "size": o["size"]} for o in objects}
    result = entry / "data" / objects[0]["rel"] if obj else entry / "data"
    if _cache_valid(entry, files):
        stats.add("cache_hits")
        log.info("%s: cache hit for %s", what, redact(uri))
        return result
    stats.add("cache_misses")
    _download_all(entry, objects, files, uri, what, show_progress)
    return result


def _cache_valid(entry: Path, files: dict) -> bool:
    try:
        meta = json.loads((entry / "cache.json").read_text())
    except (OSError, ValueError):
        return False
    if meta.get("files") != files:
        return False
    return all(
        (entry / "data" / rel).is_file() and (entry / "data" / rel).stat().st_size == f["size"]
        for rel, f in files.items()
    )


def _download_all(
    entry: Path, objects: list[dict], files: dict, uri: str, what: str, show: bool | None
) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        old = _old_files(entry)
        s3 = client()
        cfg = transfer_config()
        total = sum(o["size"] for o in objects)
        with transfer_progress(f"{what}: {redact(uri)}", total, show) as advance:

            def one(o: dict) -> None:
                dest = tmp / "data" / o["rel"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                reuse = entry / "data" / o["rel"]
                if old.get(o["rel"]) == files[o["rel"]] and reuse.is_file():
                    os.link(reuse, dest) if _same_fs(reuse, dest) else shutil.copyfile(reuse, dest)
                    advance(o["size"])
                    return
                full = f"s3://{o['bucket']}/{o['key']}"
                with _translating(full, what):
                    if o["size"] < cfg.multipart_threshold:  # one GET (download_file adds a HEAD)
                        _get_to_file(s3, o, dest, advance)
                    else:  # parallel ranged GETs
                        s3.download_file(o["bucket"], o["key"], str(dest), Config=cfg, Callback=advance)
                _verify(dest, o, full)
                stats.add("downloaded_bytes", o["size"])
                stats.add("downloaded_objects")

            _run_parallel(one, objects)
        (tmp / "cache.json").write_text(json.dumps({"uri": redact(uri), "files": files}))
        replace_dir(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _get_to_file(s3, obj: dict, dest: Path, advance: Callable[[int], None]) -> None:
    body = s3.get_object(Bucket=obj["bucket"], Key=obj["key"], IfMatch=f'"{obj["etag"]}"')["Body"]
    with body, open(dest, "wb") as out:
        for chunk in body.iter_chunks(CHUNK):
            out.write(chunk)
            advance(len(chunk))


def _old_files(entry: Path) -> dict:
    try:
        return json.loads((entry / "cache.json").read_text()).get("files", {})
    except (OSError, ValueError):
        return {}


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.parent.stat().st_dev
    except OSError:
        return False


def _run_parallel(fn: Callable[[dict], None], items: list[dict]) -> None:
    if len(items) == 1:
        fn(items[0])
        return
    with ThreadPoolExecutor(max_workers=concurrency()) as pool:
        futures = [pool.submit(fn, item) for item in items]
        errors = [f.exception() for f in futures]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


# ---- output-side operations ------------------------------------------------------------
class S3Store:
    """Object operations under one output prefix, each mapped to one clear error."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.base = S3Uri.parse(self.uri)

    def key(self, name: str) -> str:
        return self.base.child(name).key

    def uri_for(self, name: str) -> str:
        return f"s3://{self.base.bucket}/{self.key(name)}"

    def check_bucket(self) -> None:
        """Fail before any work when the output bucket is missing or unreachable."""
        from botocore.exceptions import ClientError

        try:
            client().head_bucket(Bucket=self.base.bucket)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code"))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise translate(
                    ClientError({"Error": {"Code": "NoSuchBucket"}}, "HeadBucket"), self.uri, "output"
                ) from None
            raise translate(err, self.uri, "output") from None
        except Exception as err:
            raise translate(err, self.uri, "output") from None

    def upload(self, path: Path, name: str, sha256: str | None = None, show: bool | None = None) -> None:
        extra = {"Metadata": {SHA256_META: sha256 or file_digest(path)}}
        with (
            _translating(self.uri_for(name), "upload"),
            transfer_progress(f"upload {Path(name).name}", path.stat().st_size, show) as advance,
        ):
            client().upload_file(
                str(path),
                self.base.bucket,
                self.key(name),
                ExtraArgs=extra,
                Config=transfer_config(),
                Callback=advance,
            )
        stats.add("uploaded_bytes", path.stat().st_size)
        stats.add("uploaded_objects")

    def copy(self, src_name: str, dst_name: str) -> None:
        """Server-side copy (managed: multipart for large objects), metadata kept."""
        with _translating(self.uri_for(dst_name), "upload"):
            client().copy(
                {"Bucket": self.base.bucket, "Key": self.key(src_name)},
                self.base.bucket,
                self.key(dst_name),
                Config=transfer_config(),
            )

    def put_bytes(self, name: str, data: bytes, content_type: str = "application/json") -> None:
        with _translating(self.uri_for(name), "upload"):
            client().put_object(
                Bucket=self.base.bucket, Key=self.key(name), Body=data, ContentType=content_type
            )

    def get_bytes(self, name: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return client().get_object(Bucket=self.base.bucket, Key=self.key(name))["Body"].read()
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in _MISSING:
                return None
            raise translate(err, self.uri_for(name), "download") from None
        except Exception as err:
            raise translate(err, self.uri_for(name), "download") from None

    def size(self, name: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return client().head_object(Bucket=self.base.bucket, Key=self.key(name))["ContentLength"]
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in _MISSING:
                return None
            raise translate(err, self.uri_for(name), "download") from None

    def list(self, sub: str) -> list[dict]:
        return _list(self.base.child(sub), self.uri_for(sub))

    def delete(self, names: list[str]) -> None:
        """One DeleteObject per key (in parallel): DeleteObjects is missing or wants
        Content-MD5 on some S3-compatible stores (GCS interop, Ceph RGW)."""
        s3 = client()

        def one(item: dict) -> None:
            with _translating(self.uri_for(item["name"]), "delete"):
                s3.delete_object(Bucket=self.base.bucket, Key=self.key(item["name"]))

        _run_parallel(one, [{"name": n} for n in names])

    def download(self, name: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _translating(self.uri_for(name), "download"):
            client().download_file(self.base.bucket, self.key(name), str(dest), Config=transfer_config())
