"""report.html: the report of one run as a single self-contained page.

Built from the pydantic ``Report`` alone (torch-free, stdlib only: the runner image and a
laptop without extras can both render it). Plots are inline SVG from ``svg_plots``, the CSS
is inline with a print stylesheet, and nothing is fetched from anywhere, so the file reads
offline, mails as an attachment and prints. Every value taken from the report is escaped.

Sections have stable ids (``summary``, ``speedup-source``, ``layers``, ``latency``,
``candidates``, ``training``, ``notes``) that tests and the dashboard rely on; a section
without data says so in one line instead of drawing an empty plot. A text-generation run
(``llm.report.LlmReport``: a report with a ``perplexity`` section) adds ``llm`` after the
summary (perplexity before/after with intervals, disk size, the choice, greedy generations,
the CPU export's decode speed when there is one) and lists its candidates by perplexity.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from . import svg_plots
from .report import LatencyStats, Report
from .summary import format_size, pruning_applied

__all__ = [
    "REPORT_CSS",
    "SECTION_IDS",
    "html_document",
    "render_report_body",
    "render_report_html",
    "report_title",
]

SECTION_IDS = ("summary", "speedup-source", "layers", "latency", "candidates", "training", "notes")

REPORT_CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #d9d9de; --accent: #0072B2;
        --bad: #b3261e; --good: #137333; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1040px; padding: 24px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 0 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
section { margin: 0 0 28px; }
.sub { color: var(--muted); margin: 0 0 18px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 12px; font-size: 0.92rem; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f5f7; font-weight: 600; }
td.text, th.text { text-align: left; }
.empty { color: var(--muted); font-style: italic; }
.better { color: var(--good); } .worse { color: var(--bad); }
.chosen td { font-weight: 600; background: #eef6fc; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0 0 12px; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; word-break: break-all; }
.plot { margin: 6px 0 10px; overflow-x: auto; }
.plot svg { display: block; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.85rem; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; white-space: pre-wrap; }
footer { color: var(--muted); font-size: 0.8rem; border-top: 1px solid var(--line); padding-top: 8px; }
@media print {
  @page { margin: 14mm; }
  body { max-width: none; padding: 0; font-size: 10.5pt; }
  section { break-inside: avoid-page; page-break-inside: avoid; }
  #layers, #training, #candidates { break-inside: auto; page-break-inside: auto; }
  tr, .plot { break-inside: avoid; page-break-inside: avoid; }
  h2 { break-after: avoid; page-break-after: avoid; }
  thead { display: table-header-group; }
  .plot { overflow: visible; }
  .plot svg { max-width: 100% !important; height: auto !important; }
  a { color: inherit; text-decoration: none; }
  .no-print { display: none; }
}
"""

_MODE_TEXT = {
    "baseline": "baseline (the model is returned unchanged)",
    "quantization-only": "INT8 quantization only",
    "unstructured": "unstructured sparsity",
    "channels": "structured (channel/head) pruning",
}


def _speed_words(report: Report) -> str:
    """The report's speed verdict; reports from before verdicts existed: the bare ratio."""
    if report.speed is not None:
        return report.speed.words()
    sp = report.speedup
    if not sp:
        return ""
    return f"{sp:.2f}x faster" if sp >= 1 else f"{1 / sp:.2f}x slower"


def _mode_text(report: Report) -> str:
    """The mode in words, '+ INT8' only when the returned model is quantized."""
    text = _MODE_TEXT.get(report.mode, report.mode)
    settings = report.settings
    int8_method = settings.get("int8_method")
    quantized = settings.get("quantize") is True or (int8_method is not None and int8_method != "none (FP32)")
    if report.mode in ("unstructured", "channels") and quantized:
        text += " + INT8"
    return text


# ---- formatting -------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}%}"




def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} ms"


def _num(x: float | int | None, fmt: str = "{:,}") -> str:
    return "-" if x is None else fmt.format(x)


def _ratio_text(base: float | None, new: float | None) -> str:
    if not base or not new:
        return ""
    return f"{base / new:.2f}x smaller" if new <= base else f"{new / base:.2f}x larger"


def report_title(report: Report) -> str:
    exp = report.experiment
    name = exp.get("name") or f"{exp.get('type', 'experiment')} · {exp.get('useCase', '')}".rstrip(" ·")
    return f"Sparsify report: {name}"


def html_document(title: str, body: str, *, css: str = REPORT_CSS) -> str:
    """A whole HTML page around ``body`` (already-escaped HTML) with the inline stylesheet."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _table(head: list[str], rows: list[list[str]], *, row_classes: list[str] | None = None) -> str:
    """Cells are already-escaped HTML."""
    out = ["<table><thead><tr>", *(f"<th>{h}</th>" for h in head), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        out.extend(f"<td>{c}</td>" for c in row)
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _section(sid: str, title: str, content: str) -> str:
    return f'<section id="{sid}">\n<h2>{_e(title)}</h2>\n{content}\n</section>'


def _empty(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'


def _plot(svg: str) -> str:
    return f'<div class="plot">{svg}</div>'


# ---- sections -----------------------------------------------------------------------------------


def _fidelity_value(report: Report) -> float | None:
    f = report.fidelity
    if f is None:
        return None
    return f.top1_agreement if f.top1_agreement is not None else f.cosine_similarity


def _summary(report: Report) -> str:
    b, o, exp = report.baseline, report.optimized, report.experiment
    meta: list[tuple[str, Any]] = [
        ("type", exp.get("type")),
        ("use case", exp.get("useCase")),
        ("optim level", exp.get("optimLevel")),
        ("mode", _mode_text(report)),
        ("structure", exp.get("structure")),
        ("model", exp.get("model") or exp.get("arch")),
        ("data", exp.get("data")),
        ("output", exp.get("output")),
        ("deploy target", _deploy_text(exp.get("deploy"))),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta if v not in (None, "", {}))
    rows: list[list[str]] = []
    if b.accuracy is not None or o.accuracy is not None:
        delta = ""
        if b.accuracy is not None and o.accuracy is not None:
            d = (o.accuracy - b.accuracy) * 100
            cls = "better" if d > 0 else ("worse" if d < 0 else "")
            delta = f'<span class="{cls}">{d:+.2f} pt</span>'
        rows.append(["accuracy (held-out)", _pct(b.accuracy), _pct(o.accuracy), delta])
    if b.f1 is not None or o.f1 is not None:
        rows.append(["F1", _num(b.f1, "{:.4f}"), _num(o.f1, "{:.4f}"), ""])
    for label, key in (("mAP@0.5:0.95 (val)", "map"), ("mAP@0.5 (val)", "map50")):
        before, after = getattr(b, key), getattr(o, key)
        if before is not None or after is not None:
            delta = "" if before is None or after is None else f"{(after - before) * 100:+.2f} pt"
            rows.append([label, _num(before, "{:.4f}"), _num(after, "{:.4f}"), delta])
    if report.fidelity is not None:
        f = report.fidelity
        if f.top1_agreement is not None:
            rows.append([f"top-1 agreement ({f.samples} held-out)", "100.00%", _pct(f.top1_agreement), ""])
        rows.append(["output cosine similarity", "1.0000", f"{f.cosine_similarity:.4f}", ""])
    bl, ol = b.latency, o.latency
    speed = _speed_words(report)
    rows.append(["latency median", _ms(bl and bl.median_ms), _ms(ol and ol.median_ms), _e(speed)])
    rows.append(["latency p90", _ms(bl and bl.p90_ms), _ms(ol and ol.p90_ms), ""])
    rows.append(
        [
            "throughput",
            _num(bl and bl.throughput_items_per_s, "{:,.1f} items/s"),
            _num(ol and ol.throughput_items_per_s, "{:,.1f} items/s"),
            "",
        ]
    )
    rows.append(
        [
            "file size",
            format_size(b.file_size_bytes),
            format_size(o.file_size_bytes),
            _ratio_text(b.file_size_bytes, o.file_size_bytes),
        ]
    )
    rows.append(
        [
            "gzip size",
            format_size(b.compressed_size_bytes),
            format_size(o.compressed_size_bytes),
            _ratio_text(b.compressed_size_bytes, o.compressed_size_bytes),
        ]
    )
    rows.append(["parameters", _num(b.parameters), _num(o.parameters), ""])
    if pruning_applied(report):  # INT8-only zeros are rounding, not a result
        rows.append(["sparsity", _pct(b.sparsity), _pct(o.sparsity), ""])
    if b.flops or o.flops:
        rows.append(["MACs / sample", _num(b.flops), _num(o.flops), ""])
    chosen = next((c.name for c in report.candidates if c.chosen), None)
    extra = []
    if report.policy:
        extra.append(_e(report.policy["description"]) + ".")
        result = report.policy.get("result")
        if result:
            low, high = result["drop_interval"]
            extra.append(
                f"{_e(result['metric'])} drop on {result['samples']} held-out samples: "
                f"{result['drop'] * 100:+.2f} points (90% interval {low * 100:+.2f} to {high * 100:+.2f}); "
                f"budget {report.policy['max_accuracy_drop'] * 100:.2f}."
            )
    if report.candidates:
        name = _e(chosen or ("the baseline" if report.policy else "none"))
        what = "candidate(s)" if report.policy else "INT8 candidate(s)"
        extra.append(f"Searched {len(report.candidates)} {what}, chose <strong>{name}</strong>.")
    total = report.timings_s.get("total")
    if total is not None:
        extra.append(f"Wall time: {total:.1f} s.")
    table = _table(["metric", "baseline", "optimized", "change"], rows)
    return f'<dl class="meta">{dl}</dl>{table}' + "".join(f"<p>{x}</p>" for x in extra)


def _deploy_text(deploy: Any) -> str | None:
    if not isinstance(deploy, dict) or not deploy:
        return None
    parts = [deploy.get("runtime"), deploy.get("device")]
    if deploy.get("batchSize"):
        parts.append(f"batch {deploy['batchSize']}")
    if deploy.get("quantFormat"):
        parts.append(f"INT8 {deploy['quantFormat']}")
    return " · ".join(str(p) for p in parts if p)


def _speedup_source(report: Report) -> str:
    text = report.speedup_source or "The report does not say where the speedup came from."
    facts: list[str] = []
    if report.speedup is not None:
        words = _speed_words(report)
        facts.append(f"measured (median latency, same process, alternating): {words}")
    # from the sizes themselves: the pathways disagree on which way round size_ratio is
    b, o = report.baseline, report.optimized
    for what, base, new in (
        ("file", b.file_size_bytes, o.file_size_bytes),
        ("gzip", b.compressed_size_bytes, o.compressed_size_bytes),
    ):
        if base and new:
            facts.append(f"{what} size: {new / base:.1%} of the baseline ({_ratio_text(base, new)})")
    chosen = next((c for c in report.candidates if c.chosen), None)
    if chosen is not None:
        what = "candidate" if report.policy else "INT8 variant"
        facts.append(f"{what} in the returned model: {chosen.name}")
    if report.optimized.sparsity and pruning_applied(report):
        kind = "structured (removed channels/heads)" if report.mode == "channels" else "unstructured (zeros)"
        facts.append(f"sparsity: {report.optimized.sparsity:.1%} {kind}")
    items = "".join(f"<li>{_e(f)}</li>" for f in facts)
    return f"<p>{_e(text)}</p>" + (f"<ul>{items}</ul>" if items else "")


def _layers(report: Report) -> str:
    if not report.layers:
        return _empty("No per-layer data in this report.")
    layers = report.layers
    chart = svg_plots.bar_chart(
        [ly.name for ly in layers],
        [ly.sparsity for ly in layers],
        title=f"Sparsity per layer ({len(layers)} layers)",
        x_label="layer",
        y_label="sparsity",
    )
    rows = [
        [
            f'<span class="text">{_e(ly.name)}</span>',
            _e(ly.op_type),
            _num(ly.parameters),
            _pct(ly.sparsity, 1),
            "-" if ly.quantized is None else ("yes" if ly.quantized else "no"),
            _e(ly.note or ""),
        ]
        for ly in layers
    ]
    return _plot(chart) + _table(["layer", "op", "parameters", "sparsity", "INT8", "note"], rows)


def _latency_group(lat: LatencyStats) -> dict[str, float]:
    """The box of one model: min/p10/max from the kept samples (a capped subset of the
    timings, min and max included), median/p90/mean exactly as measured over all of them."""
    exact = {"median": lat.median_ms, "p90": lat.p90_ms, "mean": lat.mean_ms}
    if lat.samples_ms:
        return {**svg_plots.summary_stats(lat.samples_ms), **exact}
    return exact


def _latency(report: Report) -> str:
    pairs = (("baseline", report.baseline.latency), ("optimized", report.optimized.latency))
    measured = [(n, lat) for n, lat in pairs if lat is not None]
    if not measured:
        return _empty("No latency was measured for this run.")
    groups = {n: _latency_group(lat) for n, lat in measured}
    has_samples = all(lat.samples_ms for _, lat in measured)
    lat0 = measured[0][1]
    chart = svg_plots.box_plot(
        groups,
        title=f"Latency per batch ({lat0.provider}, batch {lat0.batch_size})",
        y_label="ms per batch",
    )
    rows = [
        [
            n,
            _e(lat.provider),
            str(lat.batch_size),
            str(lat.iterations),
            _ms(lat.mean_ms),
            _ms(lat.median_ms),
            _ms(lat.p90_ms),
            _ms(lat.std_ms),
            _num(lat.throughput_items_per_s, "{:,.1f}"),
        ]
        for n, lat in measured
    ]
    note = (
        ""
        if has_samples
        else _empty("This report kept no per-iteration samples: the box spans median to p90 (diamond: mean).")
    )
    head = ["model", "provider", "batch", "iterations", "mean", "median", "p90", "std", "items/s"]
    return _plot(chart) + note + _table(head, rows)


def _outcome_candidates(report: Report) -> str:
    """The outcome search: every candidate's speed against its accuracy drop, the front marked."""
    cands = report.candidates
    budget = report.policy["max_accuracy_drop"] if report.policy else None
    chart = svg_plots.scatter(
        [(c.speedup, None if c.accuracy_drop is None else -c.accuracy_drop * 100, c.name) for c in cands],
        title="candidates: speed vs accuracy change (points, tuning split)",
        x_label="speedup over the baseline (x)",
        y_label="accuracy change (pt)",
        highlight={c.name for c in cands if c.chosen},
        front=[c.name for c in cands if c.pareto],
        y_format="{:.2f}",
    )
    rows = [
        [
            f'<span class="text">{_e(c.name)}</span>' + (" (chosen)" if c.chosen else ""),
            _e(c.stage or ""),
            _num(c.speedup, "{:.2f}x"),
            _num(None if c.accuracy_drop is None else c.accuracy_drop * 100, "{:+.2f}"),
            _num(None if c.accept_drop is None else c.accept_drop * 100, "{:+.2f}"),
            format_size(c.compressed_size_bytes),
            "yes" if c.within_budget else ("no" if c.within_budget is False else ""),
            "yes" if c.pareto else "",
            _e(c.note or ""),
        ]
        for c in cands
    ]
    head = ["candidate", "stage", "speedup", "drop (pt)", "accept drop", "gzip", "in budget", "front", "note"]
    table = _table(head, rows, row_classes=["chosen" if c.chosen else "" for c in cands])
    caption = "" if budget is None else f"<p>Budget: {budget * 100:.2f} points against the baseline.</p>"
    return _plot(chart) + caption + table


def _candidates(report: Report) -> str:
    cands = report.candidates
    if getattr(report, "perplexity", None) is not None:
        return _llm_candidates(report)
    if not cands:
        return _empty("No INT8 candidates were measured in this run.")
    if report.policy is not None:
        return _outcome_candidates(report)
    has_speed = any(c.speedup is not None for c in cands)
    x_of = (lambda c: c.speedup) if has_speed else (lambda c: c.latency_ms)
    plottable = any(x_of(c) is not None and c.fidelity is not None for c in cands)
    chart = svg_plots.scatter(
        [(x_of(c), c.fidelity, c.name) for c in cands],
        title="INT8 candidates: speed vs fidelity",
        x_label="speedup over the reference (x)" if has_speed else "latency (ms)",
        y_label="fidelity",
        highlight={c.name for c in cands if c.chosen},
        y_format="{:.3f}",
    )
    rows = [
        [
            f'<span class="text">{_e(c.name)}</span>' + (" (chosen)" if c.chosen else ""),
            _ms(c.latency_ms),
            _num(c.speedup, "{:.2f}x"),
            _num(c.fidelity, "{:.4f}"),
            _num(c.cosine, "{:.4f}"),
            _pct(c.accuracy),
            _e(c.note or ""),
        ]
        for c in cands
    ]
    table = _table(
        ["candidate", "latency", "speedup", "fidelity", "cosine", "accuracy", "note"],
        rows,
        row_classes=["chosen" if c.chosen else "" for c in cands],
    )
    if not plottable:
        return (
            _empty("No candidate has both a speed and a fidelity measurement to plot; see the table.") + table
        )
    return (
        _plot(chart)
        + '<p class="sub">Fidelity: top-1 agreement with the reference for classifiers, else cosine '
        "similarity of the outputs. The chosen candidate is highlighted.</p>" + table
    )


# ---- text generation (llm.report.LlmReport; read by attribute: this module stays torch-free) -------------


def _interval(pair: list[float] | None, fmt: str) -> str:
    return "" if not pair else f" ({fmt.format(pair[0])} to {fmt.format(pair[1])})"


def _llm(report: Report) -> str:
    ppl = report.perplexity  # type: ignore[attr-defined]
    b, o = report.baseline, report.optimized
    change = f"{ppl.increase:+.2%}{_interval(ppl.increase_interval, '{:+.2%}')}"
    cls = "worse" if ppl.increase > ppl.budget else ("better" if ppl.increase < 0 else "")
    rows = [
        [
            f"perplexity, {ppl.windows} held-out windows of {ppl.sequence_length} tokens",
            f"{ppl.baseline:.3f}{_interval(ppl.baseline_interval, '{:.3f}')}",
            f"{ppl.optimized:.3f}{_interval(ppl.optimized_interval, '{:.3f}')}",
            f'<span class="{cls}">{_e(change)}</span>',
        ],
        ["budget (relative perplexity increase)", "", "", f"+{ppl.budget:.2%}"],
    ]
    if ppl.reloaded is not None:
        rows.append(["perplexity of the published folder, reloaded", "", f"{ppl.reloaded:.3f}", ""])
    rows.append(
        [
            "weights on disk",
            format_size(b.file_size_bytes),
            format_size(o.file_size_bytes),
            _ratio_text(b.file_size_bytes, o.file_size_bytes),
        ]
    )
    rows.append(
        [
            "weights, deflated",
            format_size(b.compressed_size_bytes),
            format_size(o.compressed_size_bytes),
            _ratio_text(b.compressed_size_bytes, o.compressed_size_bytes),
        ]
    )
    rows.extend(_llm_cpu_rows(getattr(report, "cpu_export", None)))
    parts = [
        _table(["", "dense", "shipped", "change"], rows),
        '<p class="sub">Intervals: 90% bootstrap over windows; the change is paired (both models on the '
        "same resampled windows). The budget is judged on the point estimate.</p>",
    ]
    reason = (report.policy or {}).get("reason")
    if reason:
        parts.append(f"<p><strong>Choice:</strong> {_e(reason)}.</p>")
    parts.append("<h3>Greedy generations</h3>" + _generations(getattr(report, "generations", None)))
    data = getattr(report, "data", None) or {}
    sources = data.get("sources") or {}
    if sources:
        parts.append(
            f'<p class="sub">Calibration: {_e(sources.get("calibration"))} '
            f"({_e(data.get('calibration_windows'))} windows); held-out: {_e(sources.get('held_out'))} "
            f"({_e(data.get('held_out_windows'))} windows). The two never share a token.</p>"
        )
    return "".join(parts)


def _llm_cpu_rows(cpu: Any) -> list[list[str]]:
    """Decode and prefill speed of the onnxruntime CPU export (dense FP32 vs shipped), when measured."""
    if cpu is None:
        return []
    d, s = cpu.dense, cpu.shipped
    return [
        [
            f"decode on onnxruntime CPU, batch 1 ({_e(s.weights)} vs {_e(d.weights)})",
            f"{d.decode_tokens_per_s:,.1f} tokens/s",
            f"{s.decode_tokens_per_s:,.1f} tokens/s",
            _e(cpu.decode_speed.words()),
        ],
        [
            f"prefill of {cpu.prefill_tokens} tokens",
            _ms(d.prefill.median_ms),
            _ms(s.prefill.median_ms),
            _e(cpu.prefill_speed.words()),
        ],
    ]


def _generations(gen: Any) -> str:
    if gen is None or not gen.samples:
        return _empty("No generations were recorded in this run.")
    rows = []
    for g in gen.samples:
        verdict = "same" if g.same else f"differs from token {g.first_difference + 1}"
        rows.append(
            [
                f'<span class="text">{_e(g.prompt)}</span>',
                f'<span class="text">{_e(g.dense)}</span>',
                f'<span class="text">{_e(g.shipped)}</span>',
                _e(verdict),
            ]
        )
    table = _table(
        ['<span class="text">prompt (held-out text)</span>', "dense", "shipped", ""], rows
    ).replace("<td>", '<td class="text">')
    return (
        f'<p class="sub">Greedy continuations of up to {gen.max_new_tokens} tokens after '
        f"{gen.prompt_tokens}-token prompts; {gen.same} of {len(gen.samples)} are the same tokens.</p>"
        + table
    )


def _llm_candidates(report: Report) -> str:
    cands = report.candidates
    if not cands:
        return _empty("No candidates: optim level 0 ships the dense model unchanged.")
    rows = []
    for c in cands:
        built = c.perplexity is not None
        rows.append(
            [
                f'<span class="text">{_e(c.name)}</span>' + (" (chosen)" if c.chosen else ""),
                f'<span class="text">{_e(c.scheme or "")}</span>',
                f"{c.perplexity:.3f}{_interval(c.perplexity_interval, '{:.3f}')}" if built else "",
                f"{c.accuracy_drop:+.2%}{_interval(c.accuracy_drop_interval, '{:+.2%}')}" if built else "",
                "yes" if c.within_budget else ("no" if c.within_budget is False else ""),
                format_size(c.size_bytes) if built else "",
                format_size(c.compressed_size_bytes) if built else "",
                _num(c.compress_seconds, "{:.1f} s"),
                _e("" if built else (c.note or "")),
            ]
        )
    head = ["candidate", "scheme", "perplexity (90%)", "increase (paired 90%)", "in budget", "weights",
            "deflated", "oneshot", "note"]
    budget = (report.policy or {}).get("max_perplexity_increase")
    caption = ""
    if budget is not None:
        caption = (
            f"<p>Built most compressed first; the first within the +{budget:.2%} perplexity budget ships.</p>"
        )
    return caption + _table(head, rows, row_classes=["chosen" if c.chosen else "" for c in cands])


def _training(report: Report) -> str:
    hist = report.training
    if not hist:
        return _empty("This run did no training (one-shot or baseline).")
    loss = svg_plots.line_chart(
        {"train loss": [(r.epoch, r.train_loss) for r in hist]},
        title="Training loss",
        x_label="epoch",
        y_label="loss",
    )
    series = {
        "val accuracy": [(r.epoch, r.val_accuracy) for r in hist],
        "val mAP@0.5:0.95": [(r.epoch, r.val_map) for r in hist],
        "sparsity": [(r.epoch, r.sparsity) for r in hist],
    }
    parts = [_plot(loss)]
    if any(v is not None for pts in series.values() for _, v in pts):
        parts.append(
            _plot(
                svg_plots.line_chart(
                    series,
                    title="Accuracy and sparsity",
                    x_label="epoch",
                    y_label="fraction",
                    y_format="{:.0%}",
                )
            )
        )
    phases = sorted({r.phase for r in hist})
    parts.append(
        f'<p class="sub">{len(hist)} records; phases: {_e(", ".join(phases))} '
        "(negative epochs: dense fine-tune before pruning; qat: simulated INT8).</p>"
    )
    rows = [
        [
            _num(r.epoch, "{:g}"),
            _e(r.phase),
            str(r.step),
            f"{r.train_loss:.4f}",
            _pct(r.val_accuracy if r.val_accuracy is not None else r.val_map),
            _pct(r.sparsity, 1),
            _num(r.lr, "{:.2e}"),
        ]
        for r in hist
    ]
    metric = "val mAP" if any(r.val_map is not None for r in hist) else "val accuracy"
    parts.append(_table(["epoch", "phase", "step", "train loss", metric, "sparsity", "lr"], rows))
    return "".join(parts)


def _notes(report: Report) -> str:
    parts = []
    if report.notes:
        parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>")
    else:
        parts.append(_empty("No notes."))
    if report.timings_s:
        rows = [[_e(k), f"{v:.2f} s"] for k, v in report.timings_s.items()]
        parts.append("<h3>Timings</h3>" + _table(["stage", "wall time"], rows))
    if report.artifacts:
        rows = [[_e(k), f'<span class="text">{_e(v)}</span>'] for k, v in report.artifacts.items()]
        parts.append("<h3>Artifacts</h3>" + _table(["artifact", "location"], rows))
    if report.settings:
        text = json.dumps(report.settings, indent=2, sort_keys=True, default=str)
        parts.append(f"<h3>Effective settings</h3><pre>{_e(text)}</pre>")
    return "".join(parts)


def render_report_body(report: Report) -> str:
    """The sections of the report as an HTML fragment (the dashboard embeds this)."""
    sections = [
        _section("summary", "Summary", _summary(report)),
        *(
            [_section("llm", "Text generation: perplexity, size and generations", _llm(report))]
            if getattr(report, "perplexity", None) is not None
            else []
        ),
        _section("speedup-source", "Where the speedup came from", _speedup_source(report)),
        _section("layers", "Per-layer sparsity", _layers(report)),
        _section("latency", "Latency: baseline vs optimized", _latency(report)),
        _section(
            "candidates",
            "Candidates measured" if report.policy else "INT8 candidates measured",
            _candidates(report),
        ),
        _section("training", "Training curves", _training(report)),
        _section("notes", "Notes and run details", _notes(report)),
    ]
    return "\n".join(sections)


def render_report_html(report: Report) -> str:
    """The whole report.html document for one run."""
    title = report_title(report)
    exp = report.experiment
    mode = _mode_text(report)
    sub = f"{exp.get('type', '')} · {mode} · report schema {report.schema_version}"
    body = (
        f'<header><h1>{_e(title)}</h1><p class="sub">{_e(sub)}</p></header>\n'
        f"{render_report_body(report)}\n"
        "<footer>Generated by sparsify-k8s from report.json; self-contained (no external resources).</footer>"
    )
    return html_document(title, body)
