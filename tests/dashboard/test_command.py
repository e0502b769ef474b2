"""The real ``sparsifyctl dashboard`` process: loopback by default (no token, foreign Host headers
refused), and beyond loopback a token from the environment is required and never printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(120)


def start(
    args: list[str], env_extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str, list[str]]:
    """Start the dashboard; (process, its URL, the lines it printed before serving)."""
    cmd = [
        sys.executable,
        "-c",
        "from sparsifyctl.cli import main; main()",
        "dashboard",
        "--port",
        "0",
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if k != "SPARSIFY_DASHBOARD_TOKEN"} | (env_extra or {})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"sparsify dashboard on (http://\S+/)", line)
        if m:
            return proc, m.group(1), lines
    proc.kill()
    raise AssertionError(f"no URL printed: {''.join(lines)}")


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_loopback_by_default_without_a_token(runs_root):
    proc, url, lines = start(["--runs", str(runs_root)])
    try:
        assert url.startswith("http://127.0.0.1:")
        assert not any("token" in line for line in lines)
        status, body = fetch(url)
        assert status == 200 and 'data-key="0/int8"' in body
        status, _ = fetch(url, {"Host": "rebound.attacker.example"})
        assert status == 400
    finally:
        stop(proc)


def test_beyond_loopback_the_env_token_is_required_and_not_printed(runs_root):
    token = "env-token-" + "z" * 16
    proc, url, lines = start(
        ["--runs", str(runs_root), "--host", "0.0.0.0"], {"SPARSIFY_DASHBOARD_TOKEN": token}
    )
    try:
        local = url.replace("0.0.0.0", "127.0.0.1")
        assert "token required" in lines[-1]
        assert fetch(local)[0] == 401
        assert fetch(local, {"X-Sparsify-Token": "nope"})[0] == 401
        status, body = fetch(local, {"X-Sparsify-Token": token})
        assert status == 200 and 'data-key="0/pruned"' in body and token not in body
    finally:
        out = stop(proc)
    assert token not in "".join(lines) + out
