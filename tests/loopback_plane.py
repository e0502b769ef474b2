"""Pieces shared by the suites that start a real control plane on 127.0.0.1.

`tests/apiserver` (etcd + the standalone apiextensions-apiserver) and `tests/cluster` (etcd +
kube-apiserver + kube-controller-manager + kube-scheduler + kwok) both use: where the binaries
are and why they may be missing, a CA with server/client certificates, kubeconfig files,
subprocesses in their own process group with a log, readiness polling, and etcd.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLANE_DIR = Path(os.environ.get("SPARSIFY_CONTROL_PLANE_DIR", ROOT / ".tools" / "control-plane" / "current"))
START_TIMEOUT_S = 90.0


def missing_reason(*names: str) -> str | None:
    """Why the binaries `names` cannot be used (not built), with the build log; None if all are there."""
    missing = [name for name in names if not os.access(PLANE_DIR / name, os.X_OK)]
    if not missing:
        return None
    logs = sorted((ROOT / ".tools" / "control-plane").glob("*/build.log"), key=lambda p: p.stat().st_mtime)
    hint = f"; build log: {logs[-1].relative_to(ROOT)}" if logs else ""
    return (
        f"control plane not built ({', '.join(missing)} missing under {PLANE_DIR}): "
        f"run `bash scripts/build-control-plane.sh` (make test-deps){hint}"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(k, path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(c, path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    return path


def _name(cn: str, org: str | None = None):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _validity(builder):
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


def _make_ca():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    ca_key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("sparsify-test-ca"))
        .issuer_name(_name("sparsify-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return ca_key, _validity(builder).sign(ca_key, hashes.SHA256())


def _leaf(ca_key, ca, subject, usage, san=None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    k = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return k, _validity(builder).sign(ca_key, hashes.SHA256())


def make_certs(folder: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1/localhost, and an admin client certificate in
    `system:masters` (always allowed by the delegating authorizer and by RBAC's superuser rule)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, ca = _make_ca()
    server_key, server = _leaf(
        ca_key,
        ca,
        _name("127.0.0.1"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    admin_key, admin = _leaf(
        ca_key, ca, _name("sparsify-test-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return Certs(
        ca=_write_cert(ca, folder / "ca.crt"),
        ca_key=_write_key(ca_key, folder / "ca.key"),
        server_cert=_write_cert(server, folder / "server.crt"),
        server_key=_write_key(server_key, folder / "server.key"),
        admin_cert=_write_cert(admin, folder / "admin.crt"),
        admin_key=_write_key(admin_key, folder / "admin.key"),
    )


def make_signing_key(folder: Path, name: str = "service-account") -> tuple[Path, Path]:
    """An EC P-256 key pair (PKCS8 private, SubjectPublicKeyInfo public) for signing tokens."""
    from cryptography.hazmat.primitives import serialization

    k = _key()
    public = folder / f"{name}.pub"
    public.write_bytes(
        k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return _write_key(k, folder / f"{name}.key"), public


def write_kubeconfig(
    path: Path, server: str, certs: Certs, *, token: str | None = None, namespace: str | None = None
) -> Path:
    """A kubeconfig for `server`: the admin client certificate, or a bearer `token` when given."""
    import yaml

    user = (
        {"token": token}
        if token is not None
        else {"client-certificate": str(certs.admin_cert), "client-key": str(certs.admin_key)}
    )
    context = {"cluster": "test", "user": "user", **({"namespace": namespace} if namespace else {})}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(certs.ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": context}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o600)
    return path


def admin_ssl_context(certs: Certs) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))
    return ctx


# ---- processes ----------------------------------------------------------------------------------


class Proc:
    """A subprocess in its own process group (start_new_session), its output in `log`."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name, self.log = name, log
        self._fh = log.open("wb")
        self.popen = subprocess.Popen(
            argv,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.tail()}")

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace_s`."""
        if self.popen.poll() is None:
            # our own child's process group (start_new_session): nothing else is in it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._fh.close()


def wait_ready(
    proc: Proc, ready: Callable[[], tuple[bool, str]], what: str, timeout_s: float = START_TIMEOUT_S
) -> float:
    """Poll `ready` until it says so (seconds taken); a dead process or a timeout raises."""
    start = time.monotonic()
    last = "never answered"
    while time.monotonic() - start < timeout_s:
        proc.check_alive()
        try:
            ok, last = ready()
            if ok:
                return time.monotonic() - start
        except (OSError, urllib.error.URLError, ssl.SSLError) as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s ({last}):\n{proc.tail()}")


def started(
    proc: Proc, ready: Callable[[], tuple[bool, str]], what: str, timeout_s: float = START_TIMEOUT_S
) -> float:
    """wait_ready, stopping the process when it does not become ready."""
    try:
        return wait_ready(proc, ready, what, timeout_s)
    except BaseException:
        proc.stop()
        raise


def retry_port_race(start, attempts: int = 3):
    """A free port can be taken between choosing it and the server binding it: try again."""
    for attempt in range(attempts):
        try:
            return start()
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def https_ok(url: str, ctx: ssl.SSLContext) -> tuple[bool, str]:
    """(True, "") when GET `url` answers 200; otherwise (False, what it said)."""
    try:
        with urllib.request.urlopen(url, timeout=3, context=ctx) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read()[:300]!r}"


def start_etcd(binary: Path, work: Path) -> tuple[Proc, str, float]:
    """etcd on two free 127.0.0.1 ports, `--unsafe-no-fsync`: (process, client URL, seconds to ready)."""
    client_port, peer_port = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    argv = [
        str(binary),
        "--name=test",
        f"--data-dir={work / f'etcd-data-{client_port}'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=test={peer_url}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]
    proc = Proc("etcd", argv, work / "etcd.log")

    def ready():
        with urllib.request.urlopen(f"{client_url}/health", timeout=2) as resp:
            body = resp.read().decode()
        return json.loads(body).get("health") == "true", body

    return proc, client_url, started(proc, ready, "etcd")
