#!/usr/bin/env bash
# Installs what the integration tests start that pip cannot provide:
#   * Debian's prometheus-pushgateway (tests/runner_io start it on a loopback port);
#   * Debian's chromium (the dashboard's browser test drives it headless with Playwright;
#     Playwright's own browser download is never used);
#   * podman + runc + debootstrap (tests/images builds the images on a debootstrap bookworm base
#     and runs them; no Docker engine, no registry needed).
# Idempotent: quick no-op when everything is already there. `.ci/run` runs as root on a
# fresh machine; as another user a missing package is reported with the command to run.
set -euo pipefail

PUSHGATEWAY_BIN="${SPARSIFY_TEST_PUSHGATEWAY:-/usr/bin/prometheus-pushgateway}"
missing=()
CHROMIUM_BIN="${SPARSIFY_TEST_CHROMIUM:-/usr/bin/chromium}"
[[ -x "$PUSHGATEWAY_BIN" ]] || missing+=(prometheus-pushgateway)
[[ -x "$CHROMIUM_BIN" ]] || missing+=(chromium)
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] || missing+=("$tool")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "missing test dependencies: ${missing[*]}" >&2
    echo "install them with: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The package starts a system service where systemd runs; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus-pushgateway 2>/dev/null; then
    systemctl stop prometheus-pushgateway || true
fi
[[ -x "$PUSHGATEWAY_BIN" ]] || { echo "prometheus-pushgateway did not install $PUSHGATEWAY_BIN" >&2; exit 1; }
[[ -x "$CHROMIUM_BIN" ]] || { echo "chromium did not install $CHROMIUM_BIN" >&2; exit 1; }
for tool in podman runc; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool did not install" >&2; exit 1; }
done
echo "installed: ${missing[*]}"
