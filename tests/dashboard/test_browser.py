"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the real
``sparsifyctl dashboard`` process (bound beyond loopback, so with its generated token).

list -> open a run -> compare two -> a sweep -> predict a run's model -> the new-experiment
form (a field error, then the command). Screenshots go to $SPARSIFY_TEST_ARTIFACTS/dashboard
(or pytest's tmp dir).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="Debian chromium is not installed"),
]


def _start_dashboard(runs_root: Path) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-c",
        "from sparsifyctl.cli import main; main()",
        "dashboard",
        "--runs",
        str(runs_root),
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--predict-seconds",
        "0.2",
    ]
    env = {k: v for k, v in os.environ.items() if k != "SPARSIFY_DASHBOARD_TOKEN"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"open (http://\S+/\?token=\S+)", line)
        if m:
            return proc, m.group(1).replace("0.0.0.0", "127.0.0.1")
    proc.kill()
    raise AssertionError(f"the dashboard did not print its URL: {''.join(lines)}")


def test_browse_compare_and_build_an_experiment(runs_root, tiny_model, artifacts):
    from playwright.sync_api import expect, sync_playwright

    proc, url = _start_dashboard(runs_root)
    origin = url.split("/?", 1)[0]
    token = url.split("token=", 1)[1]
    requested: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requested.append(r.url))
            page.on("pageerror", lambda e: pytest.fail(f"JavaScript error: {e}"))

            # without the token: refused
            resp = page.goto(origin + "/")
            assert resp is not None and resp.status == 401
            expect(page.locator("#message-title")).to_have_text("Token required")

            # the printed URL sets the cookie and drops the token from the address bar
            page.goto(url)
            assert page.url == origin + "/"
            expect(page.locator("#runs tbody tr")).to_have_count(4)
            expect(page.locator("#sweeps tbody tr")).to_have_count(1)
            page.screenshot(path=str(artifacts / "1-list.png"), full_page=True)

            # open a run: its report.html in the frame
            page.locator("a.run-link", has_text="pruned").click()
            expect(page.locator("#run-title")).to_contain_text("pruned")
            frame = page.frame_locator("#report-frame")
            expect(frame.locator("#summary")).to_be_visible()
            expect(frame.locator("#layers svg").first).to_be_visible()
            page.screenshot(path=str(artifacts / "2-run.png"), full_page=True)

            # compare two runs from the list
            page.locator("#nav-runs").click()
            page.locator('input[name=run][value="0/int8"]').check()
            page.locator('input[name=run][value="0/pruned"]').check()
            expect(page.locator("#compare-button")).to_have_text("Compare selected (2)")
            page.locator("#compare-button").click()
            expect(page.locator("#compare-title")).to_have_text("Compare 2 runs")
            cmp = page.frame_locator("#compare-frame")
            expect(cmp.locator("#table thead th[scope=col]")).to_have_text(["int8", "pruned"])
            expect(cmp.locator("#pareto-latency svg")).to_be_visible()
            page.screenshot(path=str(artifacts / "3-compare.png"), full_page=True)

            # a sweep: its points, linked to their runs
            page.locator("#nav-runs").click()
            page.locator("a.sweep-link").click()
            expect(page.locator("#points tbody tr")).to_have_count(2)
            expect(page.locator("#sweep-best")).to_contain_text("best:")
            page.screenshot(path=str(artifacts / "4-sweep.png"), full_page=True)

            # predict the baseline model of a run, from the run's page
            model, data = tiny_model
            page.locator("#nav-runs").click()
            page.locator("a.run-link", has_text="int8").click()
            page.locator("#predict-link").click()
            expect(page.locator("#f-model")).to_have_value(str(model))
            page.locator("#f-levels").fill("0,0.5")
            page.locator("#predict-button").click()
            expect(page.locator("#prediction tbody tr")).to_have_count(4, timeout=60_000)
            # each assumption once per page (the INT8 paragraph of both 0.5 points: one item)
            int8_paragraph = page.locator("#assumptions li", has_text="sped up by the factors measured")
            expect(int8_paragraph).to_have_count(1)
            page.screenshot(path=str(artifacts / "5-predict.png"), full_page=True)

            # new experiment: a bad value shows that field's error, not a stack trace
            page.locator("#nav-new").click()
            page.locator("#f-use_case").fill("my-sensor")
            page.locator("#f-model").fill(str(model))
            page.locator("#f-data").fill(str(data))
            page.locator("#f-optim_level").fill("1.7")
            page.locator("#preview-button").click()
            expect(page.locator("#error-optim_level")).to_contain_text("must be in [0, 1]")
            expect(page.locator("#f-optim_level")).to_have_class(re.compile("invalid"))
            expect(page.locator("#run-command")).to_have_count(0)
            assert "Traceback" not in page.content()
            page.screenshot(path=str(artifacts / "6-form-error.png"), full_page=True)

            # fixed: the exact command appears (the form kept the other values)
            expect(page.locator("#f-model")).to_have_value(str(model))
            page.locator("#f-optim_level").fill("0.5")
            page.locator("#f-structure").select_option("channels")
            page.locator("#preview-button").click()
            command = page.locator("#run-command").inner_text()
            assert shlex.split(command) == [
                "sparsifyctl",
                "run",
                "one-shot",
                "--use-case",
                "my-sensor",
                "--model",
                str(model),
                "--data",
                str(data),
                "--structure",
                "channels",
            ]
            # a local output cannot be a cluster manifest's: said in one line, next to the field
            expect(page.locator("#error-output")).to_contain_text("must be an s3:// prefix")
            expect(page.locator("#manifest")).to_have_count(0)
            page.screenshot(path=str(artifacts / "7-form-command.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    # offline: the pages asked nothing of any other host (no CDN, fonts or scripts)
    assert requested and all(u.startswith(origin + "/") for u in requested), [
        u for u in requested if not u.startswith(origin)
    ]
    assert token not in (out or "").replace(f"?token={token}", "")  # printed once, in the URL line only
    for shot in ("1-list", "2-run", "3-compare", "4-sweep", "5-predict", "6-form-error", "7-form-command"):
        assert (artifacts / f"{shot}.png").stat().st_size > 10_000
