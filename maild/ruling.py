"""Bring the rules to one message inside the writer's transaction: gather the facts the rules
may look at, run them, and turn their result into the Disposition and the new case's fields.

Reading happens here; deciding stays pure (maild.rules.engine and ``rule_disposition``);
writing stays in cases.apply.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild import subjects
from maild.businesshours import BusinessCalendar
from maild.disposition import CaseSnapshot, Disposition
from maild.models import Account, Case, Contact
from maild.parse import ParsedMail
from maild.refkeys import clean_title
from maild.registry import Registry
from maild.rules import Customer, Facts, RuleResult, RuleSet, evaluate, facts_for, header_priority

NEW_CASE_ACTIONS = ("create", "follow_up")


def run_rules(session: Session, rules: RuleSet, mail: ParsedMail, queue: str,
              case: CaseSnapshot | None, *, received_at: datetime, calendar: BusinessCalendar,
              explain: bool = False) -> RuleResult | None:
    """The rules' verdict on a customer's message, or None when there are no rules."""
    if not rules.creation and not rules.routing:
        return None
    stored = session.get(Case, case.id) if case else None  # loaded with the snapshot: no query
    facts = facts_for(mail, queue=queue, customer=_customer(session, rules, mail),
                      case_priority=stored.priority if stored else None,
                      case_subject=subjects.path_of(session, stored.subject_id) if stored else None,
                      business_hours=calendar.is_open(received_at))
    return evaluate(rules, facts, queue, explain=explain)


def case_facts(session: Session, rules: RuleSet, mail: ParsedMail, queue: str, priority: str,
               subject_id: int | None, business_hours: bool, entitlement: str | None = None) -> Facts:
    """The facts of a message and the case it just opened (for choosing the case's SLA)."""
    return facts_for(mail, queue=queue, customer=_customer(session, rules, mail), case_priority=priority,
                     case_subject=subjects.path_of(session, subject_id), business_hours=business_hours,
                     entitlement=entitlement)


_CUSTOMER_FIELDS = frozenset({"customer_tier", "customer_account"})


def _customer(session: Session, rules: RuleSet, mail: ParsedMail) -> Customer:
    # Looked up only when some rule tests it: otherwise a query per message bought nothing.
    return customer_record(session, mail.sender_email) if rules.fields_tested & _CUSTOMER_FIELDS else Customer()


def customer_record(session: Session, email: str | None) -> Customer:
    """The sender's account and tier from the customer records."""
    if not email:
        return Customer()
    row = session.execute(
        select(Account.tier, Account.name).join(Contact, Contact.account_id == Account.id).where(Contact.email == email)
    ).first()
    return Customer(tier=row[0], account=row[1]) if row else Customer()


def rule_disposition(d: Disposition, result: RuleResult | None, queue: str) -> Disposition:
    """Apply the creation rule's action to what threading decided (pure)."""
    if result is None:
        return d
    if result.action == "quarantine":
        return Disposition("quarantine", d.case, reason=f"quarantined by rule {result.creation_rule!r}: {result.reason}",
                           rules=result)
    if result.action == "ignore":
        return Disposition("ignore", d.case, reason=f"ignored by rule {result.creation_rule!r}: {result.reason}",
                           rules=result)
    if result.action == "append_only" and d.action in NEW_CASE_ACTIONS:
        return Disposition("ignore", d.case, rules=result,
                           reason=f"rule {result.creation_rule!r}: queue {queue} only adds to existing cases, "
                           "and this message continues none")
    return replace(d, rules=result)


@dataclass(frozen=True)
class NewCaseFields:
    title: str
    priority: str
    severity: str | None
    origin: str
    queue_id: int
    owner_id: int | None
    subject_id: int | None = None


def new_case_fields(result: RuleResult | None, mail: ParsedMail, *, queue: str, queue_id: int, prefix: str,
                    registry: Registry) -> NewCaseFields:
    """The fields of a new case: defaults, then the creation rule's settings, then routing (pure).

    A team owner is chosen by the writer (it depends on stored cases), not here.
    """
    subject = clean_title(mail.subject, prefix) or "(no subject)"
    if result is None:
        return NewCaseFields(subject[:500], "normal", None, "email", queue_id, None)
    s = result.fields
    title = s.title.format_map({"subject": subject, "from": mail.sender_email or "", "queue": queue}) if s.title \
        else subject
    priority = (header_priority(mail) or "normal") if s.priority == "from_headers" else (s.priority or "normal")
    return NewCaseFields(
        title=title[:500] or "(no subject)",
        priority=result.priority or priority,
        severity=s.severity,
        origin=s.origin or "email",
        queue_id=registry.queue_id(result.queue) if result.queue else queue_id,
        owner_id=registry.agent_ids.get(result.owner) if result.owner else None,
        subject_id=registry.subject_ids.get(result.subject) if result.subject else None,
    )
