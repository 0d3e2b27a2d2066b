"""SLA definitions in rule files: which cases they cover, their KPIs, when the clocks pause,
and what happens on warning and on failure. Checked when the files load, like the rules.

    [[sla]]
    name = "gold"
    when = { field = "customer_tier", equals = "gold" }     # applicability; none: every case
    pause_on = ["Waiting for Details", "On Hold"]
    first_response = { warn_after = "10m", fail_after = "15m" }
    resolve_by = { warn_after = "6h", fail_after = "8h" }
    on_warning = [ { notify = "owner" } ]
    on_failure = [ { raise_priority = "urgent" }, { move_to_queue = "escalations" },
                   { notify = "lead@example.test" } ]

Durations count business time (``[business_hours]``): ``15m``, ``8h``, ``1h30m``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from maild.rules.conditions import Condition
from maild.rules.loader_base import Model, RuleBase

KPIS = ("first_response", "resolve_by")
_DURATION = re.compile(r"^(?:(\d+)h)?\s*(?:(\d+)m)?$")


def parse_duration(text: str) -> timedelta:
    m = _DURATION.match(text.strip().lower())
    if not text.strip() or not m or not any(m.groups()):
        raise ValueError(f"expected a duration like 15m, 8h or 1h30m, got {text!r}")
    return timedelta(hours=int(m.group(1) or 0), minutes=int(m.group(2) or 0))


class KpiSpec(Model):
    warn_after: str
    fail_after: str

    @field_validator("warn_after", "fail_after")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _order(self) -> KpiSpec:
        if parse_duration(self.warn_after) >= parse_duration(self.fail_after):
            raise ValueError(f"warn_after ({self.warn_after}) must come before fail_after ({self.fail_after})")
        return self

    @property
    def warn(self) -> timedelta:
        return parse_duration(self.warn_after)

    @property
    def fail(self) -> timedelta:
        return parse_duration(self.fail_after)


class ActionSpec(Model):
    """One thing to do on warning or failure; exactly one of the keys."""

    # "owner" (the case's agent), "queue" (the queue's `notify` addresses in config), or an
    # address such as a supervisor's; never a queue address, which would come back in as mail.
    notify: str | None = None
    template: str | None = None  # for notify; default sla_warning / sla_failure
    raise_priority: Literal["low", "normal", "high", "urgent"] | None = None
    move_to_queue: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ActionSpec:
        given = [k for k in ("notify", "raise_priority", "move_to_queue") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"an action has exactly one of notify, raise_priority, move_to_queue (found {given})")
        if self.notify is not None and self.notify not in ("owner", "queue") and "@" not in self.notify:
            raise ValueError(f"notify: \"owner\", \"queue\" or an email address, got {self.notify!r}")
        return self


class SlaSpec(RuleBase):
    pause_on: tuple[str, ...] = ()
    first_response: KpiSpec | None = None
    resolve_by: KpiSpec | None = None
    on_warning: tuple[ActionSpec, ...] = ()
    on_failure: tuple[ActionSpec, ...] = Field(default=())

    @model_validator(mode="after")
    def _some_kpi(self) -> SlaSpec:
        if self.first_response is None and self.resolve_by is None:
            raise ValueError("an SLA has at least one KPI: first_response or resolve_by")
        return self

    def kpi(self, name: str) -> KpiSpec | None:
        return self.first_response if name == "first_response" else self.resolve_by


@dataclass(frozen=True)
class SlaRule:
    spec: SlaSpec
    condition: Condition | None
    origin: str
