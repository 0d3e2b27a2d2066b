"""The single writer of case data from mail: one transaction for case, activity, audit and outbox.

``apply`` is called by the intake runner with a claimed inbound row and its parsed mail.
Everything it writes, including the acknowledgement or relayed reply in the outbox and
the inbound row's own state, commits together or not at all (a transactional outbox):
a crash can never leave a case without its acknowledgement, nor an acknowledgement for
a case that was rolled back.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from maild import (agentcommands, agentnotices, articleratings, assignment, attachments, bounces, csat, entitlements,
                   historical, knowledge, mailauth, outbox, participants, replytokens, safety, senders, sla, threader)
from maild.businesshours import BusinessCalendar
from maild.config import Config, QueueConfig
from maild.disposition import AckPolicy, CaseSnapshot, Disposition, ack_refusal, decide
from maild.db import (forget_on_rollback, get_unflushed, given, hold, insert_after_flush, largest_id, pending,
                      pending_inserts, write_at_flush)
from maild.errors import MaildError, ProcessingError
from maild.models import (
    ACTIVE,
    AUTO_REPLY,
    BOUNCE,
    INCOMING_EMAIL,
    NOTE,
    OUTGOING_EMAIL,
    PROCESSED,
    QUARANTINED,
    RECEIVED,
    RESOLVED,
    Activity,
    Agent,
    Attachment,
    AuditEvent,
    Case,
    Contact,
    Counter,
    InboundMessage,
    OutboundMessage,
    Queue,
)
from maild.outbox import ACKNOWLEDGEMENT, NOTICE, REFUSAL, REPLY, Draft, FileAttachment, enqueue
from maild.parse import ParsedMail
from maild.refkeys import clean_title, make_reference, tag_subject
from maild.registry import Registry
from maild.ruling import NEW_CASE_ACTIONS, case_facts, new_case_fields, rule_disposition, run_rules
from maild.rules import RuleSet
from maild.templates import Renderer

# Templates for exhausted entitlements: the customer's refusal, and the notice to config's list.
EXHAUSTED_TEMPLATE, EXHAUSTED_NOTICE = "entitlement_refused", "entitlement_exhausted"
# The answer to a customer's reply to a resolved case in a queue that keeps such cases closed.
CLOSED_TEMPLATE = "closed_case_reply"
# To an agent whose emailed reply was kept as a note, not relayed: why, and how to send it.
NOT_RELAYED_TEMPLATE = "agent_not_relayed"

# How long a reply may wait for the message it answers to be processed first.
PARENT_WAIT_LIMIT = timedelta(minutes=10)


@dataclass(frozen=True)
class IntakeContext:
    """What the writer needs besides the session; built once by the daemon (again on SIGHUP)."""

    config: Config
    registry: Registry
    renderer: Renderer
    rules: RuleSet = field(default_factory=RuleSet)
    reply_key: bytes = b""  # signs reply addresses (maild.replytokens); empty: none are made
    calendar: BusinessCalendar | None = None  # built once from config.business_hours when missing
    historical: bool = False  # imported history (maild.historical): sends nothing, starts no clocks

    def __post_init__(self) -> None:
        if self.calendar is None:
            object.__setattr__(self, "calendar", BusinessCalendar(self.config.business_hours))

    @property
    def data_dir(self) -> Path:
        return self.config.paths.data

    def reply_address(self, queue: Queue, case: Case, role: str = replytokens.CUSTOMER) -> str:
        """The signed Reply-To for mail about ``case`` (the customer's, or with ``role`` AGENT
        the one that proves an agent); the plain queue address without a key."""
        return replytokens.address(queue.address, case.reference, self.reply_key, role) if self.reply_key \
            else queue.address

    def signed(self, mail: ParsedMail) -> replytokens.Signed | None:
        if not self.reply_key:
            return None
        return replytokens.signed_from(_recipients(mail), self.reply_key, self.config.cases.reference_prefix)

    def queue_name(self, queue_id: int) -> str:
        return next((n for n, i in self.registry.queue_ids.items() if i == queue_id), str(queue_id))


@dataclass(frozen=True)
class Outcome:
    action: str  # created | threaded | reopened | follow_up | relayed | duplicate | quarantined | skipped | waiting
    reference: str | None = None
    via: str | None = None
    acknowledged: bool = False
    note: str | None = None

    def describe(self) -> str:
        parts = [self.action]
        if self.reference:
            parts.append(self.reference)
        if self.via:
            parts.append(f"via {self.via}")
        if self.action in ("created", "follow_up"):
            parts.append("acknowledged" if self.acknowledged else f"not acknowledged ({self.note})")
        elif self.action == "quarantined":
            parts.append(f"reason: {self.note}")
        elif self.note:
            parts.append(f"({self.note})")
        return " ".join(parts)


class StoreLookup:
    """threader.CaseLookup over the database and the session's pending rows; merged cases
    forward to their survivor.

    Nothing here flushes: intake writes a batch once, at its end, and a flush per reply
    (the batch so far, for one lookup) was the largest single cost of threading. What the
    batch's earlier messages made is read from the session instead.
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    # Prepared once and run on the connection (which never flushes): building and running a
    # select through the session cost as much again as the lookup itself.
    _BY_REFERENCE = select(Case.id, Case.merged_into_id).where(Case.reference == bindparam("reference"))
    _BY_MESSAGE_IDS = (select(Activity.message_id, Activity.case_id, Case.merged_into_id)  # a query less per reply
                       .join(Case, Case.id == Activity.case_id)
                       .where(Activity.message_id.in_(bindparam("message_ids", expanding=True)))
                       .order_by(Activity.id.desc()))  # see stored()
    _MERGED_INTO = select(Case.merged_into_id).where(Case.id == bindparam("case_id"))

    def case_by_reference(self, reference: str) -> int | None:
        # Only stored cases: a case's reference reaches anyone in mail sent after its batch commits.
        row = self.session.connection().execute(self._BY_REFERENCE, {"reference": reference}).first()
        return None if row is None else self._follow(row[0], row[1])

    def case_by_message_ids(self, message_ids: list[str]) -> dict[str, int]:
        known: dict[str, tuple[int, int | None]] | None = self.session.info.get(_THREADS)
        found = self._followed([(mid, *known[mid]) for mid in message_ids if mid in known] if known is not None
                               else self.stored(message_ids))
        wanted = set(message_ids) - found.keys()
        for row in pending(self.session, Activity):  # an earlier message of this batch
            if row.message_id in wanted:
                found[row.message_id] = self._follow(row.case_id, None)
        if known is not None and (unknown := [mid for mid in message_ids if mid not in found]):
            # Not stored when the batch looked (see prefetch): another worker may have since.
            found.update(self._followed(self.stored(unknown)))
        return found

    def stored(self, message_ids: list[str]) -> list[tuple[str, int, int | None]]:
        """(Message-ID, case, the case it was merged into) for each of ``message_ids`` stored.

        Newest first, so that where a Message-ID is on several cases (another message reused
        it: broken clients, forgeries) a mapping built from the rows keeps the first mail
        recorded under it: a collision never takes the replies to the message it copies."""
        rows: list[tuple[str, int, int | None]] = []
        for start in range(0, len(message_ids), _LOOKUP_CHUNK):  # a long References chain each adds up
            rows.extend((mid, case_id, into) for mid, case_id, into in self.session.connection().execute(
                self._BY_MESSAGE_IDS, {"message_ids": message_ids[start:start + _LOOKUP_CHUNK]}) if mid is not None)
        return rows

    def _followed(self, rows: Sequence[tuple[str, int, int | None]]) -> dict[str, int]:
        return {mid: self._follow(case_id, into) for mid, case_id, into in rows}

    def _follow(self, case_id: int, merged_into: int | None) -> int:
        # Merges are written by `maild cases merge` in transactions of their own, never by
        # intake, so what is stored is all there is to follow.
        seen = {case_id}
        while merged_into is not None and merged_into not in seen:
            seen.add(merged_into)
            case_id = merged_into
            merged_into = self.session.connection().execute(self._MERGED_INTO, {"case_id": case_id}).scalar()
        return case_id


def apply(session: Session, ctx: IntakeContext, inbound_id: int, mail: ParsedMail, now: datetime, *,
          locked: InboundMessage | None = None) -> Outcome:
    """Turn one claimed, parsed inbound message into case data, in the caller's transaction.

    ``locked``: the inbound row, already loaded FOR UPDATE in this transaction (see
    ``lock_inbound``); otherwise it is locked and loaded here.
    """
    inbound = locked or session.get(InboundMessage, inbound_id, with_for_update=True)
    if inbound is None or inbound.state != RECEIVED:
        return Outcome("skipped", note="already handled by another worker")
    ctx, now = historical.view(ctx, inbound, now)  # imported mail keeps its own date
    problem = safety.identity_problem(mail, lambda a: ctx.config.queue_for_address(a) is not None,
                                      historical=ctx.historical)
    if problem is not None:
        return _hold(inbound, problem, now)
    duplicate, collides = _duplicate_case(session, mail)
    if duplicate is not None:
        _finish(inbound, "duplicate", duplicate, now)
        return Outcome("duplicate", _reference(session, duplicate), note=f"Message-ID {mail.message_id} already recorded")
    automatic = _automatic(session, ctx, inbound, mail, now)
    if automatic is not None:
        return automatic
    match = find_thread(session, ctx, mail)
    if _waits_for_parent(match):
        parent = _parent_in_line(session, mail, inbound, now, stronger_than=match)
        if parent is not None:
            return Outcome("waiting", note=f"the message it answers, {parent}, is not processed yet")
        if match is None and (mail.in_reply_to or mail.references):
            # Under READ COMMITTED each statement sees the latest commits: another worker may
            # have committed the message it answers between the two queries above (too late
            # for the first, no longer in line for the second). Nothing it answers is in
            # line now, so a second look finds that message's case if there is one.
            match = find_thread(session, ctx, mail)
    disposition = plan(session, ctx, mail, inbound.queue_id, match, now, received_at=inbound.received_at,
                       envelope_from=inbound.envelope_from)
    outcome = _HANDLERS[disposition.action](session, ctx, inbound, mail, disposition, now)
    if match is not None and outcome.via is None and outcome.action != "quarantined":
        outcome = Outcome(outcome.action, outcome.reference, match.via, outcome.acknowledged, outcome.note)
    if collides is not None:
        note = f"Message-ID {mail.message_id} is also a different message's, on {collides}: kept as one of its own"
        outcome = replace(outcome, note=f"{outcome.note}; {note}" if outcome.note else note)
    return outcome


def _automatic(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
               now: datetime) -> Outcome | None:
    """Bounces and automatic replies, which never open a case: filed on the case they are
    about, or kept without one with the reason. None for any other mail."""
    reason = safety.automatic_reply(mail)
    if bounces.looks_like_bounce(mail, inbound.envelope_from) \
            or (reason is None and safety.null_path(mail, inbound.envelope_from)):
        return _bounce(session, ctx, inbound, mail, now)
    queue = ctx.config.queues.get(ctx.queue_name(inbound.queue_id))
    if reason is None or (queue is not None and queue.auto_replies == "create"):
        return None
    match = find_thread(session, ctx, mail)
    if match is None:
        _finish(inbound, "auto_reply", None, now)
        inbound.error = f"automatic reply ({reason}) that answers no case: kept, no case opened"
        return Outcome("auto_reply", note=inbound.error)
    # Filed as it is: no reopening, no status change, no SLA clock, no agent notice.
    case = get_unflushed(session, Case, match.case_id)
    assert case is not None
    _incoming_activity(session, ctx, case, inbound, mail, now, kind=AUTO_REPLY)
    audit(session, case.id, f"automatic:{mail.sender_email}", "auto_reply_filed", now, inbound_id=inbound.id,
          reason=reason)
    _finish(inbound, "auto_reply", case.id, now)
    return Outcome("auto_reply", case.reference, match.via, note=reason)


def _bounce(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
            now: datetime) -> Outcome:
    """A delivery status notification: recorded against the mail that bounced (maild.bounces),
    filed on its case, or kept and listed (`maild bounces list`) when it matches none."""
    # Mail on the null path that reads as no report names nothing: kept and listed, never
    # taken as proof that a message bounced (its In-Reply-To is anyone's to write).
    report = bounces.parse_report(inbound.raw) or bounces.Report((), (), standard=False)
    recorded = bounces.record(session, inbound_id=inbound.id, report=report, now=now,
                              suppress_after=ctx.config.outgoing.suppress_after_bounces)
    case = get_unflushed(session, Case, recorded.case_id) if recorded.case_id is not None else None
    if case is None:
        _finish(inbound, "bounce_unmatched", None, now)
        inbound.error = f"bounce that matches no mail maild sent: kept ({recorded.note})"
        return Outcome("bounce", note=inbound.error)
    _incoming_activity(session, ctx, case, inbound, mail, now, kind=BOUNCE)
    audit(session, case.id, "system", "bounce_received", now, inbound_id=inbound.id, outbox_id=recorded.outbound_id,
          note=recorded.note, suppressed=list(recorded.suppressed) or None)
    _finish(inbound, "bounce", case.id, now)
    return Outcome("bounce", case.reference, note=recorded.note)


def _hold(inbound: InboundMessage, reason: str, now: datetime) -> Outcome:
    """Quarantine a message before anything is written for it: kept, with why, for review."""
    inbound.state, inbound.error, inbound.claimed_until, inbound.processed_at = QUARANTINED, reason, None, now
    return Outcome("quarantined", note=reason)


def _waits_for_parent(match: threader.ThreadMatch | None) -> bool:
    """Whether a message it answers could still change where it goes: nothing matched, or
    only through References, where the In-Reply-To or a newer Reference may be in line."""
    return match is None or match.via == "references"


def lock_inbound(session: Session, ids: list[int]) -> dict[int, InboundMessage]:
    """Lock and load a batch's inbound rows in one statement, for ``apply(locked=...)``.

    Ordered by id, so two workers never lock the same rows in opposite orders.
    """
    rows = session.scalars(select(InboundMessage).where(InboundMessage.id.in_(ids)).order_by(InboundMessage.id)
                           .with_for_update())
    return {row.id: row for row in rows}


def find_thread(session: Session, ctx: IntakeContext, mail: ParsedMail) -> threader.ThreadMatch | None:
    """The case ``mail`` continues, as intake finds it (its signed reply address first);
    ``maild rules test`` and ``rules replay`` thread the same way."""
    signed = ctx.signed(mail)
    return threader.match(mail, StoreLookup(session), ctx.config.cases.reference_prefix,
                          signed.reference if signed else None)


def plan(session: Session, ctx: IntakeContext, mail: ParsedMail, queue_id: int, match: threader.ThreadMatch | None,
         now: datetime, *, lock: bool = True, explain: bool = False, received_at: datetime | None = None,
         envelope_from: str | None = None) -> Disposition:
    """What a message will do, from what is stored now: the decision ``apply`` carries out,
    and what ``maild rules test`` shows without writing anything (``lock=False``)."""
    snapshot = _snapshot(session, match.case_id, lock) if match else None
    agent = ctx.config.agent_for_address(mail.sender_email)
    no_reply = safety.no_reply_reason(mail, ctx.config.own_addresses(), envelope_from)
    customer = customer_address(mail, envelope_from)
    acks = _recent_acks(session, customer, now) if (agent is None and no_reply is None and customer) else 0
    answer, vote = _answers(session, snapshot, mail) if agent is None else (None, None)
    disposition = decide(
        case=snapshot,
        agent=agent.name if agent else None,
        no_reply_reason=no_reply,
        acks_last_hour=acks,
        policy=_policy(ctx, snapshot.queue_id if snapshot else queue_id),
        now=now,
        rating=answer[0] if answer else None,
        article_rating_only=vote is not None and vote.verdict.only_a_rating,
    )
    if vote is not None:
        disposition = replace(disposition, vote=vote)  # what apply records: found once, here
    if agent is not None:
        return _agent_disposition(ctx, disposition, mail, match, no_reply)
    if disposition.action in ("append", "reopen", "keep_closed") and disposition.case is not None \
            and not _answers_its_mail(match) \
            and not participants.is_participant(session, disposition.case.id, mail.sender_email,
                                                ctx.config.cases.public_mail_domains):
        disposition = _outsider(ctx, disposition, mail, no_reply, acks, queue_id)
    # The safety checks above always ran first; rules can only add to them.
    queue = ctx.queue_name(queue_id)
    assert ctx.calendar is not None
    ruled = run_rules(session, ctx.rules, mail, queue, snapshot, received_at=received_at or now, calendar=ctx.calendar,
                      explain=explain)
    disposition = rule_disposition(disposition, ruled, queue)
    if disposition.action in NEW_CASE_ACTIONS and ctx.config.queues[queue].unknown_senders == "refuse" \
            and not senders.is_known(session, mail.sender_email):
        return replace(disposition, action="refuse",
                       reason=f"unknown sender: queue {queue} takes new cases only from known customers")
    if disposition.action in NEW_CASE_ACTIONS and not ctx.historical:  # history draws on no entitlement
        charge = _entitlement(session, mail, now)
        if charge.refuse and charge.entitlement is not None:
            return replace(disposition, action="refuse", template=EXHAUSTED_TEMPLATE,
                           reason=f"entitlement {charge.entitlement.name!r} is exhausted and refuses new cases")
    return disposition


def _answers_its_mail(match: threader.ThreadMatch | None) -> bool:
    """Whether the message answers (In-Reply-To, References) a message sent or received on
    the case: whoever does was on that mail, or was handed it by someone who was (a
    colleague the customer forwarded it to), and joins the conversation. Only a key, in the
    subject or a reply address, proves nothing about who carries it."""
    return match is not None and match.via in ("in-reply-to", "references")


def _answers(session: Session, snapshot: CaseSnapshot | None, mail: ParsedMail
             ) -> tuple[tuple[int, str] | None, articleratings.Rating | None]:
    """A customer's answer to the case's survey, or rating of one of its articles: only the
    case's own people can give either."""
    if snapshot is None:
        return None, None
    answer = csat.rating(mail.text_stripped) if snapshot.survey_open else None
    vote = None if answer else articleratings.find(session, snapshot.id, mail.in_reply_to, mail.text_stripped)
    if (answer or vote) and not participants.is_participant(session, snapshot.id, mail.sender_email):
        return None, None
    return answer, vote


def _agent_disposition(ctx: IntakeContext, d: Disposition, mail: ParsedMail, match: threader.ThreadMatch | None,
                       no_reply: str | None) -> Disposition:
    """A configured agent's mail on a case: relayed, or a note, depending on what proves it.

    From can be forged. Proof is the case's signed reply address, or (with trusted servers
    configured) their Authentication-Results showing DKIM or DMARC passed for the agent's
    domain. Unproven mail is kept as an unverified note; an agent's auto-reply (out of
    office) is kept as a note too, so it never reaches the customer or runs commands.
    """
    if d.action != "agent_reply":
        return d
    if ctx.historical:  # long sent: never relayed again, its commands never run
        return replace(d, action="unverified_note", label="imported", reason=historical.NOTHING_SENT)
    proof = _agent_proof(ctx, mail, match)
    if proof is None:
        return replace(d, action="unverified_note", label="unverified",
                       reason=f"mail from agent address {mail.sender_email} did not come through the case's signed "
                       "reply address (nor with a trusted DKIM/DMARC pass): kept as an unverified internal note, "
                       "not relayed")
    if no_reply is not None:
        return replace(d, action="unverified_note", label="automatic",
                       reason=f"automatic mail from an agent ({no_reply}): kept as an internal note, not relayed")
    if ctx.config.comment_queue(_recipients(mail)) is not None:
        return replace(d, action="agent_note", reason=f"sent to a comment address; verified by {proof}")
    return replace(d, reason=f"verified by {proof}")


def _agent_proof(ctx: IntakeContext, mail: ParsedMail, match: threader.ThreadMatch | None) -> str | None:
    security = ctx.config.security
    if security.agent_verification == "from":
        return "from address"
    signed = ctx.signed(mail)
    if match is not None and match.via == "reply-token" and signed is not None and signed.role == replytokens.AGENT:
        return "signed reply address"  # an agents' address: the customer's own proves nothing
    domain = (mail.sender_email or "").rpartition("@")[2]
    found = mailauth.proof(mail.headers.get("authentication-results", ()), security.trusted_authserv_ids, domain)
    return f"{found}=pass" if found else None


def _recipients(mail: ParsedMail) -> list[str]:
    """Every address the mail was delivered to: To, Cc, and what the MTA recorded."""
    found = [a.email for a in (*mail.to, *mail.cc) if a.email]
    return found + [v for name in ("delivered-to", "x-original-to") for v in mail.headers.get(name, ())]


def _entitlement(session: Session, mail: ParsedMail, now: datetime) -> entitlements.Charge:
    if not mail.sender_email or not entitlements.any_exist(session):
        return entitlements.Charge(None, False)
    row = session.execute(select(Contact.id, Contact.account_id).where(Contact.email == mail.sender_email)).first()
    if row is None:
        return entitlements.Charge(None, False)
    return entitlements.check(session, row[0], row[1], "email", now.date())


def _outsider(ctx: IntakeContext, d: Disposition, mail: ParsedMail, no_reply: str | None, acks: int,
              queue_id: int) -> Disposition:
    assert d.case is not None
    reason = f"{mail.sender_email} is not a participant of {d.case.reference}"
    if ctx.config.cases.unknown_participant == "quarantine":
        return Disposition("quarantine", d.case, reason=f"{reason}: held for review")
    refusal = ack_refusal(no_reply, acks, _policy(ctx, queue_id))
    return Disposition("follow_up", d.case, acknowledge=refusal is None, no_ack_reason=refusal,
                       reason=f"{reason}: a new case linked to it")


def customer_address(mail: ParsedMail, envelope_from: str | None = None) -> str | None:
    """Where an automatic answer (acknowledgement, refusal) goes: the envelope sender, as
    RFC 3834 §4 says, and nowhere when that is the null path ``<>``.

    The envelope sender is what SMTP, LMTP or ``maild inject -f`` handed over, else the
    Return-Path the delivering server wrote (mail read over IMAP), else From. Never
    Reply-To: anyone can write one, and an automatic answer to it would mail a third party
    on a stranger's say-so (people's replies, an agent's, do go where the customer asks).
    """
    path = safety.return_path(mail, envelope_from)
    return safety.path_address(path) if path is not None else mail.sender_email


def _policy(ctx: IntakeContext, queue_id: int) -> AckPolicy:
    # A case may sit in a queue that was since removed from config: it gets the defaults.
    queue = ctx.config.queues.get(ctx.queue_name(queue_id)) or QueueConfig(addresses=("removed@queue.invalid",))
    window = queue.reopen_window_days if queue.reopen_window_days is not None else ctx.config.cases.reopen_window_days
    return AckPolicy(
        enabled=ctx.config.acknowledgements.enabled and queue.acknowledge,
        historical=ctx.historical,
        max_per_sender_per_hour=ctx.config.acknowledgements.max_per_sender_per_hour,
        reopen_window=timedelta(days=window),
        on_reply_to_resolved=queue.on_reply_to_resolved,
    )


# Lookups every message makes, built once and run on the connection: through the ORM,
# building and routing each statement cost more than running it. Being on the connection,
# they do not flush the session, so they do not see the rows of the batch's earlier
# messages that are still pending there (a batch is flushed once, at its end, see
# maild.processing): their callers add those (``db.pending``).
_DUPLICATES_OF = select(Activity.message_id, Activity.case_id, Activity.from_addr, Activity.text).where(
    Activity.message_id.in_(bindparam("message_ids", expanding=True)), Activity.kind == INCOMING_EMAIL)
_AUTO_ANSWERS = (ACKNOWLEDGEMENT, REFUSAL)  # every automatic answer counts towards the limit
_RECENT_ACKS = select(OutboundMessage.recipient, func.count()).where(
    OutboundMessage.recipient.in_(bindparam("recipients", expanding=True)),
    OutboundMessage.kind.in_(_AUTO_ANSWERS),
    OutboundMessage.created_at > bindparam("since", type_=OutboundMessage.created_at.type),
).group_by(OutboundMessage.recipient)
_NEXT = update(Counter).where(Counter.name == bindparam("counter")).values(value=Counter.value + 1) \
    .returning(Counter.value)


def _duplicate_case(session: Session, mail: ParsedMail) -> tuple[int | None, str | None]:
    """(The case this very message was recorded on already, or None; the reference of a
    case where a different message under its Message-ID was recorded, or None).

    Only the same sender and text make a duplicate: Message-IDs collide in the wild
    (broken clients, list software, forgeries), and a different message under a recorded
    one's Message-ID is processed as a message of its own. A copy delivered to two queues
    is the same message, recorded once."""
    if not mail.message_id:
        return None, None
    recorded: list[_Recorded] = [(row.case_id, row.from_addr, row.text or "") for row in pending(session, Activity)
                                 if row.message_id == mail.message_id and row.kind == INCOMING_EMAIL]
    known: dict[str, list[_Recorded]] | None = session.info.get(_DUPLICATES)
    if known is None or mail.message_id not in known:  # not looked up with its batch, or flushed since
        known = _stored_duplicates(session, [mail.message_id])
    recorded += known[mail.message_id]
    same = next((case_id for case_id, sender, text in recorded if sender == mail.sender_email and text == mail.text),
                None)
    if same is not None or not recorded:
        return same, None
    return None, _reference(session, recorded[0][0])


# A recorded incoming mail, as the duplicate check compares it: (case, sender, text).
_Recorded = tuple[int, str | None, str]


def _stored_duplicates(session: Session, message_ids: list[str]) -> dict[str, list[_Recorded]]:
    """The incoming mail recorded already under each of ``message_ids`` (none: an empty list)."""
    found: dict[str, list[_Recorded]] = {message_id: [] for message_id in message_ids}
    if message_ids:
        for message_id, case_id, sender, text in session.connection().execute(_DUPLICATES_OF,
                                                                             {"message_ids": message_ids}):
            if message_id in found:
                found[message_id].append((case_id, sender, text or ""))
    return found


def _parent_in_line(session: Session, mail: ParsedMail, inbound: InboundMessage, now: datetime,
                    stronger_than: threader.ThreadMatch | None = None) -> str | None:
    """The Message-ID this reply answers if that message is stored but not yet processed.

    With several workers (or after a crash) a reply can come up before the message it
    answers; processing it now would open a second case, or thread it by an older
    Reference onto another case than the one it answers. Only earlier rows count, so two
    messages can never wait for each other, and the wait has a limit. ``stronger_than``:
    the References match found already; only what would outrank it is waited for (the
    In-Reply-To, and newer References).
    """
    candidates = _outranking(mail, stronger_than)
    if not candidates or inbound.received_at < now - PARENT_WAIT_LIMIT:
        return None
    with session.no_autoflush:  # see StoreLookup: the batch is written at its end
        rows = session.execute(
            select(InboundMessage.id, InboundMessage.message_id)
            .where(InboundMessage.queue_id == inbound.queue_id,  # uses the (queue, Message-ID) index
                   InboundMessage.message_id.in_(candidates), InboundMessage.state == RECEIVED,
                   InboundMessage.id < inbound.id)
        ).all()
    for row_id, message_id in rows:
        # An earlier message of this batch is still RECEIVED in the table, not in the session.
        held = session.identity_map.get(Session.identity_key(InboundMessage, row_id))
        if not isinstance(held, InboundMessage) or held.state == RECEIVED:
            return message_id
    return None


def _outranking(mail: ParsedMail, match: threader.ThreadMatch | None) -> list[str]:
    """The Message-IDs the threader would prefer to ``match``'s (all of them without one)."""
    newest_first = list(reversed(mail.references))
    if match is None:
        return list(mail.in_reply_to) + newest_first
    return list(mail.in_reply_to) + newest_first[:newest_first.index(match.key)]


def _snapshot(session: Session, case_id: int, lock: bool = True) -> CaseSnapshot:
    if lock and case_id in session.info.get(_LOCKED_CASES, ()):
        case = session.get(Case, case_id)  # locked and loaded with the batch: no statement
    else:
        case = get_unflushed(session, Case, case_id, with_for_update=lock)
    if case is None:
        raise ProcessingError(f"case {case_id} vanished while threading")
    if lock:  # intake's batch, where the participant check and the handler get the case again
        hold(session, [case])  # not rules replay: its one session would keep every case it reads
    return CaseSnapshot(case.id, case.reference, case.status, case.resolved_at, case.queue_id,
                        survey_open=case.csat_requested_at is not None and case.csat_score is None)


def _reference(session: Session, case_id: int) -> str | None:
    return session.scalar(select(Case.reference).where(Case.id == case_id))


def _recent_acks(session: Session, recipient: str, now: datetime) -> int:
    since = now - timedelta(hours=1)
    counted: tuple[datetime, dict[str, int]] | None = session.info.get(_ACKS)
    if counted is not None and since >= counted[0] and recipient in counted[1]:
        # Counted from a window that opened up to the batch's length earlier: it may count
        # an acknowledgement that has just aged out, never miss one.
        stored = counted[1][recipient]
    else:
        _lock_recipients(session, {recipient})
        stored = _stored_acks(session, {recipient}, since).get(recipient, 0)
    unwritten = sum(1 for row in pending_inserts(session, OutboundMessage) if row["recipient"] == recipient
                    and row["kind"] in _AUTO_ANSWERS and row["created_at"] > since)  # earlier in this batch
    return stored + unwritten


def _lock_recipients(session: Session, recipients: set[str]) -> None:
    """On PostgreSQL, hold a transaction-level advisory lock for each address that automatic
    answers are counted for, until the batch commits.

    The per-sender limit counts what is written; two workers counting the same sender side by
    side would each see room for one more and both send it (measured: 6 acknowledgements in
    an hour against a limit of 5). With the lock, the second counts after the first has
    committed. Taken in sorted order, so two batches cannot wait on each other for them.
    SQLite needs none: its one writer holds the whole database for the transaction."""
    if session.get_bind().dialect.name != "postgresql":
        return
    locked: set[str] = session.info.setdefault(_SENDER_LOCKS, set())
    wanted = sorted(recipients - locked)
    if wanted:
        session.connection().execute(_LOCK_SENDERS, {"keys": wanted})
        locked.update(wanted)


_LOCK_SENDERS = text("SELECT count(pg_advisory_xact_lock(hashtextextended('maild.acks:' || k, 0))) "
                     "FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS u(k, n)")


def _stored_acks(session: Session, recipients: set[str], since: datetime) -> dict[str, int]:
    """Automatic answers written to each of ``recipients`` after ``since`` (absent: none)."""
    if not recipients:
        return {}
    rows = session.connection().execute(_RECENT_ACKS, {"recipients": list(recipients), "since": since})
    return {address: int(count) for address, count in rows}


def _finish(inbound: InboundMessage, outcome: str, case_id: int | None, now: datetime) -> None:
    inbound.state = PROCESSED
    inbound.outcome = outcome
    inbound.case_id = case_id
    inbound.processed_at = now
    inbound.claimed_until = None
    inbound.error = None


def audit(session: Session, case_id: int | None, actor: str, action: str, now: datetime, **details: Any) -> None:
    # A plain row, written after the batch's rows (db.insert_after_flush): nothing reads an
    # audit event back in the transaction that writes it, and as ORM objects a batch's
    # events were a row-by-row INSERT ... RETURNING each on SQLite.
    insert_after_flush(session, AuditEvent, [
        {"case_id": case_id, "at": now, "actor": actor, "action": action, "details": details}])


# Handlers, one per Disposition.action ---------------------------------------


def _create(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
            d: Disposition, now: datetime) -> Outcome:
    policy = ctx.config.queues[ctx.queue_name(inbound.queue_id)].unknown_senders
    if d.rules is not None and d.rules.fields.account_from_domain:
        policy = "create_with_account"
    contact = _contact_for(session, mail, now, policy, ctx.config.cases.public_mail_domains)
    case = _new_case(session, ctx, inbound.queue_id, contact, mail, now, d)
    hits = d.rules.matched() if d.rules else []
    activity = _incoming_activity(session, ctx, case, inbound, mail, now)
    activity.rule_hits = hits or None  # before its INSERT, not an UPDATE after it
    charge = entitlements.Charge(None, False) if ctx.historical else \
        entitlements.check(session, contact.id, contact.account_id, "email", now.date())
    entitlements.attach(session, case, charge, now, f"customer:{contact.email}")
    if case.entitlement_flag:
        _notify_exhausted(session, ctx, case, now)
    _start_sla(session, ctx, case, mail, charge, now)
    agentnotices.new_case(session, ctx, case, mail.text_stripped, now)
    if case.owner is not None:  # routed to an agent by the rules or a team
        agentnotices.assigned(session, ctx, case, case.owner.name, "rules", now)
    actor = f"customer:{contact.email}"
    audit(session, case.id, actor, "created", now, queue=case.queue.name, inbound_id=inbound.id,
          previous=d.case.reference if d.case else None, rules=[h["rule"] for h in hits] or None,
          owner=case.owner.name if case.owner else None, priority=case.priority)
    if d.case is not None:
        audit(session, d.case.id, actor, "follow_up_created", now, follow_up=case.reference)
    acknowledged, note = False, d.no_ack_reason
    if d.acknowledge:
        acknowledged, note = _acknowledge(session, ctx, case, mail, now, customer_address(mail, inbound.envelope_from),
                                          suggest=d.rules.fields.suggest_articles if d.rules else 0)
    if not acknowledged:
        audit(session, case.id, "system", "acknowledgement_skipped", now, reason=note)
    _finish(inbound, "created" if d.case is None else "follow_up", case.id, now)
    return Outcome("created" if d.case is None else "follow_up", case.reference, None, acknowledged, note)


def _append(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
            d: Disposition, now: datetime) -> Outcome:
    case = _case(session, d)
    _incoming_activity(session, ctx, case, inbound, mail, now)
    actor = f"customer:{mail.sender_email}"
    if d.action == "reopen":
        old = (case.status, case.status_reason)
        case.status, case.status_reason, case.resolved_at = ACTIVE, "In Progress", None
        audit(session, case.id, actor, "reopened", now, previous_status=old[0], previous_reason=old[1])
    elif case.status_reason == "Waiting for Details":
        # The customer answered: the ball is back with the support team.
        case.status_reason = "In Progress"
        audit(session, case.id, actor, "status_changed", now, previous_reason="Waiting for Details",
              status_reason="In Progress")
        assert ctx.calendar is not None
        sla.status_changed(session, case.id, "In Progress", ctx.rules, ctx.calendar, now)
    audit(session, case.id, actor, "email_received", now, inbound_id=inbound.id, message_id=mail.message_id)
    rated = _rate_article(session, ctx, case, mail, d, now)
    agentnotices.customer_reply(session, ctx, case, mail.text_stripped, now)
    action = "reopened" if d.action == "reopen" else "threaded"
    _finish(inbound, action, case.id, now)
    return Outcome(action, case.reference, note=rated)


def _article_rating(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
                    d: Disposition, now: datetime) -> Outcome:
    """A customer's rating of an article on a resolved case: kept and counted; the case stays resolved."""
    case = _case(session, d)
    _incoming_activity(session, ctx, case, inbound, mail, now)
    rated = _rate_article(session, ctx, case, mail, d, now)
    _finish(inbound, "kb_rating", case.id, now)
    return Outcome("kb_rating", case.reference, note=rated)


def _rate_article(session: Session, ctx: IntakeContext, case: Case, mail: ParsedMail, d: Disposition,
                  now: datetime) -> str | None:
    """Record a customer's rating of one of the case's articles; "it helped" on an open case
    (not one this mail reopens) resolves it when the queue says so (``resolve_on_helpful_article``)."""
    vote = d.vote
    if vote is None:
        return None
    actor = f"customer:{mail.sender_email}"
    note = articleratings.record(session, vote, now)
    audit(session, case.id, actor, "kb_rated", now, article=vote.article, helpful=vote.verdict.helpful,
          comment=vote.verdict.comment[:200] or None)
    if d.action == "append" and vote.verdict.settles_it and case.status == ACTIVE \
            and ctx.config.queues[case.queue.name].resolve_on_helpful_article:
        from maild import casework  # maild.casework builds on this module

        reason = ctx.config.cases.status_reasons.all()[RESOLVED][0]
        try:
            casework.resolve(session, ctx, case, resolution_type=reason, minutes=None, actor=actor, now=now,
                             narrative=f"The customer confirmed that knowledge article {vote.article} solved it.")
            note += "; case resolved"
        except MaildError as exc:  # a process stage or transition rule forbids it: an agent decides
            audit(session, case.id, "system", "resolve_skipped", now, reason=str(exc))
    return note


def _agent_mail(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
                d: Disposition, now: datetime) -> Outcome:
    """A verified agent's mail: its commands run, then its text goes to the customer unless it
    is an internal note (``#note`` or the comment address). A bad command does nothing at
    all: the mail is kept as a note and the agent is told which command was wrong."""
    from maild import agentmail  # it runs casework, which needs this module loaded first

    case = _case(session, d)
    agent = ctx.config.agent_for_address(mail.sender_email)
    assert agent is not None and mail.sender_email is not None
    parsed = agentcommands.parse(mail.text)
    errors, done = list(parsed.errors), []
    relay = d.action == "agent_reply" and not parsed.is_note and bool(parsed.body.strip()) and not errors
    if not errors:
        try:
            with session.begin_nested():  # a failing command undoes the ones before it
                if relay:
                    _relay(session, ctx, inbound, mail, case, agent.name, parsed, now)
                narrative = agentcommands.parse(mail.text_stripped).body
                done = agentmail.run(session, ctx, case, parsed.commands, agent.name, narrative, now)
        except MaildError as exc:
            errors, relay = [str(exc)], False
            session.expire_all()  # the savepoint's changes are gone; reload what is left
            case = _case(session, d)
    if not relay:
        label = "not relayed: command error" if errors else "internal note"
        _note(session, ctx, case, inbound, mail, label, f"agent:{agent.name}", d.reason or label, now)
    if parsed.commands or errors:
        agentmail.report(session, ctx, case, mail.sender_email, done, errors, now)
    action = "command_error" if errors else ("relayed" if relay else "noted")
    _finish(inbound, action, case.id, now)
    if errors:
        inbound.error = "; ".join(errors)
    return Outcome(action, case.reference, note="; ".join(errors or done) or (
        f"to {case.contact.email}" if relay and case.contact else None))


def _relay(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail, case: Case, agent: str,
           parsed: agentcommands.Parsed, now: datetime) -> None:
    """Send the agent's text to the customer; with commands, the text without their lines (and
    without the HTML part, which still holds them)."""
    if case.contact is None:
        raise MaildError(f"case {case.reference} has no customer to relay the reply to")
    files = tuple(FileAttachment(a.filename, a.content_type, a.content) for a in mail.attachments if not a.inline)
    in_reply_to, refs = thread_headers(session, case)
    queue = case.queue
    draft = Draft(
        kind=REPLY, from_name=f"{agent} ({queue.display_name})", from_addr=queue.address,
        to_name=case.contact.name, to_addr=case.contact.email,
        subject=tag_subject(f"Re: {case.title}", case.reference), text=parsed.body if parsed.commands else mail.text,
        html=None if parsed.commands else mail.html, reply_to=ctx.reply_address(queue, case), in_reply_to=in_reply_to,
        references=refs, attachments=files,
    )
    activity = outgoing_activity(session, ctx, case, draft, now, agent_id=ctx.registry.agent_ids.get(agent),
                                  inbound=inbound, mail=mail)
    if case.first_response_at is None:
        case.first_response_at = now
    sla.met(session, case.id, "first_response", now)  # the first agent reply that goes to the customer
    audit(session, case.id, f"agent:{agent}", "agent_reply", now, message_id=activity.message_id,
          inbound_id=inbound.id)


def _note(session: Session, ctx: IntakeContext, case: Case, inbound: InboundMessage, mail: ParsedMail, label: str,
          actor: str, reason: str, now: datetime, action: str = "internal_note") -> None:
    """Keep a mail on the case as an internal note (never sent to the customer), marked ``label``."""
    activity = _incoming_activity(session, ctx, case, inbound, mail, now)
    activity.kind, activity.subject = NOTE, f"[{label}] {mail.subject}"[:998]
    audit(session, case.id, actor, action, now, inbound_id=inbound.id, label=label, reason=reason)


def _keep_closed(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
                 d: Disposition, now: datetime) -> Outcome:
    """A reply to a resolved case in a queue that keeps such cases closed: filed, answered."""
    case = _case(session, d)
    _incoming_activity(session, ctx, case, inbound, mail, now)
    audit(session, case.id, f"customer:{mail.sender_email}", "reply_to_closed_case", now, inbound_id=inbound.id)
    to_addr = customer_address(mail, inbound.envelope_from)
    answered = d.acknowledge and to_addr is not None
    if answered:
        senders.refusal(session, ctx.renderer, case.queue, mail, to_addr or "", now=now, template=CLOSED_TEMPLATE,
                        message_id_domain=ctx.config.outgoing.message_id_domain, case=case,
                        reply_to=ctx.reply_address(case.queue, case))
    _finish(inbound, "kept_closed", case.id, now)
    return Outcome("kept_closed", case.reference, note="answered" if answered else f"not answered: {d.no_ack_reason}")


def _csat(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
          d: Disposition, now: datetime) -> Outcome:
    case = _case(session, d)
    answer = csat.rating(mail.text_stripped)
    assert answer is not None and d.rating == answer[0]
    _incoming_activity(session, ctx, case, inbound, mail, now)
    csat.record(case, answer[0], answer[1], now)
    audit(session, case.id, f"customer:{mail.sender_email}", "csat_answered", now, score=answer[0],
          inbound_id=inbound.id)
    _finish(inbound, "csat", case.id, now)
    return Outcome("csat", case.reference, note=f"rated {answer[0]}/5")


def _quarantine(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
                d: Disposition, now: datetime) -> Outcome:
    raise ProcessingError(d.reason or "quarantined by decision")


def _refuse(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
            d: Disposition, now: datetime) -> Outcome:
    to_addr = customer_address(mail, inbound.envelope_from)
    answered = d.acknowledge and to_addr is not None
    if answered:
        senders.refusal(session, ctx.renderer, inbound.queue, mail, to_addr or "",
                        message_id_domain=ctx.config.outgoing.message_id_domain, now=now,
                        template=d.template or senders.REFUSAL_TEMPLATE)
    _finish(inbound, "refused", None, now)
    inbound.error = d.reason if answered else f"{d.reason}; not answered: {d.no_ack_reason}"
    return Outcome("refused", note=inbound.error)


def _unverified_note(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
                     d: Disposition, now: datetime) -> Outcome:
    case = _case(session, d)
    _note(session, ctx, case, inbound, mail, d.label or "unverified", f"unverified:{mail.sender_email}",
          d.reason or "", now, action="unverified_agent_mail")
    if d.label == "unverified" and mail.sender_email:
        # Told, so a reply the agent believes sent does not sit unseen as a note; never for
        # an automatic mail (a loop) or imported history. A forgery tells the real agent.
        notice(session, ctx, case, mail.sender_email, NOT_RELAYED_TEMPLATE,
               {"reason": d.reason, "mail_subject": mail.subject,
                "agent_address": ctx.reply_address(case.queue, case, replytokens.AGENT)},
               f"Not sent to the customer: {mail.subject}", now)
    _finish(inbound, "unverified_note", case.id, now)
    return Outcome("unverified_note", case.reference, note=d.reason)


def _ignore(session: Session, ctx: IntakeContext, inbound: InboundMessage, mail: ParsedMail,
            d: Disposition, now: datetime) -> Outcome:
    # Kept with its raw bytes and marked, never dropped: `maild inbound show` tells why.
    _finish(inbound, "ignored", None, now)
    inbound.error = d.reason
    return Outcome("ignored", note=d.reason)


_Handler = Callable[[Session, IntakeContext, InboundMessage, ParsedMail, Disposition, datetime], Outcome]
_HANDLERS: dict[str, _Handler] = {
    "create": _create,
    "follow_up": _create,
    "append": _append,
    "reopen": _append,
    "agent_reply": _agent_mail,
    "agent_note": _agent_mail,
    "keep_closed": _keep_closed,
    "csat": _csat,
    "kb_rating": _article_rating,
    "quarantine": _quarantine,
    "ignore": _ignore,
    "refuse": _refuse,
    "unverified_note": _unverified_note,
}


# Building blocks ------------------------------------------------------------


def _case(session: Session, d: Disposition) -> Case:
    assert d.case is not None
    case = get_unflushed(session, Case, d.case.id)  # it may be one this batch made
    assert case is not None
    return case


def prefetch(session: Session, mails: list[ParsedMail], now: datetime) -> None:
    """Look up what each message of a batch asks in one query each, not one per message:
    whether it was recorded already (for ``_duplicate_case``), its sender's customer record
    and, for a new one, their company's account (for ``_contact_for``), and the acknowledgements they had in the last hour (for
    ``_recent_acks``). A query per message and question cost about a fifth of the writer's
    time (the duplicate check alone 5%)."""
    session.info[_DUPLICATES] = _stored_duplicates(session, list({m.message_id for m in mails if m.message_id}))
    addresses = {mail.sender.email for mail in mails if mail.sender is not None}
    found = _contacts(session, addresses)
    session.info[_CONTACTS] = {email: found.get(email) for email in addresses}
    session.info[_ACCOUNTS] = senders.accounts_by_domain(  # for the senders new to the customer records
        session, {email.rpartition("@")[2] for email in addresses if email not in found and "@" in email})
    recipients = {address for address in map(customer_address, mails) if address}
    since = now - timedelta(hours=1)
    _lock_recipients(session, recipients)  # before counting: see _lock_recipients
    counts = _stored_acks(session, recipients, since)
    session.info[_ACKS] = (since, {address: counts.get(address, 0) for address in recipients})
    _prefetch_threads(session, mails)


def _prefetch_threads(session: Session, mails: list[ParsedMail]) -> None:
    """Where the Message-IDs the batch's replies name are stored (for StoreLookup), and the
    cases they thread onto, locked in id order and loaded (for ``_snapshot``). A lookup and
    a locking load per reply were 8% of the writer's time."""
    wanted = sorted({mid for mail in mails for mid in (*mail.in_reply_to, *mail.references)})
    found = {mid: (case_id, into) for mid, case_id, into in StoreLookup(session).stored(wanted)}
    session.info[_THREADS] = found
    ids = sorted({case_id for case_id, into in found.values() if into is None})
    cases = [] if not ids else list(session.scalars(
        select(Case).where(Case.id.in_(ids)).order_by(Case.id).with_for_update()))
    hold(session, cases)
    session.info[_LOCKED_CASES] = {case.id for case in cases}


def _contacts(session: Session, emails: set[str]) -> dict[str, Contact]:
    """The stored contacts with these addresses, by address; without flushing the batch."""
    if not emails:
        return {}
    with session.no_autoflush:
        return {c.email: c for c in session.scalars(select(Contact).where(Contact.email.in_(emails)))}


# What a batch remembers. Dropped if the batch (or a message's savepoint) rolls back, since
# a contact it made may be gone; the counts and duplicates also at a flush, which writes the
# pending rows that _recent_acks and _duplicate_case look through for the batch's own.
_CONTACTS, _ACKS, _DUPLICATES = "maild.contacts", "maild.recent_acks", "maild.duplicates"
_ACCOUNTS = "maild.accounts"  # domain -> account id (None: none yet), for new customers
# Stored before the batch, and locked by it until it ends: kept through a rollback too.
_THREADS, _LOCKED_CASES = "maild.threads", "maild.locked_cases"
# The addresses whose automatic answers this transaction holds the advisory lock for.
_SENDER_LOCKS = "maild.sender_locks"
_LOOKUP_CHUNK = 500  # Message-IDs per statement
forget_on_rollback(_CONTACTS)
forget_on_rollback(_ACCOUNTS)
forget_on_rollback(_ACKS, on_flush=True)
forget_on_rollback(_DUPLICATES, on_flush=True)


def _contact_for(session: Session, mail: ParsedMail, now: datetime, policy: str = "create",
                 public_domains: Collection[str] = ()) -> Contact:
    if mail.sender is None:
        raise ProcessingError("the message has no usable From address")
    email = mail.sender.email
    known: dict[str, Contact | None] | None = session.info.get(_CONTACTS)
    # Without flushing the batch's pending rows: a new contact is written at once (below),
    # so the lookup finds those of the batch's earlier messages too.
    with session.no_autoflush:
        contact = known[email] if known is not None and email in known else _contacts(session, {email}).get(email)
        if contact is None:  # if another worker has made it since, the insert finds it
            account_id = senders.account_for_domain(session, mail.sender_domain, now, public_domains,
                                                    session.info.get(_ACCOUNTS)) \
                if policy == "create_with_account" else None
            contact = _insert_contact(session, email, mail.sender.name, now, account_id)
    if known is not None:
        known[email] = contact
    if not contact.name and mail.sender.name:
        contact.name = mail.sender.name
    return contact


def _insert_contact(session: Session, email: str, name: str, now: datetime, account_id: int | None) -> Contact:
    """The new contact, or the one another worker has just written.

    One INSERT, not an ORM add: the savepoint the ORM would need for a possible conflict
    would flush the whole batch so far. Its RETURNING loads the row into the session."""
    dialect = session.get_bind().dialect.name
    make = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = make(Contact).values(email=email, name=name, created_at=now, account_id=account_id) \
        .on_conflict_do_nothing(index_elements=[Contact.email]).returning(Contact)
    with session.no_autoflush:
        made = session.scalars(statement).one_or_none()
    return made if made is not None else _contacts(session, {email})[email]


def next_number(session: Session, name: str) -> int:
    """The next value of a named counter; the row lock serialises concurrent writers."""
    value = session.connection().execute(_NEXT, {"counter": name}).scalar_one_or_none()
    if value is None:
        session.add(Counter(name=name, value=1))
        session.flush()
        return 1
    return int(value)


def _new_case(session: Session, ctx: IntakeContext, queue_id: int, contact: Contact, mail: ParsedMail,
              now: datetime, d: Disposition) -> Case:
    prefix = ctx.config.cases.reference_prefix
    fields = new_case_fields(d.rules, mail, queue=ctx.queue_name(queue_id), queue_id=queue_id, prefix=prefix,
                             registry=ctx.registry)
    number, case_id = _case_keys(session)
    owner_id = _team_owner(session, ctx, d) or fields.owner_id
    case = Case(**given(
        id=case_id,
        reference=make_reference(prefix, number),
        title=fields.title,
        contact_id=contact.id,
        account_id=contact.account_id,
        queue_id=fields.queue_id,
        owner_id=owner_id,
        status=ACTIVE,
        status_reason="In Progress",
        origin=fields.origin,
        priority=fields.priority,
        severity=fields.severity,
        subject_id=fields.subject_id,
        created_at=now,
        updated_at=now,
        previous_case_id=d.case.id if d.case else None,
    ))
    # It stays pending until the batch is flushed, and a pending object's relationships are
    # not loaded from its keys: they are set here.
    case.contact, case.queue = contact, session.get_one(Queue, fields.queue_id)
    case.owner = session.get_one(Agent, owner_id) if owner_id is not None else None
    session.add(case)
    return case


def _case_keys(session: Session) -> tuple[int, int]:
    """A new case's number and primary key, both known before its row is written.

    With its id known up front, a new case needs no flush of its own: every row that points
    at it is written in the batch's one flush (see maild.processing).
    On PostgreSQL both come from sequences, in one statement. A counter row would stay locked
    until the whole batch commits, which serialises every worker's case creation and lets
    two workers deadlock on it; a sequence hands out numbers without a lock, and a rolled-back
    batch leaves a gap, which is harmless (references also carry a random suffix).
    On SQLite, which has a single writer holding the database for the whole transaction, the
    number is the "case" counter's and the id is the largest one plus one, as SQLite itself
    would choose; both are read once per transaction and counted on from there, and the
    counter is written back with the batch's flush (an UPDATE per case was 3% of intake).
    """
    if session.get_bind().dialect.name == "postgresql":
        number, case_id = session.connection().execute(_PG_CASE_KEYS).one()  # no flush: see above
        return int(number), int(case_id)
    transaction = session.get_transaction()
    last = session.info.get(_LAST_CASE_KEYS)
    if last is None or last[0] is not transaction:
        connection = session.connection()
        last = (transaction, largest_id(connection, Case), int(connection.execute(_CASE_COUNTER).scalar() or 0))
    case_id, number = last[1] + 1, last[2] + 1
    session.info[_LAST_CASE_KEYS] = (transaction, case_id, number)
    write_at_flush(session, _CASE_COUNTER_WRITE, _SET_CASE_COUNTER, {"value": number})
    return number, case_id


_PG_CASE_KEYS = text("SELECT nextval('case_number_seq'), nextval(pg_get_serial_sequence('cases', 'id'))")
_CASE_COUNTER = select(Counter.value).where(Counter.name == "case")
_SET_CASE_COUNTER = sqlite_insert(Counter).values(name="case", value=bindparam("value")) \
    .on_conflict_do_update(index_elements=[Counter.name], set_={"value": bindparam("value")})
_LAST_CASE_KEYS = "maild.last_case_keys"
_CASE_COUNTER_WRITE = "maild.case_counter"


def _start_sla(session: Session, ctx: IntakeContext, case: Case, mail: ParsedMail, charge: entitlements.Charge,
               now: datetime) -> None:
    if not ctx.rules.slas or ctx.historical:
        return
    assert ctx.calendar is not None
    queue = ctx.queue_name(case.queue_id)
    facts = case_facts(session, ctx.rules, mail, queue, case.priority, case.subject_id, ctx.calendar.is_open(now),
                       charge.entitlement.name if charge.entitlement else None)
    chosen = sla.choose(ctx.rules, facts, queue, charge.entitlement.sla if charge.entitlement else None)
    if chosen is not None:
        sla.start(session, case, chosen, ctx.calendar, now)


def _notify_exhausted(session: Session, ctx: IntakeContext, case: Case, now: datetime) -> None:
    """Tell the configured people that a case was opened on an exhausted entitlement."""
    for address in ctx.config.entitlements.notify:
        notice(session, ctx, case, address, EXHAUSTED_NOTICE, {"contact": case.contact, "flag": case.entitlement_flag},
               f"Entitlement exhausted: {case.title}", now)


def notice(session: Session, ctx: IntakeContext, case: Case, to_addr: str, template: str, context: dict[str, Any],
           fallback_subject: str, now: datetime, *, kind: str = NOTICE, role: str = replytokens.AGENT,
           to_name: str = "") -> None:
    """Queue an automatic, templated mail about ``case``: by default an internal notice (to
    an agent, a lead, a manager), or with ``kind`` and ``role`` one to the customer (a survey).

    The template also sees ``case``, ``queue`` and ``now``. Replies go to the case's signed
    address for ``role``: the agents' one lets an agent answer the customer from a notice.
    """
    queue: Queue = case.queue
    rendered = ctx.renderer.render(template, {"case": case, "queue": queue, "now": now, **context})
    draft = Draft(kind=kind, from_name=queue.display_name, from_addr=queue.address, to_name=to_name, to_addr=to_addr,
                  subject=tag_subject(rendered.subject or fallback_subject, case.reference), text=rendered.text,
                  html=rendered.html, reply_to=ctx.reply_address(queue, case, role), auto_submitted=True)
    enqueue(session, draft, now=now, case_id=case.id, domain=ctx.config.outgoing.message_id_domain)


def _team_owner(session: Session, ctx: IntakeContext, d: Disposition) -> int | None:
    team = ctx.config.team(d.rules.team) if d.rules and d.rules.team else None
    return assignment.choose(session, team, ctx.registry) if team else None


def _addresses(mail_addrs: tuple[Any, ...]) -> str:
    return ", ".join(a.email for a in mail_addrs)


def _attachment_rows(ctx: IntakeContext, mail: ParsedMail) -> list[Attachment]:
    """Store each attachment's bytes by hash (unless a parse worker has) and return its metadata rows."""
    return [
        Attachment(filename=att.filename[:500], content_type=att.content_type[:200], size=len(att.content),
                   sha256=att.sha256 or attachments.store(ctx.data_dir, att.content), content_id=att.content_id,
                   inline=att.inline)
        for att in mail.attachments
    ]


def _incoming_activity(session: Session, ctx: IntakeContext, case: Case, inbound: InboundMessage,
                       mail: ParsedMail, now: datetime, kind: str = INCOMING_EMAIL) -> Activity:
    # By the case's id, known when the case is made, not by the relationship: the flush then
    # has no key to copy over and the case no collection to keep up (its Activity mapper
    # still writes cases first).
    activity = Activity(**given(
        case_id=case.id, kind=kind, created_at=now, message_id=mail.message_id,
        in_reply_to=" ".join(mail.in_reply_to) or None, references=" ".join(mail.references) or None,
        from_addr=mail.sender_email, from_name=mail.sender.name if mail.sender else None,
        to_addrs=_addresses(mail.to), cc_addrs=_addresses(mail.cc), subject=mail.subject, sent_at=mail.date,
        text=mail.text, text_stripped=mail.text_stripped, html=mail.html, inbound_id=inbound.id,
        attachments=_attachment_rows(ctx, mail),
    ))
    session.add(activity)
    if kind == INCOMING_EMAIL:  # automatic mail filed on a case is no news on it
        case.updated_at = now
    return activity


def outgoing_activity(session: Session, ctx: IntakeContext, case: Case, draft: Draft, now: datetime, *,
                       agent_id: int | None = None, inbound: InboundMessage | None = None,
                       mail: ParsedMail | None = None) -> Activity:
    """Record an outgoing mail on the case and put it in the outbox, under one Message-ID.

    The message is written first, so an address the email package refuses (ValueError)
    leaves nothing behind in the session.
    """
    message_id, raw = outbox.new_message(draft, now=now, domain=ctx.config.outgoing.message_id_domain)
    activity = Activity(**given(
        case_id=case.id, kind=OUTGOING_EMAIL, created_at=now, message_id=message_id,
        in_reply_to=draft.in_reply_to, references=" ".join(draft.references) or None,
        from_addr=draft.from_addr, from_name=draft.from_name, to_addrs=draft.to_addr, subject=draft.subject,
        sent_at=None, text=draft.text, text_stripped=mail.text_stripped if mail else draft.text, html=draft.html,
        agent_id=agent_id, inbound_id=inbound.id if inbound else None,
        attachments=_attachment_rows(ctx, mail) if mail else [],
    ))
    session.add(activity)
    outbox.queue(session, draft, message_id, raw, now=now, case_id=case.id, activity=activity)
    case.updated_at = now
    return activity


def thread_headers(session: Session, case: Case) -> tuple[str | None, tuple[str, ...]]:
    """In-Reply-To: the customer's latest mail; References: the case's recent Message-IDs."""
    rows = session.execute(
        select(Activity.message_id, Activity.kind).where(Activity.case_id == case.id, Activity.message_id.is_not(None))
        .order_by(Activity.id.desc()).limit(20)
    ).all()
    ids = [mid for mid, _ in reversed(rows) if mid]
    latest_incoming = next((mid for mid, kind in rows if kind == INCOMING_EMAIL and mid), None)
    return latest_incoming, tuple(ids)


def _acknowledge(session: Session, ctx: IntakeContext, case: Case, mail: ParsedMail,
                 now: datetime, to_addr: str | None, suggest: int = 0) -> tuple[bool, str | None]:
    if to_addr is None:
        return False, "no address to acknowledge"
    queue: Queue = case.queue
    suggestions: list[dict[str, Any]] = []
    if suggest:
        with session.no_autoflush:  # the knowledge base does not need this message's rows: flush them once, later
            suggestions = knowledge.suggestions(session, mail.subject, mail.text_stripped, suggest)
    rendered = ctx.renderer.render(ctx.config.acknowledgements.template, {
        "case": case, "contact": case.contact, "queue": queue, "mail": mail, "now": now, "suggestions": suggestions,
    })
    draft = Draft(
        kind=ACKNOWLEDGEMENT, from_name=queue.display_name, from_addr=queue.address,
        to_name=mail.sender.name if mail.sender and mail.sender.email == to_addr else "", to_addr=to_addr,
        subject=tag_subject(rendered.subject or f"Re: {case.title}", case.reference),
        text=rendered.text, html=rendered.html, reply_to=ctx.reply_address(queue, case), in_reply_to=mail.message_id,
        references=tuple(mail.references) + ((mail.message_id,) if mail.message_id else ()), auto_submitted=True,
    )
    try:
        activity = outgoing_activity(session, ctx, case, draft, now)
    except ValueError as exc:  # an address the email package refuses to write
        return False, f"cannot address acknowledgement: {exc}"
    knowledge.suggested(session, case, [a["id"] for a in suggestions], activity.message_id, now)
    return True, None
