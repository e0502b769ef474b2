"""run_experiment: the one code path behind ``sparsify-runner run`` and ``sparsifyctl run``.

check output -> finished result already there? (return it) -> fetch inputs -> pathway
(writes model.onnx into a staging folder) -> Triton model repository -> report.json ->
atomic publish (marker last) -> termination message + final metrics. Every failure (bad
input, transient, crash, SIGTERM) writes the termination message and pushes final metrics
too, and nothing reaches the output location.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from . import model_repository, storage
from .context import RunContext
from .contract import RunSummary, write_termination_log
from .errors import EXIT_INTERNAL, EXIT_TERMINATED, InputError, SparsifyError, Terminated
from .report import Report
from .report_html import render_report_html
from .spec import Experiment, uri_scheme
from .storage.common import install_log_redaction, redact, redact_obj
from .telemetry import Telemetry, from_environment

log = logging.getLogger("sparsify.runner")

MODEL_FILE = "model.onnx"
MODEL_FOLDER = "model"  # text-generation ships a Hugging Face (compressed-tensors) folder instead
REPORT_FILE = "report.json"
HTML_REPORT_FILE = "report.html"
# What a run writes at the top of a local output folder: the pathway's files (model.onnx; the
# training pathways add model.pt or model-hf.tar and examples/), the serving layout, the
# reports, the completion marker, and the folders that publish and checkpoints work in.
PUBLISHED_NAMES = (
    MODEL_FILE,
    MODEL_FOLDER,
    "model.pt",
    "model-hf.tar",
    "examples",
    model_repository.REPOSITORY_DIR,
    REPORT_FILE,
    HTML_REPORT_FILE,
    storage.MARKER_FILE,
    storage.STAGING_DIRNAME,
    storage.CHECKPOINT_DIRNAME,
)
INPUT_FIELDS = ("model", "teacher", "data", "recipe", "catalog")  # each given with --<field>


def experiment_fingerprint(exp: Experiment) -> str:
    """Identifies the experiment spec in the completion marker (a retried run with the
    same spec reuses a finished result)."""
    wire = json.dumps(exp.to_wire(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(wire.encode()).hexdigest()


def _reuse_enabled(exp: Experiment) -> bool:
    """``SPARSIFY_REUSE_RESULT``: ``auto`` (default: s3 outputs, i.e. retried pods),
    ``1``/``always``, ``0``/``never``."""
    mode = os.environ.get("SPARSIFY_REUSE_RESULT", "auto").strip().lower()
    if mode in ("1", "true", "always", "yes"):
        return True
    if mode in ("0", "false", "never", "no"):
        return False
    return uri_scheme(exp.output) == "s3"


def _fetch_inputs(exp: Experiment, show_progress: bool) -> dict[str, Path | None]:
    from .named import resolve_data, resolve_model  # names (resnet50, sst2, ...) are not paths

    def opt(uri: str | None, what: str) -> Path | None:
        return storage.fetch(uri, what=what, show_progress=show_progress) if uri else None

    def model(uri: str | None, what: str) -> Path | None:
        return resolve_model(uri, exp, what=what) or opt(uri, what)

    return {
        "model_path": model(exp.model, "model"),
        "data_path": resolve_data(exp, show_progress=show_progress)
        or storage.fetch(exp.data, what="data", show_progress=show_progress),
        "teacher_path": model(exp.teacher, "teacher"),
        "recipe_path": opt(exp.recipe, "recipe"),
        "catalog_path": opt(exp.catalog, "catalog"),
    }


def check_inputs_kept(exp: Experiment) -> None:
    """InputError (one line, before any work) when publishing to a local output would write
    into an input folder (``--output`` is or is inside ``--data``) or over an input file
    (``--model ./model.onnx`` with the default ``--output .``). Real paths are compared, so
    relative paths and symlinks cannot hide the overlap."""
    if uri_scheme(exp.output) != "file":
        return
    root = Path(os.path.realpath(storage.local_path(exp.output)))
    inputs = []
    for field in INPUT_FIELDS:
        uri = getattr(exp, field)
        given = storage.local_path(uri) if uri and uri_scheme(uri) == "file" else None
        if given is not None and given.exists():
            inputs.append((f"--{field}", uri, given, Path(os.path.realpath(given))))
    for flag, uri, given, real in inputs:
        if real.is_dir() and root.is_relative_to(real):
            other = os.path.normpath(os.path.join(given, os.pardir, "sparsify-output"))
            raise InputError(
                f"--output '{exp.output}' would write into the {flag} folder '{uri}'; "
                f"pass --output to a folder outside it, e.g. --output {other}"
            )
    for flag, uri, _given, real in inputs:
        for name in PUBLISHED_NAMES:
            if real.is_relative_to(os.path.realpath(root / name)):
                other = os.path.normpath(os.path.join(storage.local_path(exp.output), "sparsify-output"))
                raise InputError(
                    f"--output '{exp.output}' would overwrite the {flag} input '{uri}'; "
                    f"pass --output to a new folder, e.g. --output {other}"
                )


def _existing_result(output: storage.OutputLocation, fingerprint: str) -> Report | None:
    if output.completed(fingerprint) is None:
        return None
    text = output.read_text(REPORT_FILE)
    if text is None:
        return None
    try:
        return Report.model_validate_json(text)
    except ValueError:
        log.warning(
            "finished result at %s has an unreadable %s; running again", redact(output.uri), REPORT_FILE
        )
        return None


def run_experiment(
    exp: Experiment,
    *,
    telemetry: Telemetry | None = None,
    show_progress: bool = True,
    termination_log: str | None = None,
    metrics_port: int | None = None,
) -> Report:
    """Run one experiment end to end; raise SparsifyError (with exit_code) on failure."""
    from .pathways import get_pathway  # lazy: heavy imports live in the pathways

    install_log_redaction()
    telemetry = telemetry or from_environment(exp, metrics_port=metrics_port)
    telemetry.start()
    try:
        with _sigterm_guard(telemetry, termination_log):
            telemetry.stage("fetch")
            output = storage.OutputLocation(exp.output)
            output.check()
            check_inputs_kept(exp)
            fingerprint = experiment_fingerprint(exp)
            if _reuse_enabled(exp):
                existing = _existing_result(output, fingerprint)
                if existing is not None:
                    log.warning(
                        "a finished result of this experiment is already at %s; not running again",
                        redact(exp.output),
                    )
                    existing.notes.append("reused the finished result found at the output location")
                    write_termination_log(existing.summary(), termination_log)
                    telemetry.finish(existing)
                    return existing
            inputs = _fetch_inputs(exp, show_progress)
            pathway = get_pathway(exp.type)
            with tempfile.TemporaryDirectory(prefix="sparsify-staging-") as staging_name:
                staging = Path(staging_name)
                ctx = RunContext(
                    experiment=exp,
                    work_dir=staging,
                    checkpoint_dir=output.checkpoint_dir,
                    telemetry=telemetry,
                    show_progress=show_progress,
                    save_checkpoints=output.save_checkpoints,
                    **inputs,
                )
                started = time.perf_counter()
                report = pathway(ctx)
                report.timings_s["total"] = round(time.perf_counter() - started, 3)
                model_name = MODEL_FILE if (staging / MODEL_FILE).is_file() else MODEL_FOLDER
                if not (staging / model_name).exists():
                    raise SparsifyError(f"the {exp.type.value} pathway produced no {MODEL_FILE}")
                report.experiment = redact_obj(report.experiment)
                report.artifacts.update(
                    {"model": output.uri_for(model_name), "report": output.uri_for(REPORT_FILE)}
                )
                if model_name == MODEL_FILE and model_repository.add_to_staging(  # Triton/KServe layout
                    staging, MODEL_FILE, experiment_name=exp.name, batch_size=exp.deploy.batch_size
                ):
                    report.artifacts["serving"] = output.uri_for(model_repository.REPOSITORY_DIR)
                elif model_name == MODEL_FOLDER:  # a Hugging Face folder: KServe's Hugging Face runtime
                    report.artifacts["serving"] = output.uri_for(MODEL_FOLDER)
                report.artifacts["html"] = output.uri_for(HTML_REPORT_FILE)
                html = _render_html(report)
                (staging / REPORT_FILE).write_text(report.model_dump_json(indent=2), encoding="utf-8")
                if html is not None:
                    (staging / HTML_REPORT_FILE).write_text(html, encoding="utf-8")
                telemetry.stage("publish")
                output.publish(
                    staging,
                    order=[MODEL_FILE, HTML_REPORT_FILE, REPORT_FILE],
                    fingerprint=fingerprint,
                    show_progress=show_progress,
                )
            try:
                output.clear_checkpoints()
            except SparsifyError as err:  # the result is published; stale checkpoints are harmless
                log.warning("could not remove checkpoints: %s", err)
            write_termination_log(report.summary(), termination_log)
            telemetry.finish(report)
            return report
    except SparsifyError as err:
        _fail(err, err.exit_code, err.reason, telemetry, termination_log)
        raise
    except KeyboardInterrupt as err:
        _fail(err, 130, "Interrupted", telemetry, termination_log)
        raise
    except Exception as err:
        _fail(err, EXIT_INTERNAL, "InternalError", telemetry, termination_log)
        raise


def _render_html(report: Report) -> str | None:
    """report.html for the run. A rendering bug must not cost a finished run: it is logged,
    noted in report.json and the rest is published (tests assert the file is there)."""
    try:
        return render_report_html(report)
    except Exception as err:
        log.exception("could not render %s; publishing the run without it", HTML_REPORT_FILE)
        report.artifacts.pop("html", None)
        report.notes.append(
            f"{HTML_REPORT_FILE} could not be rendered ({type(err).__name__}: {err}); "
            "the other results are complete"
        )
        return None


def _fail(err: BaseException, code: int, reason: str, telemetry: Telemetry, path: str | None) -> None:
    text = str(err) if isinstance(err, SparsifyError) else f"{type(err).__name__}: {err}"
    summary = RunSummary(status="failed", exit_code=code, reason=reason, error=redact(text.strip()) or reason)
    write_termination_log(summary, path)
    telemetry.finish(None, err, exit_code=code)


def fail_before_run(err: SparsifyError, termination_log: str | None) -> None:
    """A failure before there is an experiment (unreadable spec): termination message and,
    when configured, a Pushgateway push of the failure."""
    _fail(err, err.exit_code, err.reason, from_environment(None, metrics_port=None), termination_log)


@contextlib.contextmanager
def _sigterm_guard(telemetry: Telemetry, termination_log: str | None) -> Iterator[None]:
    """SIGTERM (preemption, ``kubectl delete``) -> ``Terminated`` (exit 143) with the
    termination message written and metrics pushed.

    The Python handler sets the stop flag of ``signals`` (a training loop that polls it
    saves a checkpoint first; it installs its own handler while it runs) and raises in the
    main thread. Python handlers only run between bytecodes, so a main thread busy in
    native code would miss the deadline: the signal's wakeup fd, read by a watcher thread,
    arms a watchdog that writes the same message and exits 143 if the run has not ended
    ``SPARSIFY_STOP_GRACE_SECONDS`` (default 90, under the operator's 120 s grace period)
    after the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from . import signals

    done = threading.Event()
    lock = threading.Lock()
    timers: list[threading.Timer] = []
    grace = float(os.environ.get("SPARSIFY_STOP_GRACE_SECONDS", "90"))

    def force_exit() -> None:
        if done.is_set():
            return
        err = Terminated(
            f"stopped by SIGTERM: the run did not stop within {grace:g} s (busy in native code), so it "
            "was ended; the retry resumes from the last checkpoint"
        )
        _fail(err, EXIT_TERMINATED, err.reason, telemetry, termination_log)
        os._exit(EXIT_TERMINATED)

    def arm() -> None:
        signals.request_stop()
        with lock:
            if not timers and not done.is_set():
                timer = threading.Timer(grace, force_exit)
                timer.daemon = True
                timer.start()
                timers.append(timer)

    def handler(signum, frame) -> None:  # noqa: ARG001
        arm()
        raise Terminated(
            "stopped by SIGTERM (preempted or deleted) before finishing; "
            "the retry resumes from the last checkpoint"
        )

    reader, writer = socket.socketpair()
    writer.setblocking(False)

    def watch() -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                arm()

    previous = signal.signal(signal.SIGTERM, handler)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=watch, name="sigterm-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()
        for timer in timers:
            timer.cancel()
        with contextlib.suppress(Exception):
            signal.set_wakeup_fd(previous_fd)
            signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(OSError):
            writer.shutdown(socket.SHUT_RDWR)
        writer.close()
        reader.close()
