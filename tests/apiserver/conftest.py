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

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopback_plane import (
    PLANE_DIR,
    Certs,
    Proc,
    admin_ssl_context,
    free_port,
    https_ok,
    make_certs,
    missing_reason,
    retry_port_race,
    start_etcd,
    started,
    write_kubeconfig,
)

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
        return admin_ssl_context(self.certs)


def _start_apiserver(binary: Path, work: Path, etcd_url: str, certs: Certs) -> tuple[Proc, str, Path, float]:
    port = free_port()
    server = f"https://127.0.0.1:{port}"
    kubeconfig = write_kubeconfig(work / "admin.kubeconfig", server, certs)
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
    proc = Proc("apiextensions-apiserver", argv, work / "apiserver.log")
    ctx = admin_ssl_context(certs)

    def ready():
        # /readyz less `informer-sync` (that check waits for a Service informer of the core API,
        # which this server does not serve, so it never passes), then the CRD API answering as
        # the admin: TLS, client-cert authentication, authorization and etcd storage all work
        for path in (
            "/readyz?exclude=informer-sync",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?limit=1",
        ):
            ok, said = https_ok(f"{server}{path}", ctx)
            if not ok:
                return False, f"{path}: {said}"
        return True, "ready"

    return proc, server, kubeconfig, started(proc, ready, "apiextensions-apiserver")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory) -> Iterator[ControlPlane]:
    reason = missing_reason("etcd", "apiextensions-apiserver")
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("control-plane")
    certs = make_certs(work)
    etcd, etcd_url, etcd_s = retry_port_race(lambda: start_etcd(PLANE_DIR / "etcd", work))
    try:
        api, server, kubeconfig, api_s = retry_port_race(
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
