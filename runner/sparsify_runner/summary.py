"""The terminal summary of a run: before/after table and where the speedup came from."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .report import Report


def format_size(n: int | float | None) -> str:
    """Bytes in the unit that keeps the significant digits (decimal units, as the MB figures
    always were): ``812 B``, ``45.3 KB``, ``2.41 MB``, ``1.20 GB``; a 100 KB model is never
    "0.10 MB" next to "0.03 MB"."""
    if n is None:
        return "-"
    if n < 1000:
        return f"{int(n)} B"
    if n < 999_950:  # below what .1f would round up to "1000.0 KB"
        return f"{n / 1e3:.1f} KB"
    if n < 999_995_000:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e9:.2f} GB"



PRUNING_MODES = ("unstructured", "channels")


def pruning_applied(report: Report) -> bool:
    """Whether the returned model was pruned: only then is its sparsity a result (an INT8-only
    model has a few weights rounded to zero, which is not sparsity anyone chose)."""
    return report.mode in PRUNING_MODES


# --eval-metric -> (row label, ModelStats field) of the headline metric the user chose
CHOSEN_METRIC_ROWS = {"f1": ("macro F1 (held-out)", "f1"), "recall": ("macro recall (held-out)", "recall")}


def chosen_metric(report: Report) -> str:
    """The --eval-metric of the run (``auto`` for reports that do not say)."""
    return str((report.experiment or {}).get("evalMetric") or "auto")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def _ms(lat) -> str:
    return "-" if lat is None else f"{lat.median_ms:.2f} ms (p90 {lat.p90_ms:.2f})"


def _tput(lat) -> str:
    return "-" if lat is None else f"{lat.throughput_items_per_s:.1f} items/s"


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _size_change(before: int | None, after: int | None) -> str:
    if not before or not after:
        return ""
    if abs(after - before) / before < 0.005:
        return "same size"
    return f"{before / after:.2f}x smaller" if after < before else f"{after / before:.2f}x larger"


MAP_ROWS = (("mAP@0.5:0.95 (val)", "map"), ("mAP@0.5 (val)", "map50"))


def _map(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}"


def _headline_metric(report: Report) -> tuple[str, float | None, float | None] | None:
    """(label, baseline, optimized) of the labelled metric the user chose with --eval-metric:
    macro F1 / recall when chosen (and measured), accuracy for auto/accuracy; None when that
    metric was not measured or the choice was fidelity / mAP (their own rows follow)."""
    b, o = report.baseline, report.optimized
    metric = chosen_metric(report)
    if metric in CHOSEN_METRIC_ROWS:
        label, key = CHOSEN_METRIC_ROWS[metric]
        if getattr(b, key) is not None or getattr(o, key) is not None:
            return label, getattr(b, key), getattr(o, key)
    elif metric not in ("auto", "accuracy"):
        return None
    if b.accuracy is None and o.accuracy is None:
        return None
    return "accuracy (held-out)", b.accuracy, o.accuracy


def summary_table(report: Report) -> Table:
    b, o = report.baseline, report.optimized
    title = f"{report.experiment.get('type', 'experiment')} · mode {report.mode}"
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("baseline", justify="right")
    table.add_column("optimized", justify="right")
    table.add_column("change", justify="right")
    headline = _headline_metric(report)
    if headline is not None:
        label, before, after = headline
        delta = "" if before is None or after is None else f"{(after - before) * 100:+.2f} pt"
        table.add_row(label, _pct(before), _pct(after), delta)
    for label, key in MAP_ROWS:
        before, after = getattr(b, key), getattr(o, key)
        if before is not None or after is not None:
            delta = "" if before is None or after is None else f"{(after - before) * 100:+.2f} pt"
            table.add_row(label, _map(before), _map(after), delta)
    if report.fidelity is not None:
        f = report.fidelity
        if f.top1_agreement is not None:
            table.add_row(f"top-1 agreement ({f.samples} held-out)", "100.00%", _pct(f.top1_agreement), "")
        table.add_row("output cosine similarity", "1.0000", f"{f.cosine_similarity:.4f}", "")
    table.add_row(
        "latency median",
        _ms(b.latency),
        _ms(o.latency),
        report.speed.words() if report.speed else "",
    )
    table.add_row("throughput", _tput(b.latency), _tput(o.latency), "")
    table.add_row(
        "file size",
        format_size(b.file_size_bytes),
        format_size(o.file_size_bytes),
        _size_change(b.file_size_bytes, o.file_size_bytes),
    )
    table.add_row(
        "gzip size",
        format_size(b.compressed_size_bytes),
        format_size(o.compressed_size_bytes),
        _size_change(b.compressed_size_bytes, o.compressed_size_bytes),
    )
    table.add_row("parameters", _count(b.parameters), _count(o.parameters), "")
    if pruning_applied(report):
        table.add_row("sparsity", _pct(b.sparsity), _pct(o.sparsity), "")
    if b.flops or o.flops:
        table.add_row("MACs / sample", _count(b.flops), _count(o.flops), "")
    return table


def front_table(front) -> Table:
    """The Pareto front the search saw: accuracy drop vs speed (and size)."""
    table = Table(title="Pareto front (accuracy drop vs speed / size)", title_justify="left")
    for col in ("candidate", "drop (pt)", "speedup", "gzip size"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for c in sorted(front, key=lambda c: -(c.speedup or 0)):
        table.add_row(
            c.name + (" (chosen)" if c.chosen else ""),
            "-" if c.accuracy_drop is None else f"{c.accuracy_drop * 100:+.2f}",
            "-" if c.speedup is None else f"{c.speedup:.2f}x",
            format_size(c.compressed_size_bytes),
        )
    return table


def print_summary(report: Report, console: Console | None = None) -> None:
    """Before/after table, the chosen INT8 candidate, where the speedup came from, notes."""
    console = console or Console(stderr=False)
    console.print(summary_table(report))
    chosen = [c for c in report.candidates if c.chosen]
    if report.policy:
        console.print(f"Policy: {report.policy['description']}")
    if report.candidates:
        tried = len(report.candidates)
        name = chosen[0].name if chosen else "the baseline"
        what = "candidate(s)" if report.policy else "INT8 candidate(s)"
        console.print(f"Searched {tried} {what}, chose [bold]{name}[/bold]")
        front = [c for c in report.candidates if c.pareto]
        if front:
            console.print(front_table(front))
    if report.speedup_source:
        console.print(f"Where the speedup came from: {report.speedup_source}")
    for note in report.notes:
        console.print(f"note: {note}")
    model = report.artifacts.get("model")
    if model:
        console.print(f"model: {model}")
    if report.artifacts.get("report"):
        console.print(f"report: {report.artifacts['report']}")
