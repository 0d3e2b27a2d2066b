"""Decide what an incoming message does to the cases, as a pure function of what is known.

The database is read before (to find the thread) and written after (by cases.apply);
this module only decides, so every branch is testable with plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from maild.models import ACTIVE, RESOLVED
from maild.rules.engine import RuleResult

if TYPE_CHECKING:
    from maild.articleratings import Rating

Action = Literal["create", "append", "reopen", "follow_up", "agent_reply", "agent_note", "quarantine", "ignore",
                 "refuse", "unverified_note", "keep_closed", "csat", "kb_rating"]


@dataclass(frozen=True)
class CaseSnapshot:
    """The few facts about a matched case that the decision depends on."""

    id: int
    reference: str
    status: str
    resolved_at: datetime | None
    queue_id: int = 0
    survey_open: bool = False  # a satisfaction survey went out and is not answered yet


@dataclass(frozen=True)
class AckPolicy:
    enabled: bool
    max_per_sender_per_hour: int
    reopen_window: timedelta
    # A customer's reply to a resolved case: "reopen" (within the window), "new_case" or "keep_closed".
    on_reply_to_resolved: str = "reopen"
    historical: bool = False  # imported history (maild.historical): nothing is ever sent


@dataclass(frozen=True)
class Disposition:
    action: Action
    case: CaseSnapshot | None = None
    acknowledge: bool = False
    no_ack_reason: str | None = None
    reason: str | None = None  # why a message is quarantined or ignored
    rules: RuleResult | None = None  # what the record-creation and routing rules said
    template: str | None = None  # for "refuse": the answer sent to the sender
    label: str | None = None  # for notes: how the note is marked ("unverified", "automatic")
    rating: int | None = None  # for "csat": the customer's 1-5 answer
    vote: Rating | None = None  # a customer's rating of one of the case's articles, found by plan()


def decide(
    *,
    case: CaseSnapshot | None,
    agent: str | None,
    no_reply_reason: str | None,
    acks_last_hour: int,
    policy: AckPolicy,
    now: datetime,
    rating: int | None = None,
    article_rating_only: bool = False,
) -> Disposition:
    """What to do with one message from a customer (``agent`` None) or from a named agent."""
    if agent is not None:
        if case is None:
            return Disposition(
                "quarantine",
                reason=f"mail from agent {agent} does not reference a case "
                "(no reference key in the subject and no known In-Reply-To/References)",
            )
        return Disposition("agent_reply", case)
    if case is None:
        return _new_case("create", None, no_reply_reason, acks_last_hour, policy)
    if case.status == ACTIVE:
        return Disposition("append", case)
    if case.status == RESOLVED:
        if article_rating_only:  # "yes, that article helped": no reason to reopen the case
            return Disposition("kb_rating", case)
        return _after_resolution(case, no_reply_reason, acks_last_hour, policy, now, rating)
    # Cancelled: a new case that points back at the old one.
    return _new_case("follow_up", case, no_reply_reason, acks_last_hour, policy)


def _after_resolution(case: CaseSnapshot, no_reply_reason: str | None, acks_last_hour: int, policy: AckPolicy,
                      now: datetime, rating: int | None) -> Disposition:
    """A customer's reply to a resolved case: a survey answer, or what the queue's policy says."""
    if case.survey_open and rating is not None:
        return Disposition("csat", case, rating=rating)
    if policy.on_reply_to_resolved == "keep_closed":
        reason = ack_refusal(no_reply_reason, acks_last_hour, policy)
        return Disposition("keep_closed", case, acknowledge=reason is None, no_ack_reason=reason)
    if policy.on_reply_to_resolved == "reopen" and case.resolved_at is not None \
            and now - case.resolved_at <= policy.reopen_window:
        return Disposition("reopen", case)
    return _new_case("follow_up", case, no_reply_reason, acks_last_hour, policy)


def _new_case(
    action: Action, case: CaseSnapshot | None, no_reply_reason: str | None, acks_last_hour: int, policy: AckPolicy
) -> Disposition:
    reason = ack_refusal(no_reply_reason, acks_last_hour, policy)
    return Disposition(action, case, acknowledge=reason is None, no_ack_reason=reason)


def ack_refusal(no_reply_reason: str | None, acks_last_hour: int, policy: AckPolicy) -> str | None:
    """Why no acknowledgement may go out, or None when one should."""
    if policy.historical:
        return "historical import: no acknowledgement for imported mail"
    if not policy.enabled:
        return "acknowledgements are disabled for this queue"
    if no_reply_reason is not None:
        return no_reply_reason
    if acks_last_hour >= policy.max_per_sender_per_hour:
        return f"rate limit: {acks_last_hour} acknowledgements to this sender in the last hour"
    return None
