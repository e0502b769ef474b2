"""A real API server on loopback: etcd + the standalone apiextensions-apiserver.

`scripts/build-control-plane.sh` (run by `make test-deps`) builds both from Go modules into
`.tools/control-plane/<versions>/` and points `.tools/control-plane/current` at them. Without them
every test here skips and says why; with them a broken start fails the tests.

The apiextensions-apiserver serves CRDs and custom resources only (no core API: no namespaces,
RBAC, TokenReview or SubjectAccessReview), so it runs the way its own integration tests run it
in-process, expressed as flags:

* serving: TLS on 127.0.0.1 with a server certificate signed by a CA made here;
* authentication: x509 client certificates against that CA (`--client-ca-file`); the admin
  certificate is in `system:masters`, which the delegating authorizer always allows;
* `--authentication-kubeconfig`, `--authorization-kubeconfig` and `--kubeconfig` must name a
  server (there is no in-cluster config): they point back at this server as the admin, and are
  only dialled for tokens, non-admin users and core informers (which get 404s and log them);
* admission plugins that need core informers (namespaces, webhook configurations, admission
  policies) and API priority-and-fairness (its config objects are core) are switched off;
* readiness is `/readyz?exclude=informer-sync`: the generic `informer-sync` check waits for the
  Service informer (used to resolve conversion webhooks), which never syncs without a core API;
* etcd: `--unsafe-no-fsync`, data in a temporary folder, client and peer ports on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLANE_DIR = Path(os.environ.get("SPARSIFY_CONTROL_PLANE_DIR", ROOT / ".tools" / "control-plane" / "current"))
START_TIMEOUT_S = 90.0

# admission plugins of the generic apiserver that wait on informers of the core API, which this
# server does not serve; left on, every create would wait for namespaces that never sync
_CORE_INFORMER_ADMISSION = (
    "NamespaceLifecycle",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "MutatingAdmissionPolicy",
)


def pytest_collection_modifyitems(config, items):
    # starting the plane takes seconds: what needs it is `slow` (out of `pytest -m "not slow"`)
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here) and "control_plane" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.slow)


def _missing_reason() -> str | None:
    wanted = [PLANE_DIR / "etcd", PLANE_DIR / "apiextensions-apiserver"]
    missing = [p.name for p in wanted if not os.access(p, os.X_OK)]
    if not missing:
        return None
    logs = sorted((ROOT / ".tools" / "control-plane").glob("*/build.log"))
    hint = f"; last build log: {logs[-1].relative_to(ROOT)}" if logs else ""
    return (
        f"real API server not built ({', '.join(missing)} missing under {PLANE_DIR}): "
        f"run `bash scripts/build-control-plane.sh` (make test-deps){hint}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path


def _make_certs(folder: Path) -> Certs:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k, path: Path) -> Path:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def write_cert(c, path: Path) -> Path:
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return path

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("sparsify-test-ca"))
        .issuer_name(name("sparsify-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
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
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(subject: x509.Name, usage, san=None):
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return k, builder.sign(ca_key, hashes.SHA256())

    server_key, server = leaf(
        name("127.0.0.1"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    # O=system:masters: the delegating authorizer's always-allowed group (the admin)
    admin_key, admin = leaf(name("sparsify-test-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH)
    return Certs(
        ca=write_cert(ca, folder / "ca.crt"),
        server_cert=write_cert(server, folder / "server.crt"),
        server_key=write_key(server_key, folder / "server.key"),
        admin_cert=write_cert(admin, folder / "admin.crt"),
        admin_key=write_key(admin_key, folder / "admin.key"),
    )


def _write_kubeconfig(path: Path, server: str, certs: Certs) -> Path:
    import yaml

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(certs.ca)}}],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate": str(certs.admin_cert), "client-key": str(certs.admin_key)},
            }
        ],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o600)
    return path


# ---- processes ----------------------------------------------------------------------------------


class _Proc:
    def __init__(self, name: str, argv: list[str], log: Path):
        self.name, self.log = name, log
        self._fh = log.open("wb")
        self.popen = subprocess.Popen(
            argv, stdout=self._fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
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
            raise RuntimeError(f"{self.name} exited with {code} while starting:\n{self.tail()}")

    def stop(self, grace_s: float = 15.0) -> None:
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


def _wait(proc: _Proc, ready, what: str, timeout_s: float = START_TIMEOUT_S) -> float:
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


@dataclass
class ControlPlane:
    """A running etcd + apiextensions-apiserver on 127.0.0.1, and how to reach it."""

    server: str
    kubeconfig: Path
    certs: Certs
    etcd_url: str
    logs: dict[str, Path]
    startup_s: dict[str, float]

    def api_client(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.certs.ca)
        cfg.cert_file = str(self.certs.admin_cert)
        cfg.key_file = str(self.certs.admin_key)
        cfg.verify_ssl = True
        return client.ApiClient(cfg)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.certs.ca))
        ctx.load_cert_chain(str(self.certs.admin_cert), str(self.certs.admin_key))
        return ctx


def _start_etcd(binary: Path, work: Path) -> tuple[_Proc, str, float]:
    client_port, peer_port = _free_port(), _free_port()
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
    proc = _Proc("etcd", argv, work / "etcd.log")

    def ready():
        with urllib.request.urlopen(f"{client_url}/health", timeout=2) as resp:
            body = resp.read().decode()
        return json.loads(body).get("health") == "true", body

    try:
        took = _wait(proc, ready, "etcd")
    except BaseException:
        proc.stop()
        raise
    return proc, client_url, took


def _start_apiserver(binary: Path, work: Path, etcd_url: str, certs: Certs) -> tuple[_Proc, str, Path, float]:
    port = _free_port()
    server = f"https://127.0.0.1:{port}"
    kubeconfig = _write_kubeconfig(work / "admin.kubeconfig", server, certs)
    argv = [
        str(binary),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={work / 'apiserver-certs'}",
        f"--tls-cert-file={certs.server_cert}",
        f"--tls-private-key-file={certs.server_key}",
        f"--client-ca-file={certs.ca}",
        f"--authentication-kubeconfig={kubeconfig}",
        "--authentication-skip-lookup",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--kubeconfig={kubeconfig}",
        f"--disable-admission-plugins={','.join(_CORE_INFORMER_ADMISSION)}",
        "--enable-priority-and-fairness=false",
        "--v=1",
    ]
    proc = _Proc("apiextensions-apiserver", argv, work / "apiserver.log")
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))

    def ready():
        # /readyz less `informer-sync` (that check waits for a Service informer of the core API,
        # which this server does not serve, so it never passes), then the CRD API answering as
        # the admin: TLS, client-cert authentication, authorization and etcd storage all work
        for path in (
            "/readyz?exclude=informer-sync",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?limit=1",
        ):
            try:
                with urllib.request.urlopen(f"{server}{path}", timeout=3, context=ctx) as resp:
                    if resp.status != 200:
                        return False, f"{path}: HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                return False, f"{path}: HTTP {exc.code}: {exc.read()[:300]!r}"
        return True, "ready"

    try:
        took = _wait(proc, ready, "apiextensions-apiserver")
    except BaseException:
        proc.stop()
        raise
    return proc, server, kubeconfig, took


def _retry_port_race(start, attempts: int = 3):
    """A free port can be taken between choosing it and the server binding it: try again."""
    for attempt in range(attempts):
        try:
            return start()
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == attempts - 1:
                raise


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory) -> Iterator[ControlPlane]:
    reason = _missing_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("control-plane")
    certs = _make_certs(work)
    etcd, etcd_url, etcd_s = _retry_port_race(lambda: _start_etcd(PLANE_DIR / "etcd", work))
    try:
        api, server, kubeconfig, api_s = _retry_port_race(
            lambda: _start_apiserver(PLANE_DIR / "apiextensions-apiserver", work, etcd_url, certs)
        )
    except BaseException:
        etcd.stop()
        raise
    try:
        yield ControlPlane(
            server=server,
            kubeconfig=kubeconfig,
            certs=certs,
            etcd_url=etcd_url,
            logs={"etcd": etcd.log, "apiserver": api.log},
            startup_s={"etcd": round(etcd_s, 2), "apiextensions-apiserver": round(api_s, 2)},
        )
    finally:
        api.stop()
        etcd.stop()


@pytest.fixture(scope="session")
def api_client(control_plane):
    client = control_plane.api_client()
    yield client
    client.close()
