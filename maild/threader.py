"""Decide which existing case a message belongs to, without touching the database itself.

Order (the issue's, and Dynamics 365's): a reference key in the subject first, because it
survives clients that drop In-Reply-To; then In-Reply-To, then References, matched against
the Message-IDs of every stored activity, including maild's own outgoing mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from maild.parse import ParsedMail
from maild.refkeys import find_references

Via = Literal["reply-token", "reference-key", "in-reply-to", "references"]


class CaseLookup(Protocol):
    """What the threader needs to know about stored cases; the store implements it."""

    def case_by_reference(self, reference: str) -> int | None: ...

    def case_by_message_ids(self, message_ids: list[str]) -> dict[str, int]: ...


@dataclass(frozen=True)
class ThreadMatch:
    case_id: int
    via: Via
    key: str


def match(mail: ParsedMail, lookup: CaseLookup, prefix: str, signed: str | None = None) -> ThreadMatch | None:
    """The case this mail continues, or None if it starts a new one.

    ``signed`` is the key from a correctly signed reply address (maild.replytokens), found
    by the caller: it wins, because it survives clients that drop subject and headers and
    cannot be made up.
    """
    if signed is not None:
        case_id = lookup.case_by_reference(signed)
        if case_id is not None:
            return ThreadMatch(case_id, "reply-token", signed)
    for ref in find_references(mail.subject, prefix):
        case_id = lookup.case_by_reference(ref)
        if case_id is not None:
            return ThreadMatch(case_id, "reference-key", ref)
    # One query for all candidate ids; then prefer In-Reply-To, then the newest Reference.
    candidates = list(mail.in_reply_to) + list(reversed(mail.references))
    if not candidates:
        return None
    found = lookup.case_by_message_ids(candidates)
    for msgid in mail.in_reply_to:
        if msgid in found:
            return ThreadMatch(found[msgid], "in-reply-to", msgid)
    for msgid in reversed(mail.references):
        if msgid in found:
            return ThreadMatch(found[msgid], "references", msgid)
    return None
