"""The rule condition language: parsed and checked once when a rule file loads, then evaluated
as pure data. There is no ``eval``: a condition is a tree of the nodes below.

In TOML a condition is an inline table:

    { field = "from_domain", in = ["bigco.example", "bigco.test"] }
    { field = "subject", matches = "(?i)invoice|refund" }
    { field = "header:X-Priority", starts_with = "1" }
    { field = "case_subject", under = "Billing" }      (Billing and every subject below it)
    { all = [ {...}, {...} ] }     { any = [ {...}, {...} ] }     { not = {...} }

Text comparisons ignore case unless ``case_sensitive = true``; ``matches`` is a Python
regular expression (its pattern is limited in size and compiled at load). A test on a
list field (to, cc) holds when it holds for any of its values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from maild.rules.facts import FIELDS, Facts, Value

OPERATORS = ("equals", "contains", "starts_with", "matches", "in", "under")
SEPARATOR = " > "  # between the levels of a subject path: "Billing > Refund"
MAX_PATTERN = 1000  # characters: long enough for real rules, short enough to review
MAX_DEPTH = 8


class ConditionError(ValueError):
    """A condition that cannot be used; ``where`` is its key path inside the rule."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


@dataclass(frozen=True)
class Test:
    field: str
    op: str
    value: Any  # str, bool, tuple of str, or a compiled pattern
    case_sensitive: bool = False

    def describe(self) -> str:
        shown = self.value.pattern if isinstance(self.value, re.Pattern) else self.value
        if isinstance(shown, tuple):
            shown = list(shown)
        return f"{self.field} {self.op} {shown!r}"


@dataclass(frozen=True)
class AllOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


Condition = Union[Test, AllOf, AnyOf, Not]


def parse(raw: Any, where: str = "when", depth: int = 0) -> Condition:
    """Turn the TOML table ``raw`` into a condition, or raise ConditionError naming the key."""
    if not isinstance(raw, Mapping):
        raise ConditionError(where, f"expected a table like {{ field = \"subject\", contains = \"...\" }}, got {raw!r}")
    if depth > MAX_DEPTH:
        raise ConditionError(where, f"conditions nest deeper than {MAX_DEPTH} levels")
    combinators = [k for k in ("all", "any", "not") if k in raw]
    if combinators:
        if len(raw) != 1:
            raise ConditionError(where, f"'{combinators[0]}' must be the only key of its table, found {sorted(raw)}")
        return _combinator(combinators[0], raw[combinators[0]], f"{where}.{combinators[0]}", depth)
    return _test(raw, where)


def _combinator(kind: str, value: Any, where: str, depth: int) -> Condition:
    if kind == "not":
        return Not(parse(value, where, depth + 1))
    if not isinstance(value, list) or not value:
        raise ConditionError(where, "expected a non-empty list of conditions")
    items = tuple(parse(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    return AllOf(items) if kind == "all" else AnyOf(items)


def _test(raw: Mapping[str, Any], where: str) -> Test:
    unknown = set(raw) - {"field", "case_sensitive", *OPERATORS}
    if unknown:
        raise ConditionError(f"{where}.{sorted(unknown)[0]}",
                             f"unknown key; a test has 'field', one of {', '.join(OPERATORS)}, and 'case_sensitive'")
    name = raw.get("field")
    if not isinstance(name, str):
        raise ConditionError(f"{where}.field", "required: the field to test, e.g. \"subject\" or \"header:X-Priority\"")
    kind = _field_kind(name, f"{where}.field")
    ops = [op for op in OPERATORS if op in raw]
    if len(ops) != 1:
        raise ConditionError(where, f"give exactly one operator ({', '.join(OPERATORS)}), found {ops or 'none'}")
    op = ops[0]
    sensitive = raw.get("case_sensitive", False)
    if not isinstance(sensitive, bool):
        raise ConditionError(f"{where}.case_sensitive", "expected true or false")
    return Test(name, op, _operand(kind, op, raw[op], f"{where}.{op}", sensitive), sensitive)


def _field_kind(name: str, where: str) -> str:
    if name.lower().startswith("header:"):
        if not name[7:].strip():
            raise ConditionError(where, "a header test names the header, e.g. \"header:X-Priority\"")
        return "text"
    if name not in FIELDS:
        raise ConditionError(where, f"unknown field {name!r}; known: {', '.join(sorted(FIELDS))}, header:NAME")
    return FIELDS[name]


def _operand(kind: str, op: str, value: Any, where: str, sensitive: bool) -> Any:
    if (kind == "path") != (op == "under"):
        raise ConditionError(where, "'under' tests a subject path (case_subject) and is the only operator for it"
                             if kind == "path" else "'under' applies to case_subject only")
    if kind == "flag":
        if op != "equals" or not isinstance(value, bool):
            raise ConditionError(where, "this field is true or false: use equals = true or equals = false")
        return value
    if op == "in":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConditionError(where, "expected a non-empty list of strings")
        return tuple(v if sensitive else v.lower() for v in value)
    if not isinstance(value, str):
        raise ConditionError(where, f"expected a string, got {value!r}")
    if op == "matches":
        return _pattern(value, where, sensitive)
    return value if sensitive else value.lower()


def _pattern(value: str, where: str, sensitive: bool) -> re.Pattern[str]:
    if len(value) > MAX_PATTERN:
        raise ConditionError(where, f"pattern longer than {MAX_PATTERN} characters")
    # Case-insensitive tests see lower-cased text. A pattern with no upper-case character
    # (so no [A-Z], \D, \W or \S either) then needs no IGNORECASE, which makes Python's
    # regex engine several times slower.
    flags = 0 if sensitive or value == value.lower() else re.IGNORECASE
    try:
        return re.compile(value, flags)
    except re.error as exc:
        raise ConditionError(where, f"invalid regular expression: {exc}") from None


def fields(cond: Condition | None) -> frozenset[str]:
    """Every field ``cond`` tests."""
    if cond is None:
        return frozenset()
    if isinstance(cond, Test):
        return frozenset((cond.field,))
    if isinstance(cond, Not):
        return fields(cond.item)
    return frozenset().union(*(fields(c) for c in cond.items))


def holds(cond: Condition, facts: Facts) -> bool:
    """Whether ``cond`` holds for ``facts`` (the fast path: no explanation)."""
    if isinstance(cond, Test):
        return _holds(cond, facts.get(cond.field, lowered=not cond.case_sensitive))
    if isinstance(cond, Not):
        return not holds(cond.item, facts)
    if isinstance(cond, AllOf):
        return all(holds(c, facts) for c in cond.items)
    return any(holds(c, facts) for c in cond.items)


def check(cond: Condition, facts: Facts) -> tuple[bool, list[str]]:
    """Whether ``cond`` holds for ``facts``, and a line per test saying why."""
    if isinstance(cond, Test):
        ok = _holds(cond, facts.get(cond.field, lowered=not cond.case_sensitive))
        return ok, [f"{'✓' if ok else '✗'} {cond.describe()}"]
    if isinstance(cond, Not):
        ok, why = check(cond.item, facts)
        return not ok, [f"not ({'; '.join(why)})"]
    results = [check(c, facts) for c in cond.items]
    ok = all(r[0] for r in results) if isinstance(cond, AllOf) else any(r[0] for r in results)
    return ok, [line for r in results for line in r[1]]


def _holds(test: Test, value: Value) -> bool:
    if isinstance(test.value, bool):
        return value is test.value
    if value is None or isinstance(value, bool):
        return False
    values = value if isinstance(value, tuple) else (value,)
    return any(_compare(test, v) for v in values)


def _compare(test: Test, text: str) -> bool:
    if test.op == "equals":
        return bool(text == test.value)
    if test.op == "contains":
        return bool(test.value in text)
    if test.op == "starts_with":
        return text.startswith(test.value)
    if test.op == "in":
        return bool(text in test.value)
    if test.op == "under":  # the branch itself, or anything below it
        return bool(text == test.value or text.startswith(test.value + SEPARATOR.lower()))
    return bool(test.value.search(text))
