"""Mail the configured reports (``[[reports]]``) to supervisors, once per period.

The mail is rendered from a site template (``templates/report.txt.j2`` by default), with
the HTML page attached, and queued in the outbox like every other mail maild sends. A
``report_run`` row per report and period is written in the same transaction: its unique
key means a restart, a second pass or a second worker never sends a period twice (the
loser of a race on PostgreSQL waits on the key, then finds it taken and backs off).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from maild import reporthtml, reports
from maild.businesshours import BusinessCalendar
from maild.clock import Clock, utcnow
from maild.config import Config
from maild.db import transaction
from maild.models import ReportRun
from maild.outbox import Draft, FileAttachment, enqueue
from maild.reportschedule import ScheduledReport, Slot, latest_slot
from maild.runner import Runner
from maild.templates import Renderer

log = logging.getLogger("maild.reportmail")
REPORT = "report"  # the outbox kind


class ReportMailRunner(Runner):
    """Queue each scheduled report whose latest period has not been sent yet."""

    name = "reports"

    def __init__(self, factory: sessionmaker[Session], config: Config, renderer: Callable[[], Renderer],
                 clock: Clock = utcnow, idle_seconds: float = 60.0) -> None:
        super().__init__(idle_seconds)
        self.factory, self.config, self.renderer, self.clock = factory, config, renderer, clock
        self.calendar = BusinessCalendar(config.business_hours)

    def run_once(self) -> int:
        now = self.clock()
        return sum(self._send(report, latest_slot(report, now, self.calendar.zone), now)
                   for report in self.config.reports)

    def _send(self, report: ScheduledReport, slot: Slot, now: datetime) -> int:
        try:
            with transaction(self.factory) as session:
                if session.scalar(select(ReportRun.id).where(ReportRun.name == report.name,
                                                             ReportRun.period == slot.key)) is not None:
                    return 0
                session.add(ReportRun(name=report.name, period=slot.key, sent_at=now, recipients=len(report.to)))
                session.flush()  # claim the period first: a concurrent worker blocks here, then fails
                for draft in self.drafts(session, report, slot, now):
                    enqueue(session, draft, now=now, case_id=None, domain=self.config.outgoing.message_id_domain)
        except IntegrityError:
            return 0  # another worker sent this period
        log.info("report %s for %s queued to %s", report.name, slot.key, ", ".join(report.to))
        return 1

    def drafts(self, session: Session, report: ScheduledReport, slot: Slot, now: datetime) -> list[Draft]:
        """One mail per recipient: the rendered template, and the HTML page if asked for."""
        scope = reports.Scope(slot.since, slot.until, report.queue)
        figures = reports.build(session, scope, now, self.calendar)
        rendered = self.renderer().render(report.template, {
            "report": figures, "sections": figures.sections(), "totals": reporthtml.headline(figures),
            "schedule": report, "period": slot.key, "now": now})
        attachments = (FileAttachment(f"maild-report-{report.name}-{slot.key}.html", "text/html",
                                      reporthtml.render(figures).encode()),) if report.html else ()
        queue_name = report.queue or next(iter(self.config.queues))
        queue = self.config.queues[queue_name]
        return [Draft(kind=REPORT, from_name=queue.name or queue_name, from_addr=queue.addresses[0], to_name="",
                      to_addr=to, subject=rendered.subject or f"maild report {report.name} {slot.key}",
                      text=rendered.text, html=rendered.html, auto_submitted=True, attachments=attachments)
                for to in report.to]
