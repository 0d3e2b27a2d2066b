"""Run a RuleSet over the facts of one message: a pure function, so ``maild rules test`` and
``rules replay`` show exactly what intake will do.

Creation rules decide what a message does (create a case, only append, ignore, quarantine)
and which fields a new case gets; routing rules then pick the queue, owner and priority.
In both lists the first matching rule wins; a rule limited to some queues is skipped for
the others. Every rule looked at leaves a line in the trace, condition by condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from maild.rules import conditions
from maild.rules.facts import Facts
from maild.rules.loader import CreationAction, CreationRule, FieldSettings, RoutingRule, RuleSet


@dataclass(frozen=True)
class Hit:
    """One rule that was looked at: whether it matched, and why."""

    kind: str  # creation | routing
    name: str
    origin: str
    matched: bool
    why: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rule": self.name, "origin": self.origin, "matched": self.matched,
                "conditions": list(self.why)}


@dataclass(frozen=True)
class RuleResult:
    action: CreationAction = "create"
    creation_rule: str | None = None
    reason: str | None = None
    fields: FieldSettings = FieldSettings()
    routing_rule: str | None = None
    queue: str | None = None
    owner: str | None = None
    priority: str | None = None
    team: str | None = None
    subject: str | None = None  # a subject path: the creation rule's, unless routing sets one
    trace: tuple[Hit, ...] = field(default=())

    def matched(self) -> list[dict[str, Any]]:
        """The rules that matched, for storing with the case's first activity."""
        return [h.as_dict() for h in self.trace if h.matched]


def evaluate(rules: RuleSet, facts: Facts, queue: str, *, explain: bool = False) -> RuleResult:
    """The first matching creation and routing rules. The trace holds the matched rules,
    and with ``explain`` every rule looked at (for ``maild rules test``)."""
    trace: list[Hit] = []
    created = _first(rules.creation, facts, queue, "creation", trace, explain)
    if isinstance(created, CreationRule) and created.spec.set.subject:
        # Routing sees the subject the creation rule just gave the new case.
        facts = facts.with_value("case_subject", created.spec.set.subject)
    routed = _first(rules.routing, facts, queue, "routing", trace, explain)
    result = RuleResult(trace=tuple(trace))
    if isinstance(created, CreationRule):
        s = created.spec
        result = RuleResult(s.action, s.name, s.reason or f"rule {s.name!r}", s.set, subject=s.set.subject,
                            trace=tuple(trace))
    if isinstance(routed, RoutingRule):
        r = routed.spec
        result = replace(result, routing_rule=r.name, queue=r.queue, owner=r.owner, priority=r.priority, team=r.team,
                         subject=r.subject or result.subject)
    return result


def _first(rules: tuple[Any, ...], facts: Facts, queue: str, kind: str, trace: list[Hit], explain: bool) -> Any:
    for rule in rules:
        if rule.spec.queues and queue not in rule.spec.queues:
            continue
        if rule.condition is not None and not explain and not conditions.holds(rule.condition, facts):
            continue  # the fast path: a miss needs no explanation
        ok, why = (True, ["always"]) if rule.condition is None else conditions.check(rule.condition, facts)
        trace.append(Hit(kind, rule.spec.name, rule.origin, ok, tuple(why)))
        if ok:
            return rule
    return None
