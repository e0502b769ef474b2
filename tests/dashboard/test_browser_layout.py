"""The runs list in a 1200 px window (issue 25: it scrolled sideways and hid size and
sparsity): Debian's chromium driven by Playwright against the real ``sparsifyctl dashboard``."""

from __future__ import annotations

import os

import pytest
from compare.reports import make_report, write_run

from .test_browser import ARGS, CHROMIUM, _start_dashboard

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="Debian chromium is not installed"),
]


def test_runs_table_fits_1200px_with_size_and_sparsity_visible(tmp_path, artifacts):
    from playwright.sync_api import sync_playwright

    # the widest rows a user gets: long names, deep folders, the longest mode and type
    root = tmp_path / "a-fairly-long-project-folder" / "experiments-for-the-edge-deployment" / "runs"
    for folder, mode, name, training in (
        ("2024-06-01-imagenette-resnet50-training-aware-level-080", "unstructured",
         "imagenette-resnet50-training-aware-level-080-with-distillation", True),
        ("2024-06-02-int8", "quantization-only", None, False),
        ("2024-06-03-channels", "channels", "channels-one-shot", False),
    ):  # fmt: skip
        report = make_report(mode, name=name, training=training)
        report.baseline.accuracy, report.optimized.accuracy = 0.91234, 0.90512
        write_run(root / folder, report)
    proc, url = _start_dashboard(root)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.wait_for_selector("#runs tbody tr")
            page.screenshot(path=str(artifacts / "runs-1200px.png"), full_page=True)
            width = page.evaluate("window.innerWidth")
            scroll = page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= width, f"the page scrolls sideways: {scroll} px in a {width} px window"
            headers = page.locator("#runs thead th")
            texts = [t.strip() for t in headers.all_inner_texts()]
            assert "size" in texts and "sparsity" in texts, texts
            for column in ("size", "sparsity"):
                for cell in page.locator(f'#runs [data-col="{column}"]').all():
                    box = cell.bounding_box()
                    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (
                        column,
                        box,
                    )
            assert page.locator('#runs tbody [data-col="size"]').count() == 3
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except Exception:
            proc.kill()
