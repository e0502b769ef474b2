"""``--runs s3://...``: runs under an s3:// prefix (moto on loopback), read through compare.load_runs."""

from __future__ import annotations

import re

from compare.conftest import SECRET_KEY, moto_endpoint, s3  # noqa: F401  (fixtures reused)
from fastapi.testclient import TestClient
from sparsifyctl.dashboard.app import create_app


def test_runs_under_an_s3_prefix(s3, runs_root):  # noqa: F811
    s3.create_bucket(Bucket="results")
    for name in ("int8", "pruned"):
        body = (runs_root / name / "report.json").read_bytes()
        s3.put_object(Bucket="results", Key=f"team/{name}/report.json", Body=body)
    client = TestClient(create_app(["s3://results/team/"], None, None), base_url="http://127.0.0.1")
    page = client.get("/")
    assert page.status_code == 200
    assert re.findall(r'<tr data-key="([^"]+)"', page.text) == ["s3/0/0", "s3/0/1"]
    assert "s3://results/team/int8" in page.text and "s3://results/team/pruned" in page.text
    assert "phase-Succeeded" in page.text
    run = client.get("/runs/s3/0/1")
    assert run.status_code == 200 and 'src="/report/s3/0/1"' in run.text
    doc = client.get("/report/s3/0/1")
    assert doc.status_code == 200 and 'id="summary"' in doc.text and "unstructured" in doc.text
    both = client.get("/compare.html", params=[("run", "s3/0/0"), ("run", "s3/0/1")])
    assert both.status_code == 200 and both.text.count("<svg") == 2
    for text in (page.text, run.text, doc.text, both.text):
        assert SECRET_KEY not in text


def test_unreachable_prefix_is_one_line_on_the_list(s3):  # noqa: F811
    client = TestClient(create_app(["s3://no-such-bucket/x/"], None, None), base_url="http://127.0.0.1")
    page = client.get("/")
    assert page.status_code == 200
    problems = re.findall(r'<p class="banner problems">(.*?)</p>', page.text, re.S)
    assert len(problems) == 1 and "no-such-bucket" in problems[0]
    assert "Traceback" not in page.text
