"""Load and validate ``rules/*.toml`` into a RuleSet, naming the file, the rule and the key of
every problem (``rules/20-route.toml: routing[1] "invoices": when.any[0].field: unknown field``).

Files load in name order; within a file, rules keep their order. Creation rules and routing
rules each form one ordered list in which the first match wins. Queue and agent names are
checked against the configuration, so a typo fails at start-up and in ``maild rules check``,
never in the middle of processing mail.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from maild.errors import ConfigError
from maild.rules import conditions
from maild.rules.conditions import SEPARATOR, Condition
from maild.rules.loader_base import Model, RuleBase
from maild.rules.slaspec import SlaRule, SlaSpec

CreationAction = Literal["create", "append_only", "ignore", "quarantine"]
Priority = Literal["low", "normal", "high", "urgent"]
TITLE_FIELDS = ("subject", "from", "queue")


class RuleFileError(ConfigError):
    """One or more problems in rule files; ``problems`` lists each as file: rule: key: problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class FieldSettings(Model):
    """Fields a creation rule sets on the new case."""

    priority: Priority | Literal["from_headers"] | None = None
    severity: str | None = Field(default=None, max_length=20)
    origin: Literal["email", "phone", "web", "chat"] | None = None
    title: str | None = Field(default=None, max_length=500)
    subject: str | None = None  # a path from the subject tree: "Billing > Refund"
    # A sender new to the customer records also gets an account for their company domain.
    account_from_domain: bool = False
    # The acknowledgement suggests up to this many published knowledge articles (maild.knowledge).
    suggest_articles: int = Field(default=0, ge=0, le=10)

    @field_validator("title")
    @classmethod
    def _title_placeholders(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format_map({k: "" for k in TITLE_FIELDS})
            except (KeyError, ValueError, IndexError) as exc:
                raise ValueError(f"placeholders may be {', '.join('{' + k + '}' for k in TITLE_FIELDS)}: {exc}") from None
        return value


class CreationSpec(RuleBase):
    action: CreationAction = "create"
    reason: str | None = None
    set: FieldSettings = FieldSettings()


class RoutingSpec(RuleBase):
    queue: str | None = None
    owner: str | None = None  # an agent
    team: str | None = None  # or a team: one of its agents, by the team's assignment method
    priority: Priority | None = None
    subject: str | None = None


class RuleFile(Model):
    subjects: tuple[str, ...] = ()  # the subject tree, one path per entry
    creation: tuple[dict[str, Any], ...] = ()
    routing: tuple[dict[str, Any], ...] = ()
    sla: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class CreationRule:
    spec: CreationSpec
    condition: Condition | None
    origin: str  # "rules/10-create.toml creation[0]"


@dataclass(frozen=True)
class RoutingRule:
    spec: RoutingSpec
    condition: Condition | None
    origin: str


@dataclass(frozen=True)
class RuleSet:
    creation: tuple[CreationRule, ...] = ()
    routing: tuple[RoutingRule, ...] = ()
    files: tuple[Path, ...] = ()
    subjects: tuple[str, ...] = ()  # every path of the tree, parents included, in file order
    slas: tuple[SlaRule, ...] = ()  # the first that applies to a new case is its SLA

    @cached_property
    def fields_tested(self) -> frozenset[str]:
        """Every fact some rule's condition looks at: intake reads from the database only those."""
        found = [c.condition for c in self.creation] + [r.condition for r in self.routing] \
            + [s.condition for s in self.slas]
        return frozenset().union(*(conditions.fields(c) for c in found))


def load(directory: Path, *, queues: Iterable[str], agents: Iterable[str], teams: Iterable[str] = (),
         statuses: Iterable[str] = ()) -> RuleSet:
    """Every ``*.toml`` in ``directory`` (a missing folder means no rules); raises RuleFileError."""
    files = sorted(directory.glob("*.toml")) if directory.is_dir() else []
    known = _Known(set(queues), set(agents), set(teams))
    problems: list[str] = []
    creation: list[CreationRule] = []
    routing: list[RoutingRule] = []
    slas: list[SlaRule] = []
    subjects = _subjects(files, problems)
    known = _Known(known.queues, known.agents, known.teams, set(subjects), set(statuses))
    for path in files:
        c, r, s, errs = _load_file(path, known)
        creation += c
        routing += r
        slas += s
        problems += errs
    if problems:
        raise RuleFileError(problems)
    return RuleSet(tuple(creation), tuple(routing), tuple(files), tuple(subjects), tuple(slas))


def _subjects(files: list[Path], problems: list[str]) -> list[str]:
    """Every subject path with its parents, in the order the files give them."""
    found: dict[str, None] = {}
    for path in files:
        try:
            listed = tomllib.loads(path.read_text(encoding="utf-8")).get("subjects", [])
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
            continue  # reported with the file's other problems
        for i, entry in enumerate(listed if isinstance(listed, list) else []):
            parts = [p.strip() for p in str(entry).split(">")]
            if not all(parts) or any(len(p) > 200 for p in parts):
                problems.append(f"{path.parent.name}/{path.name}: subjects[{i}]: {entry!r} is not a path like "
                                "\"Billing > Refund\" (empty or over-long level)")
                continue
            for depth in range(1, len(parts) + 1):
                found[SEPARATOR.join(parts[:depth])] = None
    return list(found)


@dataclass(frozen=True)
class _Known:
    queues: set[str]
    agents: set[str]
    teams: set[str]
    subjects: set[str] = field(default_factory=set)
    reasons: set[str] = field(default_factory=set)  # Active status reasons an SLA may pause on


def _load_file(path: Path, known: _Known) -> tuple[list[CreationRule], list[RoutingRule], list[SlaRule], list[str]]:
    shown = f"{path.parent.name}/{path.name}"
    try:
        data = RuleFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except tomllib.TOMLDecodeError as exc:
        return [], [], [], [f"{shown}: not valid TOML: {exc}"]
    except ValidationError as exc:
        return [], [], [], [f"{shown}: {_loc(e['loc'])}: {_msg(e)}" for e in exc.errors()]
    except (OSError, UnicodeDecodeError) as exc:
        return [], [], [], [f"{shown}: cannot read: {exc}"]
    problems: list[str] = []
    creation = [r for i, raw in enumerate(data.creation)
                if (r := _rule(CreationSpec, CreationRule, raw, f"{shown}", f"creation[{i}]", known, problems))]
    routing = [r for i, raw in enumerate(data.routing)
               if (r := _rule(RoutingSpec, RoutingRule, raw, f"{shown}", f"routing[{i}]", known, problems))]
    slas = [r for i, raw in enumerate(data.sla)
            if (r := _rule(SlaSpec, SlaRule, raw, f"{shown}", f"sla[{i}]", known, problems))]
    return creation, routing, slas, problems


def _rule(spec_type: type[RuleBase], rule_type: type[Any], raw: dict[str, Any], shown: str, index: str, known: _Known,
          problems: list[str]) -> Any:
    label = f"{shown}: {index}" + (f" {raw['name']!r}" if isinstance(raw.get("name"), str) else "")
    try:
        spec = spec_type.model_validate(raw)
    except ValidationError as exc:
        problems += [f"{label}: {_loc(e['loc'])}: {_msg(e)}" for e in exc.errors()]
        return None
    errors = _references(spec, known)
    try:
        condition = None if spec.when is None else conditions.parse(spec.when)
    except conditions.ConditionError as exc:
        errors.append(str(exc))
        condition = None
    problems += [f"{label}: {e}" for e in errors]
    return None if errors else rule_type(spec, condition, f"{shown} {index}")


def _references(spec: RuleBase, known: _Known) -> list[str]:
    errors = [f"queues: unknown queue {q!r}; configured: {', '.join(sorted(known.queues))}"
              for q in spec.queues if q not in known.queues]
    subject = spec.set.subject if isinstance(spec, CreationSpec) else getattr(spec, "subject", None)
    if subject is not None and subject not in known.subjects:
        key = "set.subject" if isinstance(spec, CreationSpec) else "subject"
        errors.append(f"{key}: unknown subject {subject!r}; add it to a `subjects` list in a rule file")
    if isinstance(spec, SlaSpec):
        errors += [f"pause_on: {r!r} is not an Active status reason; known: {', '.join(sorted(known.reasons))}"
                   for r in spec.pause_on if known.reasons and r not in known.reasons]
        errors += [f"{key}: unknown queue {a.move_to_queue!r}" for key, actions in
                   (("on_warning", spec.on_warning), ("on_failure", spec.on_failure))
                   for a in actions if a.move_to_queue is not None and a.move_to_queue not in known.queues]
    if isinstance(spec, RoutingSpec):
        if spec.queue is not None and spec.queue not in known.queues:
            errors.append(f"queue: unknown queue {spec.queue!r}; configured: {', '.join(sorted(known.queues))}")
        if spec.owner is not None and spec.owner not in known.agents:
            errors.append(f"owner: unknown agent {spec.owner!r}; configured agents: "
                          f"{', '.join(sorted(known.agents)) or 'none'}")
        if spec.team is not None and spec.team not in known.teams:
            errors.append(f"team: unknown team {spec.team!r}; configured teams: {', '.join(sorted(known.teams)) or 'none'}")
        if spec.team is not None and spec.owner is not None:
            errors.append("owner: give an owner or a team, not both")
        if spec.queue is None and spec.owner is None and spec.team is None and spec.priority is None \
                and spec.subject is None:
            errors.append("a routing rule sets at least one of queue, owner, team, priority, subject")
    return errors


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def _msg(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return str(error["msg"])
