"""Record-creation and routing rules: TOML files in ``rules/``, loaded and checked once, then
evaluated as pure functions of a message's facts (see engine.evaluate)."""

from maild.rules.engine import Hit, RuleResult, evaluate
from maild.rules.facts import Customer, Facts, facts_for, header_priority
from maild.rules.loader import RuleFileError, RuleSet, load

__all__ = ["Customer", "Facts", "Hit", "RuleFileError", "RuleResult", "RuleSet", "evaluate", "facts_for",
           "header_priority", "load"]
