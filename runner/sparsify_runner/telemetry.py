"""Run telemetry: stage, progress and result metrics.

``Telemetry`` is the interface pathways call (``ctx.telemetry.<method>``); the base class
only logs. ``PrometheusTelemetry`` keeps the same methods and exports them:

* while running, ``/metrics`` on ``SPARSIFY_METRICS_PORT`` (or ``--metrics-port``; bind
  address ``SPARSIFY_METRICS_ADDR``, default all interfaces) for a PodMonitor;
* at the end (success and failure), a push of the final values to
  ``SPARSIFY_PUSHGATEWAY_URL`` grouped by ``namespace`` / ``experiment``
  (``SPARSIFY_EXPERIMENT_NAMESPACE``, ``SPARSIFY_EXPERIMENT_NAME``; defaults: ``default``
  and the experiment's name), since a finished Job cannot be scraped.

``from_environment(exp)`` picks the implementation. Every metric lives in the instance's
own ``CollectorRegistry``; labels take values from small fixed sets.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Report
    from .spec import Experiment

log = logging.getLogger("sparsify.runner")

NAMESPACE = "sparsify"
STAGES = (
    "pending",
    "fetch",
    "load",
    "baseline",
    "calibrate",
    "prune",
    "quantize",
    "train",
    "train-dense",
    "train-prune",
    "finetune",
    "qat",
    "export",
    "evaluate",
    "benchmark",
    "report",
    "publish",
    "succeeded",
    "failed",
    "other",
)
MAX_EVAL_METRICS = 16
PUSH_JOB = "sparsify-runner"


class Telemetry:
    """What a pathway reports while it runs. All methods are cheap and never raise."""

    def start(self) -> None:
        """Begin exporting (e.g. start the /metrics server)."""

    def stage(self, name: str) -> None:
        """Entering a named stage: load, baseline, prune, quantize, train, export, evaluate, ..."""
        log.info("stage: %s", name)

    def progress(self, fraction: float) -> None:
        """Overall progress of the run in [0, 1]."""

    def training_step(self, epoch: float, step: int, loss: float) -> None:
        """One optimizer step finished."""

    def evaluation(self, name: str, value: float) -> None:
        """An evaluation metric (accuracy, fidelity, ...) of the model being optimized."""

    def finish(
        self, report: Report | None, error: BaseException | None = None, exit_code: int | None = None
    ) -> None:
        """Run over (success when ``error`` is None): export final values, push, stop servers."""


def _env_port(value: str | int | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        port = int(value)
    except ValueError:
        log.warning("ignoring invalid metrics port %r", value)
        return None
    return port if 0 <= port < 65536 else None


class PrometheusTelemetry(Telemetry):
    """Prometheus metrics behind the ``Telemetry`` methods."""

    def __init__(
        self,
        *,
        experiment: str = "experiment",
        namespace: str = "default",
        experiment_type: str = "",
        use_case: str = "",
        port: int | None = None,
        addr: str = "0.0.0.0",
        pushgateway: str | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Info

        self.experiment, self.namespace = experiment, namespace
        self.port, self.addr, self.pushgateway = port, addr, pushgateway
        self.registry = reg = CollectorRegistry(auto_describe=True)
        self._server = None
        self._thread = None
        self._started_at = time.time()
        self._finished = False
        self._eval_names: set[str] = set()
        ns = NAMESPACE

        Info("run", "The experiment this runner works on.", registry=reg, namespace=ns).info(
            {"experiment": experiment, "namespace": namespace, "type": experiment_type, "use_case": use_case}
        )
        self.stage_enum = Enum(
            "stage", "Current stage of the run.", states=list(STAGES), registry=reg, namespace=ns
        )
        self.stage_enum.state("pending")
        self.stage_changes = Counter("stage_transitions", "Stages entered.", registry=reg, namespace=ns)
        self.stage_started = Gauge(
            "stage_start_timestamp_seconds", "When the current stage began.", registry=reg, namespace=ns
        )
        self.progress_ratio = Gauge(
            "progress_ratio", "Overall progress of the run (0..1).", registry=reg, namespace=ns
        )
        self.epoch = Gauge(
            "training_epoch", "Current (fractional) training epoch.", registry=reg, namespace=ns
        )
        self.step = Gauge("training_step", "Current optimizer step.", registry=reg, namespace=ns)
        self.steps = Counter(
            "training_steps", "Optimizer steps run by this process.", registry=reg, namespace=ns
        )
        self.loss = Gauge("training_loss", "Last training loss.", registry=reg, namespace=ns)
        self.eval = Gauge(
            "evaluation_metric",
            "Evaluation metrics of the model being optimized.",
            ["metric"],
            registry=reg,
            namespace=ns,
        )
        self.latency = Gauge(
            "model_latency_seconds",
            "Mean latency per batch on the target runtime.",
            ["model"],
            registry=reg,
            namespace=ns,
        )
        self.throughput = Gauge(
            "model_throughput_items_per_second",
            "Items per second on the target runtime.",
            ["model"],
            registry=reg,
            namespace=ns,
        )
        self.size = Gauge("model_size_bytes", "ONNX file size.", ["model"], registry=reg, namespace=ns)
        self.compressed = Gauge(
            "model_compressed_size_bytes",
            "gzip size of the ONNX file.",
            ["model"],
            registry=reg,
            namespace=ns,
        )
        self.sparsity = Gauge(
            "model_sparsity_ratio",
            "Fraction of zero weights in prunable layers.",
            ["model"],
            registry=reg,
            namespace=ns,
        )
        self.accuracy = Gauge(
            "model_accuracy_ratio", "Accuracy on the validation data.", ["model"], registry=reg, namespace=ns
        )
        self.speedup = Gauge(
            "speedup_ratio", "Baseline / optimized median latency.", registry=reg, namespace=ns
        )
        self.fidelity = Gauge(
            "fidelity_ratio", "Agreement of optimized outputs with the baseline.", registry=reg, namespace=ns
        )
        self.duration = Gauge(
            "run_duration_seconds", "Wall time of the run so far / in total.", registry=reg, namespace=ns
        )
        self.duration.set_function(lambda: time.time() - self._started_at)
        self.start_time = Gauge(
            "run_start_timestamp_seconds", "When the run began.", registry=reg, namespace=ns
        )
        self.start_time.set(self._started_at)
        self.end_time = Gauge("run_end_timestamp_seconds", "When the run ended.", registry=reg, namespace=ns)
        self.success = Gauge(
            "run_success", "1 when the run succeeded, 0 when it failed.", registry=reg, namespace=ns
        )
        self.exit_code = Gauge(
            "run_exit_code",
            "The runner's exit code (0 ok, 2 bad input, 75 transient, 1 internal, 143 preempted).",
            registry=reg,
            namespace=ns,
        )
        self.failures = Counter(
            "run_failures", "Failed runs by reason.", ["reason"], registry=reg, namespace=ns
        )
        for reason in ("InvalidInput", "TransientFailure", "InternalError", "Preempted"):
            self.failures.labels(reason)
        reg.register(_StorageCollector())

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self.port is None or self._server is not None:
            return
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(self.port, addr=self.addr, registry=self.registry)
            log.info("serving metrics on %s:%d/metrics", self.addr, self.bound_port)
        except OSError as err:
            log.warning("cannot serve metrics on port %s: %s", self.port, err)

    @property
    def bound_port(self) -> int | None:
        return self._server.server_address[1] if self._server is not None else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---- pathway calls -----------------------------------------------------------------
    def stage(self, name: str) -> None:
        super().stage(name)
        self._safe(self._stage, name)

    def _stage(self, name: str) -> None:
        self.stage_enum.state(name if name in STAGES else "other")
        self.stage_changes.inc()
        self.stage_started.set_to_current_time()

    def progress(self, fraction: float) -> None:
        self._safe(lambda: self.progress_ratio.set(min(1.0, max(0.0, float(fraction)))))

    def training_step(self, epoch: float, step: int, loss: float) -> None:
        def do() -> None:
            self.epoch.set(float(epoch))
            self.step.set(int(step))
            self.steps.inc()
            self.loss.set(float(loss))

        self._safe(do)

    def evaluation(self, name: str, value: float) -> None:
        def do() -> None:
            label = re.sub(r"[^a-z0-9_]+", "_", str(name).lower()).strip("_")[:40] or "metric"
            if label not in self._eval_names and len(self._eval_names) >= MAX_EVAL_METRICS:
                label = "other"
            self._eval_names.add(label)
            self.eval.labels(label).set(float(value))

        self._safe(do)

    def finish(
        self, report: Report | None, error: BaseException | None = None, exit_code: int | None = None
    ) -> None:
        if self._finished:
            return
        self._finished = True
        self._safe(self._final, report, error, exit_code)
        self._safe(self.push)
        self.stop()

    def _final(self, report: Report | None, error: BaseException | None, exit_code: int | None) -> None:
        ended = time.time()
        self.duration.set_function(lambda: ended - self._started_at)
        self.end_time.set(ended)
        if report is not None:
            self._report(report)
        if error is None:
            self.stage_enum.state("succeeded")
            self.progress_ratio.set(1.0)
            self.success.set(1)
            self.exit_code.set(0 if exit_code is None else exit_code)
        else:
            self.stage_enum.state("failed")
            self.success.set(0)
            self.exit_code.set(exit_code if exit_code is not None else getattr(error, "exit_code", 1))
            self.failures.labels(
                getattr(error, "reason", "InternalError")
                if getattr(error, "reason", None) in ("InvalidInput", "TransientFailure", "Preempted")
                else "InternalError"
            ).inc()

    def _report(self, report: Report) -> None:
        for label, stats in (("baseline", report.baseline), ("optimized", report.optimized)):
            self.size.labels(label).set(stats.file_size_bytes)
            self.compressed.labels(label).set(stats.compressed_size_bytes)
            self.sparsity.labels(label).set(stats.sparsity)
            if stats.accuracy is not None:
                self.accuracy.labels(label).set(stats.accuracy)
            if stats.latency is not None:
                self.latency.labels(label).set(stats.latency.mean_ms / 1000.0)
                self.throughput.labels(label).set(stats.latency.throughput_items_per_s)
        if report.speedup is not None:
            self.speedup.set(report.speedup)
        if report.fidelity is not None:
            value = report.fidelity.top1_agreement
            self.fidelity.set(value if value is not None else report.fidelity.cosine_similarity)

    def push(self) -> None:
        """Push the registry to the Pushgateway (replacing this experiment's group)."""
        if not self.pushgateway:
            return
        from prometheus_client import push_to_gateway

        push_to_gateway(
            self.pushgateway,
            job=PUSH_JOB,
            registry=self.registry,
            grouping_key={"namespace": self.namespace, "experiment": self.experiment},
            timeout=float(os.environ.get("SPARSIFY_PUSHGATEWAY_TIMEOUT", "10")),
        )
        log.info("pushed final metrics to the Pushgateway")

    @staticmethod
    def _safe(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as err:  # telemetry must never break a run
            from .storage.common import redact

            log.warning("telemetry: %s", redact(f"{type(err).__name__}: {err}"))


class _StorageCollector:
    """Exports the storage layer's transfer counters (``storage.stats``)."""

    NAMES = {
        "downloaded_bytes": "Bytes downloaded from remote storage.",
        "downloaded_objects": "Objects downloaded from remote storage.",
        "uploaded_bytes": "Bytes uploaded to remote storage.",
        "uploaded_objects": "Objects uploaded to remote storage.",
        "cache_hits": "Remote inputs served from the local cache.",
        "cache_misses": "Remote inputs that had to be downloaded.",
        "checkpoint_saves": "Checkpoint uploads to the output location.",
        "checkpoint_restores": "Checkpoints restored from the output location.",
    }

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        from .storage.common import stats

        for name, doc in self.NAMES.items():
            yield CounterMetricFamily(f"{NAMESPACE}_storage_{name}", doc, value=stats.get(name))

    def describe(self):
        return []


def from_environment(exp: Experiment | None = None, *, metrics_port: int | None = None) -> Telemetry:
    """``PrometheusTelemetry`` when a metrics port or a Pushgateway is configured, else the
    logging-only base."""
    port = metrics_port if metrics_port is not None else _env_port(os.environ.get("SPARSIFY_METRICS_PORT"))
    pushgateway = os.environ.get("SPARSIFY_PUSHGATEWAY_URL") or None
    if port is None and not pushgateway:
        return Telemetry()
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        log.warning("prometheus-client is not installed; metrics are off")
        return Telemetry()
    name = (
        os.environ.get("SPARSIFY_EXPERIMENT_NAME") or (exp.name if exp and exp.name else None) or "experiment"
    )
    return PrometheusTelemetry(
        experiment=name,
        namespace=os.environ.get("SPARSIFY_EXPERIMENT_NAMESPACE") or "default",
        experiment_type=exp.type.value if exp else "",
        use_case=exp.use_case if exp else "",
        port=port,
        addr=os.environ.get("SPARSIFY_METRICS_ADDR", "0.0.0.0"),
        pushgateway=pushgateway,
    )
