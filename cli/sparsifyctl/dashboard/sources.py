"""Where the dashboard's runs come from: local folders, s3:// prefixes and the cluster.

Everything is re-read on each call (a page load), so cluster phases and newly finished
local runs show up without restarting. Reports are loaded through ``compare.load_runs``,
the same loader as ``sparsifyctl compare``; this module only discovers *which* runs exist
and turns their headline numbers into table cells.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from sparsify_operator.models import GROUP
from sparsify_runner.summary import PRUNING_MODES, format_size

REPORT_FILE = "report.json"
SWEEP_FILE = "sweep.json"
DISCOVERY_DEPTH = 2  # the runs folder itself, its sub-folders and theirs
SWEEP_LABEL = f"{GROUP}/sweep"  # the label the sweep operator puts on its children
LOCAL_ROOT = "~"  # key segment for a runs folder that is itself a run


class NotAvailable(Exception):
    """A module the page needs is not in this installation (yet); the page says so."""

    def __init__(self, module: str, what: str) -> None:
        super().__init__(f"{what} is not available: module '{module}' is not installed")
        self.module = module


def optional_module(name: str, what: str):
    """Import a sibling feature's module, or raise NotAvailable (pages degrade, never fake)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            raise NotAvailable(name, what) from None
        raise


@dataclass
class ClusterTarget:
    """The cluster the dashboard reads (and applies to): a ``kube.Kube`` client + namespace."""

    kube: Any
    namespace: str
    context: str | None = None


class Entry(BaseModel):
    """One row of the runs/sweeps lists."""

    key: str
    kind: Literal["experiment", "sweep"]
    origin: Literal["local", "s3", "cluster"]
    label: str
    source: str
    phase: str | None = None
    cells: dict[str, str] = {}
    error: str | None = None
    sweep: str | None = None
    """label of the sweep this run belongs to, when it is a sweep point"""
    model: str | None = None
    """the baseline model of the run (offered on the predict page)"""


HEADLINE = (
    "type",
    "optim level",
    "mode",
    "accuracy",
    "fidelity",
    "median latency",
    "speedup",
    "size",
    "sparsity",
)
"""A run's headline cells (the run page shows them all)."""
LIST_NUMBERS = ("accuracy", "fidelity", "median latency", "speedup", "size", "sparsity")
"""The runs list's number columns (type, level and mode share one column there, so that the
table fits a 1200 px window without scrolling sideways)."""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _acc(baseline: float | None, optimized: float | None) -> str:
    if baseline is None and optimized is None:
        return "-"
    return f"{_pct(baseline)} → {_pct(optimized)}"


_mb = format_size


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} ms"


def _x(x: float | None) -> str:
    return "-" if not x else f"{x:.2f}x"


def report_cells(report: Any) -> dict[str, str]:
    """Headline numbers of a Report (the list page's columns)."""
    exp = report.experiment or {}
    fid = report.fidelity
    fidelity = "-"
    if fid is not None:
        fidelity = (
            _pct(fid.top1_agreement) if fid.top1_agreement is not None else f"cos {fid.cosine_similarity:.4f}"
        )
    lat = report.optimized.latency
    return {
        "type": str(exp.get("type", "-")),
        "optim level": str(exp.get("optimLevel", "-")),
        "mode": report.mode,
        "accuracy": _acc(report.baseline.accuracy, report.optimized.accuracy),
        "fidelity": fidelity,
        "median latency": _ms(lat.median_ms if lat else None),
        "speedup": _x(report.speedup),
        "size": _mb(report.optimized.file_size_bytes),
        "sparsity": _pct(report.optimized.sparsity) if report.mode in PRUNING_MODES else "-",
    }


def status_cells(obj: dict[str, Any]) -> dict[str, str]:
    """Headline numbers of a cluster SparsifyExperiment (from status.results, camelCase)."""
    exp = (obj.get("spec") or {}).get("experiment") or {}
    res = (obj.get("status") or {}).get("results") or {}
    return {
        "type": str(exp.get("type", "-")),
        "optim level": str(exp.get("optimLevel", "-")),
        "mode": res.get("mode") or "-",
        "accuracy": _acc(res.get("baselineAccuracy"), res.get("optimizedAccuracy")),
        "fidelity": _pct(res.get("fidelity")),
        "median latency": _ms(res.get("optimizedLatencyMs")),  # the termination message's: a median
        "speedup": _x(res.get("speedup")),
        "size": _mb(res.get("optimizedSizeBytes")),
        "sparsity": _pct(res.get("sparsity")) if res.get("mode") in PRUNING_MODES else "-",
    }


def point_cells(point: dict[str, Any]) -> dict[str, str]:
    """One sweep point (local sweep.json and the SparsifySweep status share these camelCase names)."""
    fid = point.get("fidelity")
    return {
        "name": str(point.get("name", "-")),
        "optim level": str(point.get("optimLevel", "-")),
        "structure": str(point.get("structure", "-")),
        "phase": str(point.get("phase") or "-"),
        "accuracy": _pct(point.get("accuracy")),
        "fidelity": _pct(fid) if isinstance(fid, int | float) else "-",
        "median latency": _ms(point.get("latencyMs")),
        "speedup": _x(point.get("speedup")),
        "size": _mb(point.get("sizeBytes")),
    }


def sweep_summary(data: dict[str, Any]) -> dict[str, str]:
    points = data.get("points") or []
    done = sum(1 for p in points if p.get("phase") == "Succeeded")
    best = data.get("best") or {}
    return {
        "points": str(len(points)),
        "succeeded": f"{done}/{len(points)}",
        "best": str(best.get("name") or "-") if isinstance(best, dict) else str(best),
        "summary": str(data.get("summary") or "-"),
    }


def _discover(root: Path) -> list[tuple[str, Path]]:
    """(kind, folder) for the runs folder and sub-folders up to DISCOVERY_DEPTH levels."""
    found: list[tuple[str, Path]] = []
    level = [root]
    for depth in range(DISCOVERY_DEPTH + 1):
        nxt: list[Path] = []
        for folder in level:
            if (folder / SWEEP_FILE).is_file():
                found.append(("sweep", folder))
            if (folder / REPORT_FILE).is_file():
                found.append(("experiment", folder))
            if depth < DISCOVERY_DEPTH:
                try:
                    children = sorted(
                        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                    )
                except OSError:
                    children = []
                nxt.extend(children)
        level = nxt
    return found


def _rel(root: Path, folder: Path) -> str:
    rel = folder.relative_to(root).as_posix()
    return LOCAL_ROOT if rel == "." else rel


def _load_sweep_file(folder: Path) -> dict[str, Any]:
    """sweep.json validated by the sweep module's own model, as its camelCase wire form."""
    sweep = optional_module("sparsify_runner.sweep", "the sweep view")
    text = (folder / SWEEP_FILE).read_text(encoding="utf-8")
    result = sweep.SweepResult.model_validate_json(text)
    return result.model_dump(mode="json", by_alias=True)


@dataclass
class Sources:
    """The runs the dashboard shows: ``runs`` (folders / s3:// prefixes) and an optional cluster."""

    runs: list[str] = field(default_factory=list)
    cluster: ClusterTarget | None = None
    warnings: list[str] = field(default_factory=list)

    # ---- listing ------------------------------------------------------------------------------
    def entries(self) -> tuple[list[Entry], list[str]]:
        """All runs and sweeps, re-read now, plus one-line problems to show above the lists."""
        entries: list[Entry] = []
        problems: list[str] = []
        for i, src in enumerate(self.runs):
            if src.startswith("s3://"):
                entries += self._s3_entries(i, src, problems)
            else:
                entries += self._local_entries(i, Path(src), problems)
        if self.cluster is not None:
            entries += self._cluster_entries(problems)
        return entries, problems

    def _load_runs(self, sources: list[str], *, context: str | None = None) -> list[Any]:
        compare = optional_module("sparsifyctl.compare", "loading reports")
        return compare.load_runs(sources, context=context)

    def _record_entry(self, key: str, origin: str, record: Any, *, sweep: str | None = None) -> Entry:
        report = record.report
        return Entry(
            key=key,
            kind="experiment",
            origin=origin,  # type: ignore[arg-type]
            label=record.label,
            source=record.source,
            phase=record.phase or ("Succeeded" if report is not None else "Unreadable"),
            cells=report_cells(report) if report is not None else {},
            error=record.error,
            sweep=sweep,
            model=(report.experiment or {}).get("model") if report is not None else None,
        )

    def _local_entries(self, i: int, root: Path, problems: list[str]) -> list[Entry]:
        if not root.is_dir():
            problems.append(f"runs folder '{root}' does not exist (any more)")
            return []
        found = _discover(root)
        sweeps = {folder: _rel(root, folder) for kind, folder in found if kind == "sweep"}
        out: list[Entry] = []
        for kind, folder in found:
            key = f"{i}/{_rel(root, folder)}"
            label = _rel(root, folder) if folder != root else root.resolve().name
            if kind == "sweep":
                try:
                    data = _load_sweep_file(folder)
                    out.append(
                        Entry(
                            key=key,
                            kind="sweep",
                            origin="local",
                            label=label,
                            source=str(folder),
                            phase=data.get("phase"),
                            cells=sweep_summary(data),
                        )
                    )
                except NotAvailable as err:
                    out.append(
                        Entry(
                            key=key,
                            kind="sweep",
                            origin="local",
                            label=label,
                            source=str(folder),
                            error=str(err),
                        )
                    )
                except (OSError, ValueError) as err:
                    msg = f"{folder / SWEEP_FILE} is not a readable sweep.json ({type(err).__name__})"
                    out.append(
                        Entry(
                            key=key, kind="sweep", origin="local", label=label, source=str(folder), error=msg
                        )
                    )
                continue
            try:
                record = self._load_runs([str(folder.resolve())])[0]
            except NotAvailable as err:
                out.append(
                    Entry(
                        key=key,
                        kind="experiment",
                        origin="local",
                        label=label,
                        source=str(folder),
                        error=str(err),
                    )
                )
                continue
            except Exception as err:  # one bad report must not take the list down
                out.append(
                    Entry(
                        key=key,
                        kind="experiment",
                        origin="local",
                        label=label,
                        source=str(folder),
                        phase="Unreadable",
                        error=_one_line(err),
                    )
                )
                continue
            entry = self._record_entry(key, "local", record, sweep=sweeps.get(folder.parent))
            # the experiment's name (--name) when it has one, else its folder under --runs
            name = optional_module("sparsifyctl.compare", "loading reports").experiment_name(record.report)
            entry.label, entry.source = name or label, str(folder)
            out.append(entry)
        return out

    def _s3_entries(self, i: int, src: str, problems: list[str]) -> list[Entry]:
        try:
            records = self._load_runs([src])
        except NotAvailable as err:
            problems.append(str(err))
            return []
        except Exception as err:
            problems.append(f"{src}: {_one_line(err)}")
            return []
        return [self._record_entry(f"s3/{i}/{j}", "s3", r) for j, r in enumerate(records)]

    def _cluster_entries(self, problems: list[str]) -> list[Entry]:
        assert self.cluster is not None
        kube, ns = self.cluster.kube, self.cluster.namespace
        out: list[Entry] = []
        try:
            items = kube.list_experiments(ns)
        except Exception as err:
            problems.append(f"cannot list experiments in namespace '{ns}': {_one_line(err)}")
            items = []
        for obj in items:
            meta = obj.get("metadata") or {}
            st = obj.get("status") or {}
            out.append(
                Entry(
                    key=f"k8s/{meta.get('namespace', ns)}/{meta['name']}",
                    kind="experiment",
                    origin="cluster",
                    label=meta["name"],
                    source=f"{meta.get('namespace', ns)}/{meta['name']}",
                    phase=st.get("phase") or "Pending",
                    cells=status_cells(obj),
                    error=st.get("message") if st.get("phase") == "Failed" else None,
                    sweep=(meta.get("labels") or {}).get(SWEEP_LABEL),
                    model=((obj.get("spec") or {}).get("experiment") or {}).get("model"),
                )
            )
        try:
            sweeps = kube.list_sweeps(ns)
        except Exception as err:
            problems.append(f"cannot list sweeps in namespace '{ns}': {_one_line(err)}")
            sweeps = []
        for obj in sweeps:
            meta = obj.get("metadata") or {}
            st = obj.get("status") or {}
            out.append(
                Entry(
                    key=f"k8s-sweep/{meta.get('namespace', ns)}/{meta['name']}",
                    kind="sweep",
                    origin="cluster",
                    label=meta["name"],
                    source=f"{meta.get('namespace', ns)}/{meta['name']}",
                    phase=st.get("phase") or "Pending",
                    cells=sweep_summary(st),
                )
            )
        return out

    # ---- one run / sweep ----------------------------------------------------------------------
    def find(self, key: str) -> Entry | None:
        entries, _ = self.entries()
        return next((e for e in entries if e.key == key), None)

    def records(self, entry: Entry) -> list[Any]:
        """The RunRecords behind a list entry (a sweep expands to its points)."""
        if entry.origin == "cluster":
            ctx = self.cluster.context if self.cluster else None
            return self._load_runs([entry.source], context=ctx)
        if entry.origin == "s3":
            _, i, j = entry.key.split("/")
            return [self._load_runs([self.runs[int(i)]])[int(j)]]
        records = self._load_runs([str(Path(entry.source).resolve())])
        if entry.kind == "experiment" and len(records) == 1:
            records[0].label = entry.label  # the name the list shows, not a long absolute path
        return records

    def sweep_data(self, entry: Entry) -> dict[str, Any]:
        """A sweep's wire form: local sweep.json or the SparsifySweep's status."""
        if entry.origin == "cluster":
            assert self.cluster is not None
            ns, name = entry.source.split("/", 1)
            return self.cluster.kube.get_sweep(ns, name).get("status") or {}
        return _load_sweep_file(Path(entry.source))

    def point_key(self, entry: Entry, point: dict[str, Any]) -> str | None:
        """The list key of a sweep point's own run, for links from the sweep page."""
        name = str(point.get("name") or "")
        if not name:
            return None
        if entry.origin == "cluster":
            return f"k8s/{entry.source.split('/', 1)[0]}/{name}"
        folder = Path(entry.source) / name
        if (folder / REPORT_FILE).is_file():
            prefix = (
                entry.key if not entry.key.endswith(f"/{LOCAL_ROOT}") else entry.key[: -len(LOCAL_ROOT) - 1]
            )
            return f"{prefix}/{name}"
        return None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
