"""The Prometheus side of ``maild run``: its metric objects in a registry of their own, and
the gauges read from the database at scrape time.

Each ``Metrics`` has a registry of its own (never prometheus_client's global one), so two
daemons in one process, or two tests, never share a count. Counters are per process: with
several workers, sum them over the workers' scrapes. The code that counts calls the light
hooks in ``maild.metrics``; only the daemon imports this module (prometheus_client takes a
tenth of a second to import, which ``maild inject`` must not pay).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from maild.db import transaction
from maild.errors import TemporaryFailure
from maild.models import FAILED, PENDING, QUARANTINED, RECEIVED, SENDING, SUPPRESSED, UNKNOWN, InboundMessage, \
    MailboxState, OutboundMessage

log = logging.getLogger("maild.metrics")

# Seconds from storing a message to committing its case: intake is usually well under a
# second; minutes mean a backlog or a message waiting for the one it answers.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# Everything not sent, until an admin acts. Not "sent" or "bounced" (sent, then a bounce came
# back): they only grow, and counting them would read more rows at every scrape.
OUTBOX_STATES = (PENDING, SENDING, FAILED, UNKNOWN, SUPPRESSED)


class Metrics:
    """The metric objects of one daemon, labelled by queue name."""

    def __init__(self, queue_names: Mapping[int, str], factory: sessionmaker[Session]) -> None:
        # The *_created series (a timestamp per labelled counter) double the output for nothing
        # a dashboard uses; the setting is process-wide, and only the daemon keeps metrics.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.queue_names = dict(queue_names)
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("maild_messages_received", "Messages stored by this worker's SMTP/LMTP listener "
                                "and IMAP pollers (duplicates not counted)", ["queue"], registry=r)
        self.processed = Counter("maild_messages_processed", "Messages turned into case data, by outcome",
                                 ["queue", "outcome"], registry=r)
        self.quarantined = Counter("maild_messages_quarantined", "Messages quarantined while processing",
                                   ["queue"], registry=r)
        self.latency = Histogram("maild_processing_latency_seconds", "From storing a message to committing "
                                 "what it did to a case", ["queue"], buckets=LATENCY_BUCKETS, registry=r)
        self.sent = Counter("maild_outbox_sent", "Outgoing messages the relay accepted", registry=r)
        self.resent = Counter("maild_outbox_resent", "Outgoing messages interrupted mid-send (their worker "
                              "died) and sent again with the same Message-ID", registry=r)
        self.send_failures = Counter("maild_outbox_send_failures", "Failed send attempts (temporary: retried; "
                                     "permanent: given up)", ["kind"], registry=r)
        self.poll_errors = Counter("maild_mailbox_poll_errors", "IMAP polls that failed", ["queue"], registry=r)
        self.sla_warnings = Counter("maild_sla_warnings", "SLA clocks that reached their warning", ["queue"],
                                    registry=r)
        self.sla_breaches = Counter("maild_sla_breaches", "SLA clocks that reached their failure", ["queue"],
                                    registry=r)
        for name in self.queue_names.values():  # every queue's series exists from the start, at 0
            for counter in (self.received, self.quarantined, self.poll_errors, self.sla_warnings, self.sla_breaches):
                counter.labels(name)
        for kind in ("temporary", "permanent"):
            self.send_failures.labels(kind)
        r.register(DatabaseCollector(factory, self.queue_names))

    def queue(self, queue_id: int) -> str:
        return self.queue_names.get(queue_id, str(queue_id))


class DatabaseCollector(Collector):
    """Backlogs and mailbox state, read with a few indexed queries at each scrape.

    Read from the database rather than counted in-process, so every worker reports the
    same true figures, including work stored by ``maild inject`` or by other workers.
    """

    def __init__(self, factory: sessionmaker[Session], queue_names: Mapping[int, str]) -> None:
        self.factory, self.queue_names = factory, queue_names

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("maild_database_up", "1 if the last scrape could read the database")
        try:
            with transaction(self.factory) as session:
                families = list(self._read(session))
        except (SQLAlchemyError, TemporaryFailure) as exc:
            log.warning("metrics: cannot read the database: %s", str(exc).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self, session: Session) -> Iterator[Metric]:
        inbound = GaugeMetricFamily("maild_inbound_messages", "Stored messages waiting to be processed "
                                    "(received) or quarantined, per queue", labels=["queue", "state"])
        counts = {(q, s): n for q, s, n in session.execute(
            select(InboundMessage.queue_id, InboundMessage.state, func.count())
            .where(InboundMessage.state.in_([RECEIVED, QUARANTINED]))
            .group_by(InboundMessage.queue_id, InboundMessage.state))}
        for queue_id, name in self.queue_names.items():
            for state in (RECEIVED, QUARANTINED):
                inbound.add_metric([name, state], counts.get((queue_id, state), 0))
        yield inbound
        outbox = GaugeMetricFamily("maild_outbox_messages", "Outgoing messages not sent yet, by state "
                                   "(pending is the backlog)", labels=["state"])
        by_state = {state: n for state, n in session.execute(
            select(OutboundMessage.state, func.count())
            .where(OutboundMessage.state.in_(OUTBOX_STATES)).group_by(OutboundMessage.state))}
        for state in OUTBOX_STATES:
            outbox.add_metric([state], by_state.get(state, 0))
        yield outbox
        yield from self._mailboxes(session)

    def _mailboxes(self, session: Session) -> Iterator[Metric]:
        success = GaugeMetricFamily("maild_mailbox_last_success_timestamp_seconds",
                                    "When each IMAP mailbox last polled successfully (Unix time)", labels=["queue"])
        failing = GaugeMetricFamily("maild_mailbox_failing", "1 while an IMAP mailbox's last poll failed",
                                    labels=["queue"])
        for state in session.scalars(select(MailboxState)):
            name = self.queue_names.get(state.queue_id)
            if name is None:
                continue
            if state.last_success_at is not None:
                success.add_metric([name], state.last_success_at.timestamp())
            failing.add_metric([name], 1 if state.failing else 0)
        yield success
        yield failing
