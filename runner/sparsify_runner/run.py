"""run_experiment: the one code path behind ``sparsify-runner run`` and ``sparsifyctl run``.

resolve inputs -> pathway (writes model.onnx into a staging folder) -> report.json ->
atomic publish -> termination message + final metrics. Failures write the termination
message too, and nothing reaches the output location.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from . import storage
from .context import RunContext
from .contract import RunSummary, write_termination_log
from .errors import EXIT_INTERNAL, SparsifyError
from .report import Report
from .spec import Experiment
from .telemetry import Telemetry

log = logging.getLogger("sparsify.runner")

MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"


def _fetch_inputs(exp: Experiment) -> dict[str, Path | None]:
    def opt(uri: str | None, what: str) -> Path | None:
        return storage.fetch(uri, what=what) if uri else None

    return {
        "model_path": opt(exp.model, "model"),
        "data_path": storage.fetch(exp.data, what="data"),
        "teacher_path": opt(exp.teacher, "teacher"),
        "recipe_path": opt(exp.recipe, "recipe"),
        "catalog_path": opt(exp.catalog, "catalog"),
    }


def run_experiment(
    exp: Experiment,
    *,
    telemetry: Telemetry | None = None,
    show_progress: bool = True,
    termination_log: str | None = None,
) -> Report:
    """Run one experiment end to end; raise SparsifyError (with exit_code) on failure."""
    from .pathways import get_pathway  # lazy: heavy imports live in the pathways

    telemetry = telemetry or Telemetry()
    telemetry.start()
    report: Report | None = None
    try:
        output = storage.OutputLocation(exp.output)
        inputs = _fetch_inputs(exp)
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
            if not (staging / MODEL_FILE).is_file():
                raise SparsifyError(f"the {exp.type.value} pathway produced no {MODEL_FILE}")
            report.artifacts.update(
                {"model": output.uri_for(MODEL_FILE), "report": output.uri_for(REPORT_FILE)}
            )
            (staging / REPORT_FILE).write_text(report.model_dump_json(indent=2), encoding="utf-8")
            output.publish(staging, order=[MODEL_FILE, REPORT_FILE])
        output.clear_checkpoints()
        write_termination_log(report.summary(), termination_log)
        telemetry.finish(report)
        return report
    except SparsifyError as err:
        _fail(err, err.exit_code, err.reason, telemetry, termination_log)
        raise
    except Exception as err:
        _fail(err, EXIT_INTERNAL, "InternalError", telemetry, termination_log)
        raise


def _fail(err: BaseException, code: int, reason: str, telemetry: Telemetry, path: str | None) -> None:
    summary = RunSummary(status="failed", exit_code=code, reason=reason, error=str(err) or type(err).__name__)
    write_termination_log(summary, path)
    telemetry.finish(None, err)

