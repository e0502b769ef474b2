"""``sparsifyctl compare`` (and the dashboard): load runs from anywhere, put them side by side.

A run is named by what the user has at hand: an output folder or its ``report.json``, an
``s3://`` prefix (or the report object itself), or ``namespace/name`` of a cluster
``SparsifyExperiment`` or ``SparsifySweep`` (a sweep expands to one run per point). A folder
or prefix holding a local sweep (``sweep.json``) or several runs in sub-folders expands the
same way. Reports are read through the report's pydantic schema and the runner's storage
module (boto3 for s3, no torch), so this works on a laptop without the runner's heavy extra.

Everything here returns data (records, table cells, a JSON dict, an HTML page); the CLI
and the dashboard only print or serve it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from sparsify_runner.errors import InputError, SparsifyError
from sparsify_runner.report import Report
from sparsify_runner.summary import format_size, pruning_applied

REPORT_FILE = "report.json"
SWEEP_FILE = "sweep.json"
DISCOVERY_DEPTH = 2  # a folder/prefix of runs: report.json at most this many levels down
_SKIP_DIRS = (".sparsify-staging", ".sparsify-checkpoints")
# namespace/name: both DNS labels/subdomains (and the text is not an existing local path)
_CLUSTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
_SOURCES_HINT = (
    "pass a report.json, an output folder containing one, an s3:// prefix, "
    "or NAMESPACE/NAME of a cluster experiment or sweep"
)


class RunRecord(BaseModel):
    """One run to compare: where it came from and its report (None while unfinished or
    unreadable; ``error`` then says why)."""

    label: str
    source: str
    report: Report | None = None
    phase: str | None = None
    error: str | None = None
    details: dict[str, Any] = {}
    """Extra facts from the source (a sweep point's optimLevel/structure, the sweep's name)."""


# ---- loading -------------------------------------------------------------------------------------


def _parse_report(data: bytes | str, where: str) -> Report:
    """A report.json; a text-generation run's (it has ``perplexity``) as its ``LlmReport``, so the
    HTML report keeps its LLM section (perplexity, generations) wherever it is rendered."""
    try:
        if b'"perplexity"' in (data.encode() if isinstance(data, str) else data):
            from sparsify_runner.llm.report import LlmReport  # pydantic only, no torch

            try:
                return LlmReport.model_validate_json(data)
            except ValidationError:
                pass  # not an LLM report after all: judged as a plain Report below
        return Report.model_validate_json(data)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "json_invalid":
            raise InputError(f"report '{where}' is not readable JSON; pass a sparsify report.json") from None
        loc = ".".join(str(p) for p in first["loc"]) or "report"
        raise InputError(f"report '{where}' is not a sparsify report.json (field '{loc}' invalid)") from None


class _Folder:
    """A local output folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def uri_for(self, name: str) -> str:
        return str(self.path / name)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as err:
            raise InputError(f"cannot read '{self.path / name}': {err.strerror or err}") from None

    def reports_below(self) -> list[str]:
        found = []
        for depth in range(1, DISCOVERY_DEPTH + 1):
            pattern = "/".join(["*"] * depth) + f"/{REPORT_FILE}"
            found += [p.relative_to(self.path).as_posix() for p in self.path.glob(pattern) if p.is_file()]
        return sorted(f for f in found if not any(part in _SKIP_DIRS for part in f.split("/")))


class _Prefix:
    """An s3:// prefix, read through the runner's storage module (boto3, env credentials)."""

    def __init__(self, uri: str) -> None:
        try:
            from sparsify_runner.storage.s3 import S3Store
        except ModuleNotFoundError as err:  # pragma: no cover - depends on the install
            raise InputError(
                f"reading '{uri}' needs the '{err.name}' package; install sparsify-k8s[runner]"
            ) from None
        self.store = S3Store(uri)

    def uri_for(self, name: str) -> str:
        return self.store.uri_for(name)

    def read(self, name: str) -> bytes | None:
        return self.store.get_bytes(name)

    def reports_below(self) -> list[str]:
        rels = [o["rel"] for o in self.store.list("")]
        return sorted(
            r
            for r in rels
            if r.endswith(f"/{REPORT_FILE}")
            and r.count("/") <= DISCOVERY_DEPTH
            and not any(part in _SKIP_DIRS for part in r.split("/"))
        )


def _is_s3(source: str) -> bool:
    return source.startswith("s3://")


def _read_uri(uri: str) -> bytes | None:
    """A report named by URI (``status.results.reportUri``, a sweep point's ``reportUri``)."""
    if _is_s3(uri):
        parent, _, name = uri.rstrip("/").rpartition("/")
        return _Prefix(parent).read(name)
    path = Path(uri.removeprefix("file://")).expanduser()
    return _Folder(path.parent).read(path.name)


def _sweep_records(
    label: str, points: list[dict[str, Any]], *, loc: _Folder | _Prefix | None = None
) -> list[RunRecord]:
    """One record per sweep point. A local/s3 sweep's point lives in its sub-folder ``name/``
    (found there even when the sweep folder was moved); otherwise its ``reportUri`` is read."""
    records = []
    for point in points:
        name = str(point.get("name") or "?")
        record = RunRecord(
            label=name,
            source=point.get("reportUri") or "",
            phase=point.get("phase"),
            details={
                "sweep": label,
                **{k: point[k] for k in ("optimLevel", "structure") if point.get(k) is not None},
            },
        )
        data = (
            loc.read(f"{name}/{REPORT_FILE}")
            if loc is not None and record.phase in (None, "Succeeded")
            else None
        )
        if data is not None:
            record.source = loc.uri_for(f"{name}/{REPORT_FILE}")
            try:
                record.report = _parse_report(data, record.source)
            except InputError as err:
                record.error = str(err)
        else:
            _fill_report(record, point.get("reportUri"), point.get("message"))
        records.append(record)
    if not records:
        raise InputError(f"sweep '{label}' has no points yet; wait for it to start or check its spec")
    return records


def _fill_report(record: RunRecord, uri: str | None, failure: str | None = None) -> None:
    """Attach the report when there is one; otherwise say why there is none (never raise:
    one unfinished point must not hide the others)."""
    if record.phase not in (None, "Succeeded"):
        record.error = failure or f"no report: the run is {record.phase}"
        return
    if not uri:
        record.error = "no report yet (the run has not published one)"
        return
    try:
        data = _read_uri(uri)
    except SparsifyError as err:
        record.error = str(err)
        return
    if data is None:
        record.error = f"no report at '{uri}' (not published yet, or removed)"
        return
    try:
        record.report = _parse_report(data, uri)
    except InputError as err:
        record.error = str(err)


def experiment_name(report: Report | None) -> str | None:
    """The run's experiment name (``--name``, the CR's name in a cluster), if it has one."""
    if report is None:
        return None
    name = (report.experiment or {}).get("name")
    return (str(name).strip() or None) if name is not None else None


def _named(source: str, where: str, report: Report) -> RunRecord:
    """A record labelled by its experiment name, else by ``source`` (the folder/URI given)."""
    return RunRecord(label=experiment_name(report) or source, source=where, report=report)


def _load_location(source: str, loc: _Folder | _Prefix) -> list[RunRecord]:
    data = loc.read(REPORT_FILE)
    if data is not None:
        return [_named(source, loc.uri_for(REPORT_FILE), _parse_report(data, source))]
    sweep = loc.read(SWEEP_FILE)
    if sweep is not None:
        try:
            points = json.loads(sweep).get("points") or []
        except (ValueError, AttributeError):
            raise InputError(f"'{loc.uri_for(SWEEP_FILE)}' is not a readable sweep.json") from None
        return _sweep_records(source, points, loc=loc)
    below = loc.reports_below()
    if not below:
        raise InputError(f"no {REPORT_FILE} in '{source}' (nor in its sub-folders); {_SOURCES_HINT}")
    records = []
    for rel in below:
        text = loc.read(rel)
        if text is None:  # removed while we looked
            continue
        run = rel.rsplit("/", 1)[0]
        label = f"{source.rstrip('/')}/{run}"
        records.append(_named(label, loc.uri_for(rel), _parse_report(text, label)))
    return records


def _load_local(source: str) -> list[RunRecord]:
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_dir():
        return _load_location(source, _Folder(path))
    if path.is_file():
        data = _Folder(path.parent).read(path.name)
        return [_named(source, str(path), _parse_report(data or b"", source))]
    raise InputError(f"report '{path}' does not exist; {_SOURCES_HINT}")


def _load_s3(source: str) -> list[RunRecord]:
    if source.rstrip("/").endswith(".json"):
        parent, _, name = source.rstrip("/").rpartition("/")
        data = _Prefix(parent).read(name)
        if data is None:
            raise InputError(f"report '{source}' does not exist; check the bucket and key")
        return [_named(source, source, _parse_report(data, source))]
    return _load_location(source, _Prefix(source))


class _Cluster:
    """The kube client, created on first use (only ``ns/name`` sources need one)."""

    def __init__(self, context: str | None) -> None:
        self.context = context
        self._kube: Any = None

    def kube(self, source: str) -> Any:
        if self._kube is None:
            try:
                from sparsify_operator.kube import Kube, load_configuration
            except ModuleNotFoundError as err:  # pragma: no cover - depends on the install
                raise InputError(
                    f"'{source}' is not a local path; reading it from a cluster needs the '{err.name}' "
                    "package: install sparsify-k8s[operator]"
                ) from None
            try:
                self._kube = Kube(load_configuration(context=self.context))
            except Exception as err:
                where = f" for context '{self.context}'" if self.context else ""
                raise InputError(
                    f"'{source}' is not a local path, and the kube config{where} cannot be loaded "
                    f"({' '.join(str(err).split())})"
                ) from None
        return self._kube

    def get(self, source: str, fetch: Callable[[Any, str, str], dict[str, Any]]) -> dict[str, Any] | None:
        kube = self.kube(source)  # first: a missing package or kube config is its own message
        from sparsify_operator.kube import ApiError
        from urllib3.exceptions import HTTPError  # the kubernetes package's transport

        namespace, name = source.split("/", 1)
        try:
            return fetch(kube, namespace, name)
        except ApiError as err:
            if err.status == 404:
                return None
            raise InputError(f"the API server refused to read '{source}': {err.message or err}") from None
        except (OSError, HTTPError) as err:  # urllib3 wraps refused connections in its own errors
            reason = " ".join(str(getattr(err, "reason", None) or err).split())
            raise InputError(f"cannot reach the cluster to read '{source}': {reason}") from None

    def load(self, source: str) -> list[RunRecord]:
        namespace, name = source.split("/", 1)
        exp = self.get(source, lambda k, ns, n: k.get_experiment(ns, n))
        if exp is not None:
            status = exp.get("status") or {}
            record = RunRecord(label=source, source=source, phase=status.get("phase") or "Pending")
            uri = (status.get("results") or {}).get("reportUri")
            _fill_report(record, uri, status.get("message"))
            if record.report is not None:
                record.source = uri
            return [record]
        sweep = self.get(source, lambda k, ns, n: k.get_sweep(ns, n))
        if sweep is not None:
            points = (sweep.get("status") or {}).get("points") or []
            return _sweep_records(source, points)
        raise InputError(
            f"'{source}' is not a local path, and no SparsifyExperiment or SparsifySweep '{name}' exists "
            f"in namespace '{namespace}'; check the name with `sparsifyctl list -n {namespace}`"
        )


def load_runs(sources: list[str], *, context: str | None = None) -> list[RunRecord]:
    """Every source resolved to one or more RunRecords, in order; InputError (one line)
    when a source names nothing. A run is labelled by its experiment name (``--name``; a
    sweep point's or cluster experiment's own name), else by the folder/URI it came from;
    labels are made unique (``label (2)``)."""
    cluster = _Cluster(context)
    records: list[RunRecord] = []
    for source in sources:
        if _is_s3(source):
            records += _load_s3(source)
        elif source.startswith(("http://", "https://")):
            records += _load_http(source)
        elif not Path(source).expanduser().exists() and _CLUSTER_NAME.match(source):
            records += cluster.load(source)
        else:
            records += _load_local(source)
    seen: dict[str, int] = {}
    for record in records:
        count = seen.get(record.label, 0) + 1
        seen[record.label] = count
        if count > 1:
            record.label = f"{record.label} ({count})"
    return records


def _load_http(source: str) -> list[RunRecord]:
    from sparsify_runner import storage

    path = storage.fetch(source, what="report", show_progress=False)
    return [_named(source, source, _parse_report(path.read_bytes(), source))]


# ---- side by side ------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def _lat(lat: Any, field: str) -> str:
    return "-" if lat is None else f"{getattr(lat, field):.2f} ms"


def fidelity_of(report: Report) -> float | None:
    """Top-1 agreement with the baseline when known (classifiers), else output cosine similarity."""
    f = report.fidelity
    if f is None:
        return None
    return f.top1_agreement if f.top1_agreement is not None else f.cosine_similarity


def _fid(r: Report) -> str:
    f = r.fidelity
    if f is None:
        return "-"
    return _pct(f.top1_agreement) if f.top1_agreement is not None else f"cos {f.cosine_similarity:.4f}"


def _delta(r: Report) -> str:
    b, o = r.baseline.accuracy, r.optimized.accuracy
    return "-" if b is None or o is None else f"{(o - b) * 100:+.2f} pt"


def _wall(r: Report) -> str:
    total = r.timings_s.get("total")
    return "-" if total is None else f"{total:.1f} s"


_ROWS: list[tuple[str, Callable[[Report], str]]] = [
    ("type", lambda r: str(r.experiment.get("type", "-"))),
    ("optim level", lambda r: str(r.experiment.get("optimLevel", "-"))),
    ("mode", lambda r: r.mode),
    ("baseline accuracy", lambda r: _pct(r.baseline.accuracy)),
    ("optimized accuracy", lambda r: _pct(r.optimized.accuracy)),
    ("accuracy change", _delta),
    ("fidelity", _fid),
    ("baseline latency (median)", lambda r: _lat(r.baseline.latency, "median_ms")),
    ("optimized latency (median)", lambda r: _lat(r.optimized.latency, "median_ms")),
    ("optimized latency p90", lambda r: _lat(r.optimized.latency, "p90_ms")),
    (
        "throughput",
        lambda r: (
            "-" if r.optimized.latency is None else f"{r.optimized.latency.throughput_items_per_s:.1f}/s"
        ),
    ),
    ("speedup", lambda r: f"{r.speedup:.2f}x" if r.speedup else "-"),
    ("baseline size", lambda r: format_size(r.baseline.file_size_bytes)),
    ("file size", lambda r: format_size(r.optimized.file_size_bytes)),
    ("gzip size", lambda r: format_size(r.optimized.compressed_size_bytes)),
    ("sparsity", lambda r: _pct(r.optimized.sparsity) if pruning_applied(r) else "-"),
    ("INT8 choice", lambda r: next((c.name for c in r.candidates if c.chosen), "-")),
    ("wall time", _wall),
]


_MAP_ROWS: list[tuple[str, Callable[[Report], str]]] = [
    ("baseline mAP@0.5:0.95", lambda r: _pct(r.baseline.map)),
    ("optimized mAP@0.5:0.95", lambda r: _pct(r.optimized.map)),
]


def compare_table(records: list[RunRecord]) -> list[tuple[str, list[str]]]:
    """Row label -> one cell per record (in order); "-" where a run has no value. The
    ``phase`` and ``problem`` rows appear only when some run has one."""
    rows: list[tuple[str, list[str]]] = [
        (label, [get(r.report) if r.report is not None else "-" for r in records]) for label, get in _ROWS
    ]
    if any(r.report is not None and r.report.optimized.map is not None for r in records):  # detectors
        at = [label for label, _ in rows].index("fidelity")
        rows[at:at] = [
            (label, [get(r.report) if r.report is not None else "-" for r in records])
            for label, get in _MAP_ROWS
        ]
    if any(r.phase for r in records):
        rows.insert(0, ("phase", [r.phase or "-" for r in records]))
    if any(r.error for r in records):
        rows.append(("problem", [r.error or "" for r in records]))
    return rows


def _quality(records: list[RunRecord]) -> tuple[str, Callable[[RunRecord], float | None]]:
    """Accuracy when every compared report has it, else fidelity (one metric on one axis)."""
    reports = [r.report for r in records if r.report is not None]
    if reports and all(rep.optimized.accuracy is not None for rep in reports):
        return "accuracy", lambda r: r.report.optimized.accuracy if r.report else None
    if reports and all(rep.optimized.map is not None for rep in reports):
        return "mAP", lambda r: r.report.optimized.map if r.report else None
    return "fidelity", lambda r: fidelity_of(r.report) if r.report else None


def _latency_ms(r: RunRecord) -> float | None:
    return r.report.optimized.latency.median_ms if r.report and r.report.optimized.latency else None


def _size_mb(r: RunRecord) -> float | None:
    return r.report.optimized.file_size_bytes / 1e6 if r.report else None


def pareto(records: list[RunRecord]) -> dict[str, Any]:
    """Labels on the quality-vs-latency and quality-vs-size fronts (see ``sparsify_runner.pareto``)."""
    from sparsify_runner.pareto import pareto_front

    metric, quality = _quality(records)
    return {
        "quality": metric,
        "latency": [r.label for r in pareto_front(records, cost=_latency_ms, quality=quality)],
        "size": [r.label for r in pareto_front(records, cost=_size_mb, quality=quality)],
    }


def _headline(r: Report) -> dict[str, Any]:
    lat = r.optimized.latency
    return {
        "type": r.experiment.get("type"),
        "optimLevel": r.experiment.get("optimLevel"),
        "mode": r.mode,
        "baselineAccuracy": r.baseline.accuracy,
        "optimizedAccuracy": r.optimized.accuracy,
        "fidelity": fidelity_of(r),
        "baselineLatencyMs": r.baseline.latency.median_ms if r.baseline.latency else None,
        "optimizedLatencyMs": lat.median_ms if lat else None,
        "optimizedLatencyP90Ms": lat.p90_ms if lat else None,
        "throughputItemsPerS": lat.throughput_items_per_s if lat else None,
        "speedup": r.speedup,
        "baselineSizeBytes": r.baseline.file_size_bytes,
        "optimizedSizeBytes": r.optimized.file_size_bytes,
        "compressedSizeBytes": r.optimized.compressed_size_bytes,
        "sparsity": r.optimized.sparsity if pruning_applied(r) else None,
        "int8Choice": next((c.name for c in r.candidates if c.chosen), None),
        "wallTimeS": r.timings_s.get("total"),
    }


def compare_json(records: list[RunRecord]) -> dict[str, Any]:
    """The comparison for scripts: per run its headline numbers and full report, plus the fronts.
    Latencies are medians (``baselineLatencyMs``/``optimizedLatencyMs``, as in the termination
    message and the speedup); ``sparsity`` is null when the run applied no pruning."""
    return {
        "runs": [
            {
                "label": r.label,
                "source": r.source,
                "phase": r.phase,
                "error": r.error,
                "details": r.details,
                "headline": _headline(r.report) if r.report is not None else None,
                "report": r.report.model_dump(mode="json") if r.report is not None else None,
            }
            for r in records
        ],
        "pareto": pareto(records),
    }


def compare_html(records: list[RunRecord]) -> str:
    """A self-contained page: the table and the Pareto plots (quality vs latency, vs size)."""
    from html import escape

    from sparsify_runner import svg_plots
    from sparsify_runner.report_html import html_document

    def e(x: Any) -> str:
        return escape(str(x), quote=True)

    rows = compare_table(records)
    head = "".join(f'<th scope="col">{e(r.label)}</th>' for r in records)
    body = "".join(
        f'<tr><th scope="row" class="text">{e(label)}</th>'
        + "".join(f"<td>{e(c)}</td>" for c in cells)
        + "</tr>"
        for label, cells in rows
    )
    sources = "".join(f"<li><strong>{e(r.label)}</strong>: <code>{e(r.source)}</code></li>" for r in records)
    table = f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table><ul>{sources}</ul>"
    fronts = pareto(records)
    metric, quality = _quality(records)
    y_format = "{:.1%}" if metric == "accuracy" else "{:.3f}"
    plots = []
    for key, cost, x_label in (
        ("latency", _latency_ms, "optimized latency (ms per batch, median)"),
        ("size", _size_mb, "optimized model file (MB)"),
    ):
        points = [(cost(r), quality(r), r.label) for r in records]
        if sum(1 for x, y, _ in points if x is not None and y is not None) == 0:
            content = f'<p class="empty">No run has both {e(metric)} and {e(key)}: nothing to plot.</p>'
        else:
            svg = svg_plots.scatter(
                points,
                title=f"{metric} vs {key} (Pareto front joined)",
                x_label=x_label,
                y_label=metric,
                highlight=set(fronts[key]),
                front=fronts[key],
                y_format=y_format,
            )
            on_front = ", ".join(fronts[key]) or "none"
            content = f'<div class="plot">{svg}</div><p class="sub">On the front: {e(on_front)}</p>'
        plots.append(
            f'<section id="pareto-{key}"><h2>{e(metric.capitalize())} vs {key}</h2>{content}</section>'
        )
    title = f"Sparsify compare: {len(records)} run(s)"
    page = (
        f'<header><h1>{e(title)}</h1><p class="sub">Quality axis: {e(metric)} '
        "(accuracy when every run has labels, else fidelity to its baseline). Latencies are medians "
        "per batch, as is the speedup. Lower latency/size and higher quality are better.</p></header>"
        f'<section id="table"><h2>Side by side</h2>{table}</section>' + "".join(plots)
    )
    return html_document(title, page)
