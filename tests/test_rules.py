"""The rule language as pure data: every field and operator, combinations, first match wins,
and rule files whose errors name the file, the rule and the key."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import mail
from maild.parse import parse
from maild.rules import Customer, RuleFileError, evaluate, facts_for, header_priority, load
from maild.rules import conditions

QUEUES, AGENTS = ["support", "billing"], ["Alice Agent"]


def facts(raw: bytes | None = None, **kw: object):  # type: ignore[no-untyped-def]
    return facts_for(parse(raw or mail()), queue=str(kw.pop("queue", "support")), **kw)  # type: ignore[arg-type]


def holds(cond: dict, raw: bytes | None = None, **kw: object) -> bool:  # type: ignore[type-arg]
    return conditions.check(conditions.parse(cond), facts(raw, **kw))[0]


def with_attachment() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "jane@customer.test", "support@example.test", "logs"
    msg.set_content("see attached")
    msg.add_attachment(b"log line", maintype="text", subtype="plain", filename="app.log")
    return msg.as_bytes()


@pytest.mark.parametrize("cond, expected", [
    ({"field": "from", "equals": "JANE@customer.test"}, True),  # case-insensitive by default
    ({"field": "from", "equals": "JANE@customer.test", "case_sensitive": True}, False),
    ({"field": "from_domain", "equals": "customer.test"}, True),
    ({"field": "from_domain", "in": ["a.test", "customer.test"]}, True),
    ({"field": "from_domain", "in": ["a.test"]}, False),
    ({"field": "to", "contains": "support@"}, True),
    ({"field": "cc", "contains": "@"}, False),  # an empty list matches nothing
    ({"field": "subject", "starts_with": "printer"}, True),
    ({"field": "subject", "starts_with": "fire"}, False),
    ({"field": "subject", "matches": "on\\s+f[i]re$"}, True),
    ({"field": "body", "contains": "my printer"}, True),
    ({"field": "header:X-Mailer", "equals": "acme mail 2"}, True),
    ({"field": "header:x-mailer", "contains": "ACME"}, True),  # header names in any case
    ({"field": "header:X-Missing", "contains": ""}, False),
    ({"field": "queue", "equals": "support"}, True),
    ({"field": "has_attachment", "equals": False}, True),
    ({"field": "customer_tier", "equals": "gold"}, False),
    ({"field": "case_priority", "equals": "high"}, False),
])
def test_each_field_and_operator(cond: dict, expected: bool) -> None:  # type: ignore[type-arg]
    assert holds(cond, mail(headers={"X-Mailer": "Acme Mail 2"})) is expected


def test_customer_attachment_and_case_fields() -> None:
    assert holds({"field": "has_attachment", "equals": True}, with_attachment())
    assert holds({"field": "customer_tier", "in": ["gold", "platinum"]}, customer=Customer(tier="Gold", account="Acme"))
    assert holds({"field": "customer_account", "equals": "acme"}, customer=Customer(tier=None, account="Acme"))
    assert holds({"field": "case_priority", "equals": "high"}, case_priority="high")


def test_any_all_not() -> None:
    yes, no = {"field": "subject", "contains": "printer"}, {"field": "subject", "contains": "invoice"}
    assert holds({"all": [yes, {"not": no}]})
    assert not holds({"all": [yes, no]})
    assert holds({"any": [no, yes]})
    assert not holds({"any": [no, {"not": yes}]})
    ok, why = conditions.check(conditions.parse({"all": [yes, no]}), facts())
    assert why == ["✓ subject contains 'printer'", "✗ subject contains 'invoice'"]


@pytest.mark.parametrize("cond, where, problem", [
    ({"field": "frm", "equals": "x"}, "when.field", "unknown field 'frm'"),
    ({"field": "subject"}, "when", "give exactly one operator"),
    ({"field": "subject", "equals": "a", "contains": "b"}, "when", "give exactly one operator"),
    ({"field": "subject", "matches": "("}, "when.matches", "invalid regular expression"),
    ({"field": "subject", "matches": "a" * 2000}, "when.matches", "pattern longer than 1000"),
    ({"field": "subject", "in": "a"}, "when.in", "non-empty list of strings"),
    ({"field": "subject", "equals": 3}, "when.equals", "expected a string"),
    ({"field": "has_attachment", "contains": "x"}, "when.contains", "true or false"),
    ({"field": "subject", "like": "x"}, "when.like", "unknown key"),
    ({"any": []}, "when.any", "non-empty list"),
    ({"all": [{"field": "subject", "contains": "a"}, {"not": {"field": "nope", "equals": "x"}}]},
     "when.all[1].not.field", "unknown field 'nope'"),
    ({"not": {"field": "subject", "equals": "a"}, "field": "x"}, "when", "must be the only key"),
    ("subject contains x", "when", "expected a table"),
])
def test_bad_conditions_are_refused_at_load_naming_the_key(cond: object, where: str, problem: str) -> None:
    with pytest.raises(conditions.ConditionError) as info:
        conditions.parse(cond)
    assert info.value.where == where
    assert problem in info.value.problem


def test_header_priority_reads_x_priority_importance_and_priority() -> None:
    assert header_priority(parse(mail(headers={"X-Priority": "1 (Highest)"}))) == "urgent"
    assert header_priority(parse(mail(headers={"X-Priority": "2"}))) == "high"
    assert header_priority(parse(mail(headers={"X-Priority": "5 (Lowest)"}))) == "low"
    assert header_priority(parse(mail(headers={"Importance": "High"}))) == "high"
    assert header_priority(parse(mail(headers={"Priority": "non-urgent"}))) == "low"
    assert header_priority(parse(mail())) is None


def write(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder


def test_first_match_wins_across_files_in_name_order_and_queue_limits_apply(tmp_path: Path) -> None:
    folder = write(tmp_path, "20-b.toml", """
[[routing]]
name = "second"
when = { field = "subject", contains = "printer" }
queue = "support"
""")
    write(tmp_path, "10-a.toml", """
[[routing]]
name = "billing only"
queues = ["billing"]
queue = "support"
priority = "low"

[[routing]]
name = "first"
when = { field = "subject", contains = "fire" }
queue = "billing"
owner = "Alice Agent"
priority = "high"
""")
    rules = load(folder, queues=QUEUES, agents=AGENTS)
    result = evaluate(rules, facts(), "support")
    assert (result.routing_rule, result.queue, result.owner, result.priority) == ("first", "billing", "Alice Agent",
                                                                                 "high")
    assert [(h.name, h.matched) for h in result.trace] == [("first", True)], "queue-limited rules are skipped"
    assert evaluate(rules, facts(queue="billing"), "billing").routing_rule == "billing only"


def test_creation_rules_decide_the_action_and_fields(tmp_path: Path) -> None:
    folder = write(tmp_path, "10.toml", """
[[creation]]
name = "spam"
when = { field = "subject", matches = "viagra" }
action = "quarantine"
reason = "looks like spam"

[[creation]]
name = "prio"
set = { priority = "from_headers", severity = "sev2", origin = "web", title = "[{queue}] {subject}" }
""")
    rules = load(folder, queues=QUEUES, agents=AGENTS)
    spam = evaluate(rules, facts(mail(subject="cheap viagra")), "support")
    assert (spam.action, spam.creation_rule, spam.reason) == ("quarantine", "spam", "looks like spam")
    normal = evaluate(rules, facts(), "support")
    assert (normal.action, normal.creation_rule, normal.fields.severity) == ("create", "prio", "sev2")
    assert evaluate(load(tmp_path / "none", queues=QUEUES, agents=AGENTS), facts(), "support").action == "create"


def test_rule_file_errors_name_file_rule_and_key_and_list_them_all(tmp_path: Path) -> None:
    folder = write(tmp_path, "30-bad.toml", """
[[creation]]
name = "bad action"
action = "delete"
colour = "red"

[[routing]]
name = "typo"
when = { all = [ { field = "frm", equals = "x" } ] }
queue = "sales"
owner = "Nobody"

[[routing]]
name = "does nothing"
""")
    write(tmp_path, "40-broken.toml", "[[routing]\nname = ")
    write(tmp_path, "50-top.toml", "[[routes]]\nname = 'x'\n")
    with pytest.raises(RuleFileError) as info:
        load(folder, queues=QUEUES, agents=AGENTS)
    problems = info.value.problems
    assert "rules/30-bad.toml: creation[0] 'bad action': action: Input should be 'create', 'append_only', " \
           "'ignore' or 'quarantine'" in problems
    assert "rules/30-bad.toml: creation[0] 'bad action': colour: unknown key" in problems
    assert any(p.startswith("rules/30-bad.toml: routing[0] 'typo': queue: unknown queue 'sales'") for p in problems)
    assert any(p.startswith("rules/30-bad.toml: routing[0] 'typo': owner: unknown agent 'Nobody'") for p in problems)
    assert any(p.startswith("rules/30-bad.toml: routing[0] 'typo': when.all[0].field: unknown field 'frm'")
               for p in problems)
    assert "rules/30-bad.toml: routing[1] 'does nothing': a routing rule sets at least one of queue, owner, " \
           "team, priority, subject" in problems
    assert any(p.startswith("rules/40-broken.toml: not valid TOML") for p in problems)
    assert "rules/50-top.toml: routes: unknown key" in problems


def test_title_placeholders_are_checked_at_load(tmp_path: Path) -> None:
    folder = write(tmp_path, "10.toml", "[[creation]]\nname = 't'\nset = { title = '{sender}: {subject}' }\n")
    with pytest.raises(RuleFileError) as info:
        load(folder, queues=QUEUES, agents=AGENTS)
    assert info.value.problems[0].startswith("rules/10.toml: creation[0] 't': set.title: Value error, placeholders may")


@pytest.mark.parametrize("pattern", [r"printer\s+on", r"PRINTER", r"[A-Z]{3}", r"\D+fire", r"^printer", r"fire$",
                                     r"(?:ink|toner)\d+"])
@pytest.mark.parametrize("subject", ["Printer on FIRE", "INK42 low", "ok"])
def test_case_insensitive_matches_agree_with_python_ignorecase(pattern: str, subject: str) -> None:
    import re

    cond = conditions.parse({"field": "subject", "matches": pattern})
    f = facts(mail(subject=subject))
    expected = re.search(pattern, subject, re.IGNORECASE) is not None
    assert conditions.holds(cond, f) is expected
    assert conditions.check(cond, f)[0] is expected


def test_explain_traces_every_rule_and_the_fast_path_only_the_match(tmp_path: Path) -> None:
    folder = write(tmp_path, "10.toml", """
[[routing]]
name = "miss"
when = { field = "subject", contains = "invoice" }
queue = "billing"

[[routing]]
name = "hit"
when = { field = "subject", contains = "printer" }
queue = "billing"
""")
    rules = load(folder, queues=QUEUES, agents=AGENTS)
    assert [h.name for h in evaluate(rules, facts(), "support").trace] == ["hit"]
    explained = evaluate(rules, facts(), "support", explain=True)
    assert [(h.name, h.matched) for h in explained.trace] == [("miss", False), ("hit", True)]


def test_the_shipped_examples_load_against_the_example_config() -> None:
    from conftest import REPO
    from maild import config

    cfg = config.load(REPO / "config.example.toml")
    rules = load(REPO / "rules" / "examples", queues=cfg.queues, agents=[a.name for a in cfg.agents])
    assert len(rules.creation) == 6 and len(rules.routing) == 3
    assert "Billing > Invoice Dispute" in rules.subjects
    assert load(REPO / "rules", queues=cfg.queues, agents=[]).files == (), "the default installs no active rules"
    spam = evaluate(rules, facts(mail(subject="You won the lottery")), "support")
    assert spam.action == "quarantine"


def test_the_fields_the_rules_test_are_known_so_intake_reads_only_those(tmp_path: Path) -> None:
    """Intake looks the sender's customer record up only when some rule tests customer_tier
    or customer_account: in a creation or routing rule, nested in any/all/not, or an SLA's."""
    folder = write(tmp_path, "10.toml", """
[[creation]]
name = "vip"
when = { any = [ { field = "subject", contains = "x" }, { not = { field = "customer_account", equals = "a" } } ] }

[[routing]]
name = "r"
when = { all = [ { field = "from_domain", equals = "x.test" } ] }
queue = "support"
""")
    assert load(folder, queues=QUEUES, agents=AGENTS).fields_tested == {"subject", "customer_account", "from_domain"}
    (folder / "10.toml").write_text('[[sla]]\nname = "gold"\nwhen = { field = "customer_tier", equals = "gold" }\n'
                                    'first_response = { warn_after = "10m", fail_after = "15m" }\n')
    assert load(folder, queues=QUEUES, agents=AGENTS).fields_tested == {"customer_tier"}
    (folder / "10.toml").write_text('[[creation]]\nname = "all"\nset = { priority = "high" }\n')
    assert load(folder, queues=QUEUES, agents=AGENTS).fields_tested == frozenset()
