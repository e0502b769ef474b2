"""``sparsifyctl compare`` over local folders, folders of runs, local sweeps and s3:// prefixes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sparsifyctl.compare import compare_table, load_runs

from .conftest import run_cli
from .htmlcheck import check_self_contained, svgs
from .reports import make_report, old_report_json, write_run

NS = "{http://www.w3.org/2000/svg}"


def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    fast = write_run(
        tmp_path / "runs" / "fast",
        make_report("unstructured", level=0.8, accuracy=0.86, speedup=3.0, size=1_500_000),
    )
    safe = write_run(
        tmp_path / "runs" / "safe",
        make_report("quantization-only", level=0.2, accuracy=0.90, speedup=2.0, size=2_500_000),
    )
    return fast, safe


def test_two_local_folders_table_json_and_html(tmp_path, capsys):
    fast, safe = _two_runs(tmp_path)
    code, stdout, stderr = run_cli(["compare", str(fast), str(safe / "report.json")], capsys)
    assert code == 0, stderr
    for word in (
        "optimized accuracy",
        "86.00%",
        "90.00%",
        "3.00x",
        "1.50 MB",
        "qdq-per-channel",
        "wall time",
    ):
        assert word in stdout, word

    code, stdout, stderr = run_cli(["compare", str(fast), str(safe), "--json"], capsys)
    assert code == 0, stderr
    data = json.loads(stdout)
    assert [r["label"] for r in data["runs"]] == [str(fast), str(safe)]
    assert data["runs"][0]["headline"]["speedup"] == 3.0
    assert data["runs"][1]["report"]["mode"] == "quantization-only"
    # accuracy vs latency: fast is quicker, safe more accurate -> both on the front
    assert data["pareto"]["quality"] == "accuracy"
    assert data["pareto"]["latency"] == [str(fast), str(safe)]

    page_file = tmp_path / "cmp.html"
    code, _, stderr = run_cli(["compare", str(fast), str(safe), "--html", str(page_file)], capsys)
    assert code == 0, stderr
    html = page_file.read_text(encoding="utf-8")
    page = check_self_contained(html)
    assert {"table", "pareto-latency", "pareto-size"} <= set(page.ids)
    plots = svgs(html)
    assert len(plots) == 2
    for plot in plots:
        assert len(plot.findall(f".//{NS}circle[@class='highlight']")) == 2
        assert plot.find(f".//{NS}polyline[@class='front']") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.html", "runs"]  # no temp file left


def test_a_dominated_run_is_off_the_front(tmp_path):
    fast, safe = _two_runs(tmp_path)
    slow = write_run(
        tmp_path / "runs" / "slow", make_report("unstructured", accuracy=0.85, speedup=1.2, size=3_000_000)
    )
    records = load_runs([str(fast), str(safe), str(slow)])
    from sparsifyctl.compare import compare_json

    fronts = compare_json(records)["pareto"]
    assert str(slow) not in fronts["latency"] and str(slow) not in fronts["size"]
    assert dict(compare_table(records))["speedup"] == ["3.00x", "2.00x", "1.20x"]


def test_folder_of_runs_and_local_sweep_expand(tmp_path, capsys):
    _two_runs(tmp_path)
    records = load_runs([str(tmp_path / "runs")])
    assert [r.label for r in records] == [f"{tmp_path / 'runs'}/fast", f"{tmp_path / 'runs'}/safe"]

    sweep = tmp_path / "sweep"
    write_run(sweep / "s-050-u", make_report("unstructured"))
    points = [
        {
            "name": "s-050-u",
            "optimLevel": 0.5,
            "structure": "unstructured",
            "phase": "Succeeded",
            "reportUri": "/where/the/sweep/was/before/s-050-u/report.json",
        },  # moved: the sub-folder wins
        {
            "name": "s-090-u",
            "optimLevel": 0.9,
            "structure": "unstructured",
            "phase": "Failed",
            "message": "data: no samples",
        },
    ]
    (sweep / "sweep.json").write_text(json.dumps({"phase": "Failed", "summary": "1 of 2", "points": points}))
    code, stdout, stderr = run_cli(["compare", str(sweep), "--json"], capsys)
    assert code == 0, stderr
    runs = json.loads(stdout)["runs"]
    assert [(r["label"], r["phase"]) for r in runs] == [("s-050-u", "Succeeded"), ("s-090-u", "Failed")]
    assert runs[0]["details"] == {"sweep": str(sweep), "optimLevel": 0.5, "structure": "unstructured"}
    assert (
        runs[0]["source"] == str(sweep / "s-050-u" / "report.json") and runs[0]["headline"]["speedup"] == 2.0
    )
    assert runs[1]["report"] is None and runs[1]["error"] == "data: no samples"
    code, stdout, _ = run_cli(["compare", str(sweep)], capsys)
    assert code == 0 and "problem" in stdout and "Failed" in stdout


def test_old_reports_and_duplicate_labels(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "report.json").write_text(old_report_json(make_report("channels")))
    records = load_runs([str(run), str(run)])
    assert [r.label for r in records] == [str(run), f"{run} (2)"]
    assert records[0].report.baseline.latency.samples_ms is None


def test_bad_runs_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "report.json").write_text("{not json")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "report.json").write_text(json.dumps({"mode": "unstructured"}))
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    cases = [
        ([str(tmp_path / "none")], "does not exist"),
        ([str(garbage)], "is not readable JSON"),
        ([str(wrong)], "is not a sparsify report.json (field 'experiment' invalid)"),
        ([str(empty)], "no report.json in"),
        (["ml/no-such-run"], "'ml/no-such-run' is not a local path, and the kube config cannot be loaded"),
    ]
    for argv, message in cases:
        code, stdout, stderr = run_cli(["compare", *argv], capsys)
        assert code == 2, (argv, stderr)
        assert stderr.startswith("error: ") and message in stderr, (argv, stderr)
        assert len(stderr.strip().splitlines()) == 1 and stdout == ""


def test_unreachable_cluster_is_one_line(tmp_path, capsys, monkeypatch):
    from .conftest import _free_port

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "gone",
                "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{_free_port()}"}}],
                "users": [{"name": "gone", "user": {"token": "t"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "gone"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    code, _, stderr = run_cli(["compare", "ml/exp1", "--context", "gone"], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("error: cannot reach the cluster to read 'ml/exp1'")


def test_report_over_http(tmp_path, monkeypatch):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    fast, _ = _two_runs(tmp_path)
    monkeypatch.setenv("SPARSIFY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "runs"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/fast/report.json"
        (record,) = load_runs([url])
        assert record.label == url and record.report.speedup == 3.0
    finally:
        server.shutdown()
        server.server_close()


def test_html_is_written_atomically(tmp_path, capsys):
    fast, _ = _two_runs(tmp_path)
    target = tmp_path / "page.html"
    target.write_text("previous page")
    code, _, stderr = run_cli(
        ["compare", str(fast), str(tmp_path / "missing"), "--html", str(target)], capsys
    )
    assert code == 2 and "does not exist" in stderr
    assert target.read_text() == "previous page"  # a failed compare leaves the old page alone
    code, _, stderr = run_cli(["compare", str(fast), "--html", str(tmp_path / "no" / "dir.html")], capsys)
    assert code == 2 and "folder" in stderr and "does not exist" in stderr
    code, _, stderr = run_cli(["compare", str(fast), "--html", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html", "runs"]


def test_s3_prefixes(s3, tmp_path, capsys):
    s3.create_bucket(Bucket="results")
    for name, level in (("run1", 0.5), ("run2", 0.9)):
        body = make_report("unstructured", level=level).model_dump_json()
        s3.put_object(Bucket="results", Key=f"exp/{name}/report.json", Body=body.encode())
    code, stdout, stderr = run_cli(
        ["compare", "s3://results/exp/run1", "s3://results/exp/run2/report.json", "--json"], capsys
    )
    assert code == 0, stderr
    runs = json.loads(stdout)["runs"]
    assert [r["headline"]["optimLevel"] for r in runs] == [0.5, 0.9]
    assert runs[0]["source"] == "s3://results/exp/run1/report.json"

    records = load_runs(["s3://results/exp/"])  # a prefix of runs expands to each run
    assert [r.label for r in records] == ["s3://results/exp/run1", "s3://results/exp/run2"]

    for argv, message in (
        (["s3://results/nothing/"], "no report.json in 's3://results/nothing/'"),
        (["s3://results/exp/run3/report.json"], "does not exist"),
    ):
        code, _, stderr = run_cli(["compare", *argv], capsys)
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in stderr


def test_compare_and_report_html_work_without_torch(tmp_path):
    """DESIGN: compare and report.html read reports through the schema alone (laptop, no runner extra)."""
    fast, safe = _two_runs(tmp_path)
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnxruntime'] = None\n"
        "from sparsifyctl.compare import load_runs, compare_html\n"
        "from sparsify_runner.report_html import render_report_html\n"
        "import sparsify_runner.storage.s3\n"
        f"records = load_runs([{str(fast)!r}, {str(safe)!r}])\n"
        "assert '<svg' in compare_html(records) and '<svg' in render_report_html(records[0].report)\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
