"""What a rule can look at: the fields of one message and its context, as plain values.

Built once per message before the rules run, so conditions stay pure and the same facts
can be shown by ``maild rules test``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from maild.parse import ParsedMail

Value = Union[str, bool, tuple[str, ...], None]

# Field name -> "text" (a string or a list of strings), "flag" (true/false) or "path" (a subject).
FIELDS: dict[str, str] = {
    "from": "text",
    "from_domain": "text",
    "to": "text",
    "cc": "text",
    "subject": "text",
    "body": "text",
    "queue": "text",
    "customer_tier": "text",
    "customer_account": "text",
    "has_attachment": "flag",
    "business_hours": "flag",
    "entitlement": "text",  # the name of the entitlement a new case draws on (for SLAs)  # arrived within [business_hours] (time zone, days, holidays)
    "case_priority": "text",
    "case_subject": "path",
}

# Rules match against the start of a long body only: it bounds the time a regex can take.
BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Customer:
    """The sender as the customer records know them (None where unknown)."""

    tier: str | None = None
    account: str | None = None


@dataclass(frozen=True)
class Facts:
    values: dict[str, Value]
    headers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Lower-cased values, made once per message however many rules ask.
    _lowered: dict[str, Value] = field(default_factory=dict, compare=False, repr=False)

    def with_value(self, name: str, value: Value) -> Facts:
        return Facts({**self.values, name: value}, self.headers)

    def get(self, name: str, *, lowered: bool = False) -> Value:
        if lowered:
            if name not in self._lowered:
                self._lowered[name] = _lower(self.get(name))
            return self._lowered[name]
        if name.lower().startswith("header:"):
            found = self.headers.get(name[7:].strip().lower())
            return found if found else None
        return self.values.get(name)


def _lower(value: Value) -> Value:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, tuple):
        return tuple(v.lower() for v in value)
    return value


def facts_for(mail: ParsedMail, *, queue: str, customer: Customer = Customer(),
              case_priority: str | None = None, case_subject: str | None = None,
              business_hours: bool | None = None, entitlement: str | None = None) -> Facts:
    """The facts of one message arriving in ``queue``."""
    return Facts(
        values={
            "from": mail.sender_email,
            "from_domain": mail.sender_domain,
            "to": tuple(a.email for a in mail.to if a.email),
            "cc": tuple(a.email for a in mail.cc if a.email),
            "subject": mail.subject,
            "body": mail.text[:BODY_LIMIT],
            "queue": queue,
            "customer_tier": customer.tier,
            "customer_account": customer.account,
            "has_attachment": any(not a.inline for a in mail.attachments),
            "case_priority": case_priority,
            "case_subject": case_subject,
            "business_hours": business_hours,
            "entitlement": entitlement,
        },
        headers={k.lower(): tuple(v) for k, v in mail.headers.items()},
    )


def header_priority(mail: ParsedMail) -> str | None:
    """The priority the sender's client asked for (X-Priority, Importance, Priority), if any.

    X-Priority 1 is "highest", 2 "high", 4-5 low (RFC 2156 / common client practice);
    Importance and Priority are RFC 2156 / RFC 4021 words.
    """
    raw = mail.header("X-Priority")
    if raw:
        digit = raw.strip()[:1]
        return {"1": "urgent", "2": "high", "4": "low", "5": "low"}.get(digit)
    for name in ("Importance", "Priority"):
        word = (mail.header(name) or "").strip().lower()
        if word in ("high", "urgent"):
            return "high" if word == "high" else "urgent"
        if word in ("low", "non-urgent"):
            return "low"
    return None
