"""RunContext: everything a pathway needs, already resolved to local files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .spec import Experiment
from .telemetry import Telemetry


@dataclass
class RunContext:
    experiment: Experiment
    data_path: Path
    work_dir: Path
    """Staging folder: the pathway writes ``model.onnx`` (and any extra artifacts) here;
    the runner publishes it atomically to the output location afterwards."""
    checkpoint_dir: Path
    """Local folder for resumable checkpoints; ``save_checkpoints()`` persists it."""
    model_path: Path | None = None
    teacher_path: Path | None = None
    recipe_path: Path | None = None
    catalog_path: Path | None = None
    telemetry: Telemetry = field(default_factory=Telemetry)
    show_progress: bool = True
    save_checkpoints: Callable[[], None] = lambda: None
    """Copy ``checkpoint_dir`` to the output location (no-op when it already lives there)."""
