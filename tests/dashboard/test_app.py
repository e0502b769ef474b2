"""The dashboard's pages through fastapi's TestClient over real runs: list, run, sweep, compare,
predict, the new-experiment form (field errors, the exact commands), 404s, token auth."""

from __future__ import annotations

import html
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sparsify_runner.report import Report
from sparsify_runner.report_html import SECTION_IDS
from sparsify_runner.summary import format_size
from sparsifyctl.compare import compare_html, load_runs
from sparsifyctl.dashboard.app import TOKEN_COOKIE, TOKEN_HEADER, create_app

from .conftest import ctl

BASE = "http://127.0.0.1"


@pytest.fixture
def client(runs_root) -> TestClient:
    return TestClient(create_app([str(runs_root)], None, None, predict_seconds=0.2), base_url=BASE)


def _text(page: str, element_id: str) -> str:
    m = re.search(rf'id="{re.escape(element_id)}"[^>]*>(.*?)</', page, re.S)
    assert m, f"no #{element_id} in the page"
    return html.unescape(m.group(1)).strip()


def _report(folder: Path) -> Report:
    return Report.model_validate_json((folder / "report.json").read_text())


def test_list_shows_runs_sweep_and_headline_numbers(client, runs_root):
    page = client.get("/")
    assert page.status_code == 200
    keys = re.findall(r'<tr data-key="([^"]+)"', page.text)
    assert keys == ["0/int8", "0/pruned", "0/sw/optim-020-u", "0/sw/optim-050-u", "0/sw"]
    for name in ("int8", "pruned"):
        rep = _report(runs_root / name)
        row = page.text.split(f'data-key="0/{name}"', 1)[1].split("</tr>", 1)[0]
        assert f"{rep.speedup:.2f}x" in row
        assert f'data-col="size">{format_size(rep.optimized.file_size_bytes)}<' in row
        assert f">{rep.mode}<" in row
        assert "phase-Succeeded" in row
    sweep_row = page.text.split('data-key="0/sw"', 1)[1].split("</tr>", 1)[0]
    sweep = json.loads((runs_root / "sw" / "sweep.json").read_text())
    assert sweep["summary"] in sweep_row and ">2/2<" in sweep_row.replace(" ", "")
    # the sweep's points carry the sweep's name
    point_row = page.text.split('data-key="0/sw/optim-020-u"', 1)[1].split("</tr>", 1)[0]
    assert '<span class="sweep">sw</span>' in point_row


def test_run_page_serves_the_runs_html_report(client, runs_root):
    page = client.get("/runs/0/pruned")
    assert page.status_code == 200
    assert 'src="/report/0/pruned"' in page.text
    doc = client.get("/report/0/pruned")
    assert doc.status_code == 200 and doc.text.lstrip().lower().startswith("<!doctype html")
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in doc.text
    # rendered by the runner's own report_html from the same report.json
    from sparsify_runner.report_html import render_report_html

    assert doc.text == render_report_html(_report(runs_root / "pruned"))
    # offline: the CSP only allows this origin
    assert "default-src 'self'" in doc.headers["content-security-policy"]


def test_compare_is_the_cli_compare_page(client, runs_root):
    page = client.get("/compare", params=[("run", "0/int8"), ("run", "0/pruned")])
    assert page.status_code == 200
    assert 'src="/compare.html?run=0%2Fint8&amp;run=0%2Fpruned"' in page.text
    doc = client.get("/compare.html", params=[("run", "0/int8"), ("run", "0/pruned")])
    assert doc.status_code == 200
    records = load_runs([str(runs_root / "int8"), str(runs_root / "pruned")])
    for record, label in zip(records, ("int8", "pruned"), strict=True):
        record.label = label  # the dashboard labels runs as its list does
    assert doc.text == compare_html(records)
    assert doc.text.count("<svg") == 2 and 'id="pareto-latency"' in doc.text


def test_sweep_page_lists_points_and_links_them(client, runs_root):
    page = client.get("/sweeps/0/sw")
    assert page.status_code == 200
    sweep = json.loads((runs_root / "sw" / "sweep.json").read_text())
    for point in sweep["points"]:
        assert f'href="/runs/0/sw/{point["name"]}"' in page.text
    assert sweep["best"]["name"] in _text(page.text, "sweep-best")
    link = re.search(r'id="compare-points" href="([^"]+)"|href="([^"]+)" id="compare-points"', page.text)
    assert link
    doc = client.get(html.unescape(link.group(1) or link.group(2)).replace("/compare?", "/compare.html?"))
    assert doc.status_code == 200 and "optim-020-u" in doc.text and "optim-050-u" in doc.text


@pytest.mark.parametrize(
    "path",
    [
        "/runs/nope",
        "/sweeps/nope",
        "/report/nope",
        "/runs/0/sw",
        "/sweeps/0/int8",
        "/nothing-here",
        "/compare?run=nope",
        "/static/missing.css",
    ],
)
def test_unknown_pages_are_404_pages(client, path):
    resp = client.get(path)
    assert resp.status_code == 404
    assert "text/html" in resp.headers["content-type"]
    assert "Traceback" not in resp.text
    assert _text(resp.text, "message-title") == "Not found"


def test_compare_without_selection_says_what_to_do(client):
    resp = client.get("/compare")
    assert resp.status_code == 400
    assert "select at least one run" in _text(resp.text, "message")


# ---- new experiment form ---------------------------------------------------------------------

GOOD = {
    "experiment_type": "one-shot",
    "use_case": "image-classification",
    "model": "s3://models/m.onnx",
    "data": "s3://data/calib/",
    "output": "s3://out/exp1",
    "optim_level": "0.6",
    "name": "exp1",
}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"optim_level": "abc"}, "optim_level", "--optim-level must be a number"),
        ({"optim_level": "1.5"}, "optim_level", "must be in [0, 1]"),
        ({"model": ""}, "model", "needs a model"),
        ({"model": "ftp://host/m.onnx"}, "model", "unknown storage scheme"),
        ({"use_case": ""}, "use_case", "missing --use-case"),
        ({"recipe_args": "{not json"}, "recipe_args", "--recipe-args is not valid JSON"),
        ({"deploy_batch_size": "0"}, "deploy_batch_size", "greater than or equal to 1"),
        ({"experiment_type": "magic"}, "experiment_type", "unknown experiment type"),
        ({"seed": "1.5"}, "seed", "--seed must be a whole number"),
    ],
)
def test_bad_form_input_shows_the_fields_error(client, change, field, words):
    resp = client.post("/new", data={**GOOD, **change})
    assert resp.status_code == 422
    assert "Traceback" not in resp.text
    assert words in _text(resp.text, f"error-{field}")
    assert re.search(
        rf'id="f-{field}"[^>]*class="invalid"|class="invalid"[^>]*id="f-{field}"', resp.text
    ) or (f'id="f-{field}" name="{field}" class="invalid"' in resp.text)
    assert 'id="run-command"' not in resp.text  # nothing to copy from an invalid experiment
    # what the user typed is kept
    if change.get(field):
        assert html.escape(change[field], quote=True) in resp.text


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"gpus": "40"}, "gpus", "spec.gpus"),
        ({"cpu": "lots"}, "cpu", "spec.resources.requests.cpu"),
        ({"output": "local-folder"}, "output", "must be an s3:// prefix"),
    ],
)
def test_cluster_only_errors_keep_the_run_command(client, change, field, words):
    resp = client.post("/new", data={**GOOD, **change})
    assert resp.status_code == 200
    assert words in _text(resp.text, f"error-{field}")
    assert _text(resp.text, "run-command").startswith("sparsifyctl run one-shot")
    assert 'id="manifest"' not in resp.text and words in _text(resp.text, "manifest-problem")


def test_form_shows_the_exact_commands_and_manifest(client, capsys):
    resp = client.post("/new", data={**GOOD, "gpus": "0", "secret": "s3-creds", "structure": "channels"})
    assert resp.status_code == 200
    run = _text(resp.text, "run-command")
    assert run == (
        "sparsifyctl run one-shot --use-case image-classification --model s3://models/m.onnx "
        "--data s3://data/calib/ --optim-level 0.6 --structure channels --output s3://out/exp1 "
        "--name exp1"
    )
    generate = _text(resp.text, "generate-command")
    assert generate.endswith(" | kubectl apply -f -")
    manifest = yaml.safe_load(_text(resp.text, "manifest"))
    assert manifest["spec"]["gpus"] == 0 and manifest["spec"]["storage"]["secretRef"]["name"] == "s3-creds"
    # the generate command, run through the real CLI, prints exactly the manifest shown
    argv = shlex.split(generate.removesuffix(" | kubectl apply -f -"))
    assert (
        argv[:2] == ["sparsifyctl", "generate"]
        and argv[3 : 3 + len(shlex.split(run)) - 3] == shlex.split(run)[3:]
    )
    code, out, err = ctl(argv[1:], capsys)
    assert code == 0, err
    assert yaml.safe_load(out) == manifest


def test_the_run_command_shown_runs(client, tiny_model, tmp_path, capsys):
    model, data = tiny_model
    out = tmp_path / "from-form"
    form = {
        "experiment_type": "one-shot",
        "use_case": "my-sensor",
        "model": str(model),
        "data": str(data),
        "optim_level": "0.2",
        "output": str(out),
        "recipe_args": '{"benchmark_seconds": 0.2, "int8_candidate_seconds": 0.1}',
    }
    resp = client.post("/new", data=form)
    assert resp.status_code == 200
    command = shlex.split(_text(resp.text, "run-command"))
    assert command[:3] == ["sparsifyctl", "run", "one-shot"]
    code, _, err = ctl([*command[1:], "-q"], capsys)
    assert code == 0, err
    rep = _report(out)
    assert rep.experiment["optimLevel"] == 0.2 and rep.experiment["useCase"] == "my-sensor"


def test_apply_without_cluster_is_refused(client):
    resp = client.post("/new", data={**GOOD, "action": "apply"})
    assert resp.status_code == 409
    assert "without --cluster" in _text(resp.text, "cluster-error-_form")
    assert 'id="apply-button"' not in resp.text


def test_new_form_prefills_from_the_query(client):
    resp = client.get("/new", params={"model": "s3://m/x.onnx", "optim_level": "0.3"})
    assert resp.status_code == 200
    assert 'value="s3://m/x.onnx"' in resp.text and 'value="0.3"' in resp.text


# ---- predict -----------------------------------------------------------------------------------


def test_predict_page_renders_the_prediction(client, tiny_model):
    model, _ = tiny_model
    page = client.get("/predict")
    assert page.status_code == 200
    resp = client.post(
        "/predict",
        data={
            "model": str(model),
            "deploy_device": "cpu",
            "deploy_batch_size": "1",
            "levels": "0,0.5",
            "structures": ["unstructured", "channels"],
        },
    )
    assert resp.status_code == 200, resp.text
    table = resp.text.split('id="prediction"', 1)[1].split("</table>", 1)[0]
    head = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", table)]
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1], re.S)
    assert len(rows) == 4  # 2 levels x 2 structures
    cells = [
        dict(zip(head, [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)], strict=True))
        for r in rows
    ]
    assert [c["structure"] for c in cells] == ["unstructured", "unstructured", "channels", "channels"]
    assert [list(c.values())[0] for c in cells] == ["0", "0.5", "0", "0.5"]  # the level column first
    assert cells[0]["speedup"] == "1.00x"  # level 0 is the baseline
    # each assumption once per page, with the points it applies to (not the INT8 paragraph per row)
    listed = resp.text.split('id="assumptions"', 1)[1].split("</ul>", 1)[0]
    items = [html.unescape(i) for i in re.findall(r"<li>(.*?)</li>", listed, re.S)]
    texts = [i.split("</strong>: ", 1)[1] for i in items]
    assert len(texts) == len(set(texts)) >= 2, items
    page_text = html.unescape(resp.text)
    for text in texts:
        assert page_text.count(text) == 1, text
    # the INT8 paragraph both 0.5 points share: once, naming both
    assert page_text.count("sped up by the factors measured") == 1
    int8 = next(i for i in items if "sped up by the factors measured" in i)
    assert "0.5 / unstructured, 0.5 / channels" in int8


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"model": ""}, "model", "model is missing"),
        ({"model": "/no/such.onnx"}, "model", "does not exist"),
        ({"levels": "0.2,x"}, "levels", "must be numbers"),
        ({"levels": "0.2,3"}, "levels", "outside [0, 1]"),
        ({"deploy_batch_size": "0"}, "deploy_batch_size", "deploy target invalid"),
        ({"structures": []}, "structures", "no structures"),
    ],
)
def test_predict_bad_input_shows_the_fields_error(client, tiny_model, change, field, words):
    model, _ = tiny_model
    form = {
        "model": str(model),
        "deploy_device": "cpu",
        "deploy_batch_size": "1",
        "levels": "0.5",
        "structures": ["unstructured"],
        **change,
    }
    resp = client.post("/predict", data=form)
    assert resp.status_code == 422
    assert words in _text(resp.text, f"error-{field}")
    assert "Traceback" not in resp.text


def test_predict_offers_the_runs_models(client, tiny_model):
    model, _ = tiny_model
    assert f'<option value="{model}">' in client.get("/predict").text


# ---- access control ----------------------------------------------------------------------------


def test_token_is_required_on_every_request(runs_root):
    token = "tok-" + "x" * 20
    c = TestClient(create_app([str(runs_root)], None, token), base_url=BASE, follow_redirects=False)
    for path in ("/", "/runs/0/int8", "/static/style.css", "/new", "/nothing"):
        resp = c.get(path)
        assert resp.status_code == 401, path
        assert token not in resp.text
    assert c.post("/new", data=GOOD).status_code == 401
    assert c.get("/", headers={TOKEN_HEADER: "wrong"}).status_code == 401
    assert c.get("/", headers={TOKEN_HEADER: token}).status_code == 200
    assert c.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert c.get("/", cookies={TOKEN_COOKIE: token[:-1]}).status_code == 401
    assert c.get("/?token=nope").status_code == 401
    resp = c.get(f"/runs/0/int8?token={token}")
    assert resp.status_code == 303 and resp.headers["location"] == "/runs/0/int8"  # the token leaves the URL
    cookie = resp.headers["set-cookie"]
    assert f"{TOKEN_COOKIE}={token}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    c.cookies.set(TOKEN_COOKIE, token)
    assert c.get("/runs/0/int8").status_code == 200
    assert c.get("/static/style.css").status_code == 200


def test_loopback_app_rejects_foreign_host_headers(runs_root):
    c = TestClient(
        create_app([str(runs_root)], None, None, allowed_hosts=["127.0.0.1", "localhost"]), base_url=BASE
    )
    assert c.get("/").status_code == 200
    assert c.get("/", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding


def test_cross_site_posts_are_refused(client):
    for origin in ("http://attacker.example", "null"):
        resp = client.post("/new", data=GOOD, headers={"origin": origin})
        assert resp.status_code == 403
        assert "cross-site form post" in _text(resp.text, "message")
    assert client.post("/new", data=GOOD, headers={"origin": BASE}).status_code == 200


# ---- the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--runs", "/no/such/folder"], "is not a folder"),
        (["--runs", "ftp://x/y"], "neither a folder"),
        (["--port", "70000"], "--port"),
    ],
)
def test_dashboard_command_bad_flags_one_line(argv, words, capsys):
    code, _, err = ctl(["dashboard", *argv], capsys)
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1


def test_new_experiment_like_a_run(client, runs_root, tiny_model):
    model, data = tiny_model
    page = client.get("/runs/0/pruned").text
    link = html.unescape(re.search(r'href="(/new\?[^"]+)" id="like-link"', page).group(1))
    form = client.get(link).text
    assert f'id="f-model" name="model" value="{model}"' in form
    assert f'id="f-data" name="data" value="{data}"' in form
    assert 'id="f-optim_level" name="optim_level" value="0.5"' in form
    assert re.search(r'<option value="unstructured" selected', form)
    assert "benchmark_seconds" in html.unescape(form)  # the run's recipe args came along
