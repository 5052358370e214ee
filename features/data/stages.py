"""Stage configuration: the sales process as a user-editable YAML file, validated on load.

The default (the seed's six stages and hygiene thresholds) ships in ``features/data/stages.yaml``.
A user file replaces it whole; errors name the file and the key that is wrong.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from features.data.config import ConfigError, parse_yaml, read_yaml, validate
from features.data.schema import ActivityType, StakeholderRole
from features.errors import NotFoundError

__all__ = ["ConfigError", "StageConfig", "load_stage_config", "parse_stage_config"]

DEFAULT_STAGES_FILE = "stages.yaml"


class StageKind(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DurationRange(_Frozen):
    min: Annotated[int, Field(ge=0)]
    max: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _ordered(self) -> DurationRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self

    @property
    def norm(self) -> float:
        """The stage norm in days: the middle of the typical range (4-8 weeks -> 6 weeks)."""
        return (self.min + self.max) / 2


_REQUIREMENT = re.compile(r"^(stakeholder:|activity:|custom:)?[a-z][a-z0-9_]*$")


class RequiredField(_Frozen):
    field: str
    label: str

    @field_validator("field")
    @classmethod
    def _known_form(cls, value: str) -> str:
        if not _REQUIREMENT.match(value):
            raise ValueError(
                "must be a deals column, 'stakeholder:<role>', 'activity:<type>' or "
                f"'custom:<name>', got {value!r}"
            )
        kind, _, name = value.partition(":")
        if kind == "stakeholder" and name not in {r.value for r in StakeholderRole}:
            raise ValueError(f"unknown stakeholder role {name!r}")
        if kind == "activity" and name not in {a.value for a in ActivityType}:
            raise ValueError(f"unknown activity type {name!r}")
        return value


class Stage(_Frozen):
    key: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    label: str
    order: Annotated[int, Field(ge=1)]
    kind: StageKind
    win_probability: Annotated[float, Field(ge=0, le=1)]
    duration_days: DurationRange | None = None
    definition: str = ""
    exit_criteria: list[str] = []
    typical_actions: list[str] = []
    required_fields: list[RequiredField] = []

    @model_validator(mode="after")
    def _open_needs_duration(self) -> Stage:
        if self.kind is StageKind.OPEN and self.duration_days is None:
            raise ValueError("open stages need duration_days {min, max}")
        return self


class CategoryThreshold(_Frozen):
    min_probability: Annotated[float, Field(ge=0, le=1)]


class Range(_Frozen):
    min: float
    max: float


class Hygiene(_Frozen):
    no_activity_review_days: Annotated[int, Field(gt=0)] = 60
    stale_days: Annotated[int, Field(gt=0)] = 90
    cleanup_age_days: Annotated[int, Field(gt=0)] = 90
    time_in_stage_factor: Annotated[float, Field(gt=0)] = 1.5
    coverage_healthy: Range = Range(min=3.0, max=5.0)
    review_min_amount: Annotated[float, Field(ge=0)] = 100_000


class StageConfig(_Frozen):
    stages: list[Stage]
    forecast_categories: dict[str, CategoryThreshold] = {}
    hygiene: Hygiene = Hygiene()

    @model_validator(mode="after")
    def _consistent(self) -> StageConfig:
        keys = [s.key for s in self.stages]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"duplicate stage keys: {dupes}")
        orders = [s.order for s in self.stages]
        if len(set(orders)) != len(orders):
            raise ValueError("stage orders must be unique")
        kinds = [s.kind for s in self.stages]
        if kinds.count(StageKind.WON) != 1 or kinds.count(StageKind.LOST) != 1:
            raise ValueError("exactly one 'won' and one 'lost' stage are needed")
        if StageKind.OPEN not in kinds:
            raise ValueError("at least one 'open' stage is needed")
        return self

    # --- lookups -------------------------------------------------------------------------------
    @cached_property
    def by_key(self) -> dict[str, Stage]:
        return {s.key: s for s in self.stages}

    @property
    def open_stages(self) -> list[Stage]:
        """Open stages in process order."""
        return sorted((s for s in self.stages if s.kind is StageKind.OPEN), key=lambda s: s.order)

    @property
    def open_keys(self) -> list[str]:
        return [s.key for s in self.open_stages]

    @property
    def won_key(self) -> str:
        return next(s.key for s in self.stages if s.kind is StageKind.WON)

    @property
    def lost_key(self) -> str:
        return next(s.key for s in self.stages if s.kind is StageKind.LOST)

    def stage(self, key: str) -> Stage:
        try:
            return self.by_key[key]
        except KeyError:
            raise NotFoundError(f"unknown stage {key!r}; known: {list(self.by_key)}") from None

    def win_probability(self, key: str) -> float:
        return self.stage(key).win_probability

    def norm_days(self, key: str) -> float | None:
        d = self.stage(key).duration_days
        return d.norm if d else None


def parse_stage_config(data: Any, source: str = "<config>") -> StageConfig:
    """Validate already-parsed YAML data; ``source`` names the file in error messages."""
    return validate(StageConfig, data, source, "stage configuration", "stages")


def load_stage_config(path: str | Path | None = None) -> StageConfig:
    """Load a user stage file, or the packaged default when ``path`` is None."""
    if path is None:
        text = resources.files("features.data").joinpath(DEFAULT_STAGES_FILE).read_text()
        source = f"<default {DEFAULT_STAGES_FILE}>"
        return parse_stage_config(parse_yaml(text, source), source)
    return parse_stage_config(read_yaml(path, "stage configuration"), str(path))
