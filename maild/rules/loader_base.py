"""The pydantic bases every rule-file table shares: unknown keys are errors, values frozen."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleBase(Model):
    name: str = Field(min_length=1, max_length=200)
    when: Any = None  # validated by conditions.parse, which names the exact key
    queues: tuple[str, ...] = ()  # empty: every queue
