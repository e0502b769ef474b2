"""The ``SparsifySweep`` custom resource: one experiment template, a grid of optim levels.

A separate kind (not a field of ``SparsifyExperiment``) so that an experiment stays exactly
one Job and one result; the sweep owns one child ``SparsifyExperiment`` per point. The
per-point and aggregate status shapes and the objective are the runner's
(``sparsify_runner.sweep``), so ``sparsifyctl sweep`` and the operator report the same way.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from sparsify_runner.sweep import (
    MAX_LEVELS,
    SweepBest,
    SweepObjective,
    SweepPareto,
    SweepPoint,
    level_token,
)

from .models import GROUP, VERSION, Condition, SparsifyExperimentSpec

SWEEP_KIND = "SparsifySweep"
SWEEP_PLURAL = "sparsifysweeps"
SWEEP_SINGULAR = "sparsifysweep"
SWEEP_SHORT_NAMES = ["ssw"]
LABEL_SWEEP = f"{GROUP}/sweep"
API_VERSION = f"{GROUP}/{VERSION}"


class SweepReason(StrEnum):
    """``status.reason`` of a finished sweep and the sweep's own Event reasons (a sweep still
    pending or running has its phase as reason)."""

    ALL_SUCCEEDED = "AllSucceeded"
    SOME_FAILED = "SomeFailed"
    ALL_FAILED = "AllFailed"
    INVALID_SPEC = "InvalidSpec"
    CHILD_CREATED = "ChildCreated"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)


class SparsifySweepSpec(_Model):
    template: SparsifyExperimentSpec = Field(
        description="The experiment every point runs; experiment.optimLevel, .structure, .output and "
        ".name are set per point (output: <template output>/<point name>)."
    )
    optim_levels: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        min_length=1, max_length=MAX_LEVELS, description="Optim levels to try (0..1, distinct)."
    )
    structures: list[Literal["unstructured", "channels"]] | None = Field(
        None, max_length=2, description="Structures to try (default: the template's)."
    )
    parallelism: int = Field(2, ge=1, le=100, description="Child experiments running or pending at once.")
    objective: SweepObjective = Field(default_factory=SweepObjective)

    @field_validator("optim_levels")
    @classmethod
    def _levels(cls, value: list[float]) -> list[float]:
        for v in value:
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"optim level {v:g} is out of range; use values from 0 to 1")
        tokens = [level_token(v) for v in value]
        if len(set(tokens)) != len(tokens):
            raise ValueError("optim levels must be distinct and at least 0.01 apart")
        return value

    @field_validator("structures")
    @classmethod
    def _structures(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("structures must not repeat")
        return value or None

    def grid_structures(self) -> list[str]:
        return list(self.structures or [self.template.experiment.structure])


class SparsifySweepStatus(_Model):
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] | None = None
    reason: str | None = None
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    points: list[SweepPoint] = Field(default_factory=list)
    best: SweepBest | None = None
    pareto: SweepPareto | None = None
    summary: str | None = Field(None, description="e.g. '3/3 succeeded'")


class SparsifySweep(_Model):
    api_version: Literal["sparsify.dev/v1alpha1"] = API_VERSION
    kind: Literal["SparsifySweep"] = SWEEP_KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SparsifySweepSpec
    status: SparsifySweepStatus | None = None
