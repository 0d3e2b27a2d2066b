"""The persistent data model: customers, cases, activities, and the durable in- and outboxes.

Every lookup made per message has an index: Activity.message_id (threading),
Case.reference (subject keys), Contact.email (customers), InboundMessage.state and
OutboundMessage.state/next_attempt_at (runners claiming work).
Times are stored as timezone-aware UTC; SQLite hands back naive values, so UtcDateTime
re-attaches the zone on the way out.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy import true as sa_true
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from maild.statuses import ACTIVE, CANCELLED, RESOLVED

__all__ = ["ACTIVE", "CANCELLED", "RESOLVED"]  # re-exported: cases and views use them with the models


class UtcDateTime(TypeDecorator[datetime]):
    """A DateTime that always comes back timezone-aware in UTC, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON}


ORIGINS = ("email", "phone", "web", "chat")
PRIORITIES = ("low", "normal", "high", "urgent")

# Activity kinds.
INCOMING_EMAIL, OUTGOING_EMAIL, NOTE, TASK, PHONE_CALL = (
    "incoming_email",
    "outgoing_email",
    "note",
    "task",
    "phone_call",
)
# Automatic mail filed on a case without acting on it: an out-of-office or other automatic
# reply, and a delivery status notification about the case's mail (maild.bounces).
AUTO_REPLY, BOUNCE = "auto_reply", "bounce"


class Account(Base):
    __tablename__ = "account"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    domain: Mapped[str | None] = mapped_column(String(255), index=True)
    tier: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[datetime]


class Contact(Base):
    __tablename__ = "contact"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    account_id: Mapped[int | None] = mapped_column(ForeignKey("account.id"))
    created_at: Mapped[datetime]
    account: Mapped[Account | None] = relationship()


class Agent(Base):
    __tablename__ = "agent"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    active: Mapped[bool] = mapped_column(default=True)


class Queue(Base):
    __tablename__ = "queue"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200), default="")


class Subject(Base):
    """A node of the hierarchical subject tree (Billing > Invoice Dispute > Wrong Address)."""

    __tablename__ = "subject"
    __table_args__ = (UniqueConstraint("parent_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("subject.id"))
    parent: Mapped[Subject | None] = relationship(remote_side=[id])


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (Index("ix_case_queue_status", "queue_id", "status"),)
    # A new case's id is given before it is written (maild.cases._case_keys), and nothing
    # needs reading back (entitlement_charged's server default is also set here): so a
    # batch's cases go in one executemany on SQLite, instead of a RETURNING per row.
    __mapper_args__ = {"eager_defaults": False}
    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(40), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contact.id"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("account.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=ACTIVE)
    status_reason: Mapped[str] = mapped_column(String(50), default="In Progress")
    origin: Mapped[str] = mapped_column(String(20), default="email")
    priority: Mapped[str] = mapped_column(String(10), default="normal")
    severity: Mapped[str | None] = mapped_column(String(20))
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subject.id"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("agent.id"), index=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queue.id"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    resolution_type: Mapped[str | None] = mapped_column(String(50))
    resolution: Mapped[str | None] = mapped_column(Text)
    time_spent_minutes: Mapped[int | None]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    # A reply after the reopen window opens a new case that points back at the old one.
    previous_case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    # The support contract the case draws on, how much it has taken from it (cases: 1,
    # hours: minutes) so a cancellation can give exactly that back, and why it is flagged.
    entitlement_id: Mapped[int | None] = mapped_column(ForeignKey("entitlement.id"), index=True)
    entitlement_charged: Mapped[int] = mapped_column(default=0, server_default="0")
    entitlement_flag: Mapped[str | None] = mapped_column(String(200))
    # Question, Problem, Request, ...: with the subject it picks the business process flow.
    case_type: Mapped[str | None] = mapped_column(String(50))
    # The case's stage in that process; NULL means its first stage (see maild.processes).
    stage: Mapped[str | None] = mapped_column(String(100))
    stage_entered_at: Mapped[datetime | None]
    # Customer satisfaction: when the survey went out, and the 1-5 answer (maild.csat).
    csat_requested_at: Mapped[datetime | None]
    csat_score: Mapped[int | None]
    csat_comment: Mapped[str | None] = mapped_column(Text)
    csat_at: Mapped[datetime | None]

    contact: Mapped[Contact | None] = relationship()
    queue: Mapped[Queue] = relationship()
    owner: Mapped[Agent | None] = relationship()
    activities: Mapped[list[Activity]] = relationship(back_populates="case", order_by="Activity.id")


class Entitlement(Base):
    """A support contract: so many cases, or hours, for an account or one contact, over a term."""

    __tablename__ = "entitlement"
    __table_args__ = (Index("ix_entitlement_account", "account_id", "end_date"),
                      Index("ix_entitlement_contact", "contact_id", "end_date"))
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("account.id"))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contact.id"))
    start_date: Mapped[date] = mapped_column(Date)
    end_date: Mapped[date] = mapped_column(Date)
    allocation: Mapped[str] = mapped_column(String(10))  # cases | hours
    # In cases, or in minutes for hours.
    total: Mapped[int]
    remaining: Mapped[int]
    channels: Mapped[list[str]] = mapped_column(JSON)
    sla: Mapped[str | None] = mapped_column(String(100))
    decrement_on: Mapped[str] = mapped_column(String(20), default="creation")  # creation | resolution
    on_exhausted: Mapped[str] = mapped_column(String(20), default="flag")  # flag | refuse
    created_at: Mapped[datetime]

    account: Mapped[Account | None] = relationship()
    contact: Mapped[Contact | None] = relationship()


# KPI states, as Dynamics 365 names them.
KPI_IN_PROGRESS, KPI_NEARING, KPI_SUCCEEDED = "In Progress", "Nearing Noncompliance", "Succeeded"
KPI_NONCOMPLIANT, KPI_PAUSED, KPI_CANCELLED = "Noncompliant", "Paused", "Cancelled"


class SlaKpi(Base):
    """One KPI clock of one case: its business-time targets and where it stands.

    ``due_at`` is the next instant the sweeper must act (warning, then failure); it is
    NULL when nothing is left to fire or the clock is paused, so the sweeper's indexed
    query only ever sees clocks that are due.
    """

    __tablename__ = "sla_kpi"
    __table_args__ = (Index("ix_sla_kpi_due", "due_at"), UniqueConstraint("case_id", "kpi"))
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    sla: Mapped[str] = mapped_column(String(200))
    kpi: Mapped[str] = mapped_column(String(30))  # first_response | resolve_by
    state: Mapped[str] = mapped_column(String(30))
    warn_after_s: Mapped[int]
    fail_after_s: Mapped[int]
    started_at: Mapped[datetime]
    # Business seconds used up before the running segment, and when that segment began.
    consumed_s: Mapped[int] = mapped_column(default=0)
    segment_start: Mapped[datetime | None]
    warn_at: Mapped[datetime | None]
    fail_at: Mapped[datetime | None]
    due_at: Mapped[datetime | None]
    warned_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # Only for a flush's order (maild sets case_id): a new case is written before rows pointing at it.
    case: Mapped[Case] = relationship()
    # Paused intervals and fired actions, for `maild sla explain`.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class Activity(Base):
    __tablename__ = "activity"
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime]
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    in_reply_to: Mapped[str | None] = mapped_column(Text)
    references: Mapped[str | None] = mapped_column(Text)
    from_addr: Mapped[str | None] = mapped_column(String(320))
    from_name: Mapped[str | None] = mapped_column(String(200))
    to_addrs: Mapped[str | None] = mapped_column(Text)
    cc_addrs: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    text: Mapped[str | None] = mapped_column(Text)
    text_stripped: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agent.id"))
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_message.id"))
    # The rules that matched when this message created its case: why it went where it went.
    # none_as_null: no rules is SQL NULL whether set or not, so every activity has the same
    # columns and a batch's activities are written in one INSERT (it alternated before).
    rule_hits: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))

    case: Mapped[Case] = relationship(back_populates="activities")
    attachments: Mapped[list[Attachment]] = relationship(back_populates="activity", order_by="Attachment.id")


class Attachment(Base):
    """Metadata of a file stored under the data directory by its SHA-256, never by its name."""

    __tablename__ = "attachment"
    id: Mapped[int] = mapped_column(primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activity.id"), index=True)
    filename: Mapped[str] = mapped_column(String(500), default="")
    content_type: Mapped[str] = mapped_column(String(200))
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_id: Mapped[str | None] = mapped_column(String(500))
    inline: Mapped[bool] = mapped_column(default=False)
    activity: Mapped[Activity] = relationship(back_populates="attachments")


# Inbound states.
RECEIVED, PROCESSED, QUARANTINED = "received", "processed", "quarantined"


class InboundMessage(Base):
    """A message exactly as received, stored before the source is told it was accepted."""

    __tablename__ = "inbound_message"
    __table_args__ = (
        UniqueConstraint("queue_id", "sha256", name="uq_inbound_queue_sha256"),
        UniqueConstraint("queue_id", "message_id", name="uq_inbound_queue_message_id"),
        UniqueConstraint("queue_id", "source", "source_key", name="uq_inbound_queue_source_key"),
        Index("ix_inbound_state_id", "state", "id"),
        Index("ix_inbound_unacked", "queue_id", "source_acked"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queue.id"))
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(998))
    source: Mapped[str] = mapped_column(String(20))
    source_key: Mapped[str | None] = mapped_column(String(500))
    envelope_from: Mapped[str | None] = mapped_column(String(320))
    received_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(20), default=RECEIVED)
    attempts: Mapped[int] = mapped_column(default=0)
    claimed_until: Mapped[datetime | None]
    # The worker holding the lease; see maild.liveness for taking over from a dead one.
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(40))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    # False while the source still has to be told (IMAP: move, flag or delete the message).
    source_acked: Mapped[bool] = mapped_column(default=True, server_default=sa_true())
    # A different message (other sender or body) under a Message-ID the queue already held:
    # the id of the stored one. Such a message is kept under its bytes' key, message_id
    # None, so that (queue, Message-ID) stays the key a redelivery is recognised by.
    collides_with: Mapped[int | None]

    queue: Mapped[Queue] = relationship()
    # Only for a flush's order (maild sets case_id): a new case is written before rows pointing at it.
    case: Mapped[Case | None] = relationship()
    content: Mapped[InboundRaw] = relationship(viewonly=True)  # read only: intake inserts the bytes itself

    @property
    def raw(self) -> bytes:
        """The message's bytes (a query of their own unless loaded with the row)."""
        return self.content.raw


class InboundRaw(Base):
    """A stored message's bytes, in a row of their own.

    Intake updates an InboundMessage row twice (its claim, its outcome), and SQLite writes a
    changed row out whole, overflow pages and all: with the bytes in it, those two updates
    wrote each message's 17 KB twice more, to the WAL and again at its checkpoint."""

    __tablename__ = "inbound_raw"
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_message.id", ondelete="CASCADE"),
                                            primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)


# Outbound states. BOUNCED: a DSN came back for it (maild.bounces); SUPPRESSED: not sent, its
# recipient's address bounced hard too often (Suppression).
PENDING, SENDING, SENT, FAILED, UNKNOWN = "pending", "sending", "sent", "failed", "unknown"
BOUNCED, SUPPRESSED = "bounced", "suppressed"


class OutboundMessage(Base):
    """The transactional outbox: a fully rendered message waiting for the dispatcher."""

    __tablename__ = "outbound_message"
    __table_args__ = (
        Index("ix_outbound_state_due", "state", "next_attempt_at"),
        Index("ix_outbound_recipient_kind_created", "recipient", "kind", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    activity_id: Mapped[int | None] = mapped_column(ForeignKey("activity.id"))
    kind: Mapped[str] = mapped_column(String(30))
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    mail_from: Mapped[str] = mapped_column(String(320))
    recipient: Mapped[str] = mapped_column(String(320))
    rcpt_to: Mapped[list[str]] = mapped_column(JSON)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(20), default=PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # No relationships: rows are written as plain rows after the ORM rows they point at
    # (outbox.queue), and read by column.


class Bounce(Base):
    """A delivery status notification (RFC 3464) received, one row per failed recipient it
    reports: matched to the outgoing message and case it is about, or unmatched (no case)."""

    __tablename__ = "bounce"
    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime]
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_message.id"), index=True)
    outbound_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_message.id"))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    original_message_id: Mapped[str | None] = mapped_column(String(998))
    recipient: Mapped[str | None] = mapped_column(String(320), index=True)
    action: Mapped[str] = mapped_column(String(20))  # failed, delayed, ... (RFC 3464 Action)
    status: Mapped[str | None] = mapped_column(String(20))  # 5.1.1
    diagnostic: Mapped[str | None] = mapped_column(Text)
    hard: Mapped[bool] = mapped_column(default=False)


class Suppression(Base):
    """An address maild no longer mails: it bounced hard ``[outgoing] suppress_after_bounces``
    times. Kept after an admin lifts it (``maild bounces lift``), with who and when."""

    __tablename__ = "suppression"
    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    hard_bounces: Mapped[int] = mapped_column(default=0)
    last_bounce_at: Mapped[datetime | None]
    suppressed_at: Mapped[datetime | None]  # None: counting, or lifted
    reason: Mapped[str | None] = mapped_column(Text)
    lifted_at: Mapped[datetime | None]
    lifted_by: Mapped[str | None] = mapped_column(String(200))


class AuditEvent(Base):
    __tablename__ = "audit_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Only for a flush's order (maild sets case_id): a new case is written before rows pointing at it.
    case: Mapped[Case | None] = relationship()


class MailboxState(Base):
    """Where an IMAP poller is in its mailbox, who polls it, and how the last poll went."""

    __tablename__ = "mailbox_state"
    queue_id: Mapped[int] = mapped_column(ForeignKey("queue.id"), primary_key=True)
    folder: Mapped[str] = mapped_column(String(500))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    # The highest UID stored under this UIDVALIDITY: the next poll asks for UID last_uid+1:*.
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    last_poll_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None]
    failing: Mapped[bool] = mapped_column(default=False)
    backlog: Mapped[int] = mapped_column(default=0)
    # One poller per mailbox across all workers: the owner renews its lease while it polls.
    owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None]


class Counter(Base):
    """Named sequences (case numbers) that work the same on SQLite and PostgreSQL."""

    __tablename__ = "counter"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


# Knowledge base (maild.knowledge): article states.
KB_DRAFT, KB_PUBLISHED, KB_ARCHIVED = "draft", "published", "archived"


class KbArticle(Base):
    """A knowledge article: its number, state and usage; the text lives in its versions.

    The search index (SQLite FTS5 table ``kb_fts``, or a generated tsvector column with a GIN
    index on PostgreSQL)
    is built by the migration per dialect and kept in step by maild.knowledge.
    """

    __tablename__ = "kb_article"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(unique=True)
    # What `kb import` matches a file by (its front matter id, or the file name).
    slug: Mapped[str | None] = mapped_column(String(200), unique=True)
    state: Mapped[str] = mapped_column(String(20), default=KB_DRAFT)
    current_version: Mapped[int] = mapped_column(default=1)
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subject.id"))
    language: Mapped[str] = mapped_column(String(20), default="en")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    published_at: Mapped[datetime | None]
    times_linked: Mapped[int] = mapped_column(default=0, server_default="0")
    times_sent: Mapped[int] = mapped_column(default=0, server_default="0")
    times_resolved: Mapped[int] = mapped_column(default=0, server_default="0")
    helpful_yes: Mapped[int] = mapped_column(default=0, server_default="0")
    helpful_no: Mapped[int] = mapped_column(default=0, server_default="0")


class KbArticleVersion(Base):
    """One version of an article's text; editing a published article adds one, old ones stay."""

    __tablename__ = "kb_article_version"
    __table_args__ = (UniqueConstraint("article_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("kb_article.id"))
    version: Mapped[int]
    title: Mapped[str] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(Text)  # Markdown
    keywords: Mapped[str] = mapped_column(String(1000), default="")  # comma-separated
    created_at: Mapped[datetime]
    author: Mapped[str] = mapped_column(String(200))


class KbCaseLink(Base):
    """An article linked to a case (sent to its customer, or linked by hand)."""

    __tablename__ = "kb_case_link"
    __table_args__ = (UniqueConstraint("article_id", "case_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("kb_article.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    linked_at: Mapped[datetime]
    sent: Mapped[bool] = mapped_column(default=False)
    # Only offered in the acknowledgement so far: no agent chose it, so it counts as linked
    # (and as resolving the case) only once the customer says it helped.
    suggested: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    message_id: Mapped[str | None] = mapped_column(String(998))  # the latest mail that carried it
    helpful: Mapped[bool | None]  # the customer's rating by mail (maild.articleratings)
    rated_at: Mapped[datetime | None]
    rating_comment: Mapped[str | None] = mapped_column(Text)


class ReportRun(Base):
    """A scheduled report mailed for one period (maild.reportmail): the unique key makes
    it go out once per period, across restarts and workers."""

    __tablename__ = "report_run"
    __table_args__ = (UniqueConstraint("name", "period"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(20))  # 2026-11-23 (daily) or 2026-W48 (weekly)
    sent_at: Mapped[datetime]
    recipients: Mapped[int]
