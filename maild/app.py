"""The wiring every entry point shares: config, database, templates and the queue registry.

Kept light on imports: ``maild inject`` builds an App for every message an MTA pipes in,
so nothing here may import the mail parser, the SMTP server or the runners.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from maild import config as config_mod
from maild import db, registry
from maild.clock import Clock, utcnow
from maild.config import Config
from maild.errors import MaildError

if TYPE_CHECKING:
    from maild.cases import IntakeContext
    from maild.rules import RuleSet
    from maild.templates import Renderer

REQUIRED_TEMPLATES = ["acknowledgement", "entitlement_refused", "entitlement_exhausted", "sla_warning", "sla_failure",
                      "kb_article"]


class App:
    """The wiring every entry point shares: config, database, templates and registry."""

    def __init__(self, config: Config, *, engine: Engine | None = None, clock: Clock = utcnow) -> None:
        self.config = config
        self.engine = engine or db.make_engine(config.database.url, config.database.echo, config.database.busy_timeout)
        self.factory: sessionmaker[Session] = db.make_sessionmaker(self.engine)
        self.clock = clock
        self._renderer: Renderer | None = None
        self._registry: registry.Registry | None = None
        self._lock: int | None = None
        self._rules: RuleSet | None = None

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            from maild.templates import Renderer

            self._renderer = Renderer(self.config.paths.templates)
        return self._renderer

    @renderer.setter
    def renderer(self, value: Renderer) -> None:
        self._renderer = value

    def lock_single_process(self) -> None:
        """On SQLite, make sure this is the only ``maild run``; PostgreSQL needs no such lock.

        SQLite has one writer at a time and no row locks, so several daemons would only
        queue behind each other; running two is a mistake to report, not to tolerate.
        """
        if self.engine.dialect.name != "sqlite" or self._lock is not None:
            return
        database = self.engine.url.database
        if not database or database == ":memory:":
            return
        path = Path(database + ".run.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MaildError(
                f"another `maild run` is already using the SQLite database {database}; SQLite supports one "
                "maild process at a time; to run several workers, use PostgreSQL"
            ) from None
        self._lock = fd  # held until the process exits

    def close(self) -> None:
        """Release the process lock and pooled connections."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        self.engine.dispose()

    def prepare(self) -> None:
        """Everything that must hold before work starts; raises with the fix in the message."""
        db.check_schema(self.engine)
        self.renderer.check(required_templates(self.config))
        self._rules = load_rules(self.config)
        self._registry = self.sync_registry(self._rules)

    def sync_registry(self, ruleset: RuleSet) -> registry.Registry:
        """Mirror queues, agents and the rules' subject tree into the database."""
        from maild import subjects

        synced = registry.sync(self.factory, self.config)
        return replace(synced, subject_ids=subjects.sync(self.factory, ruleset.subjects))

    @property
    def rules(self) -> RuleSet:
        if self._rules is None:
            self._rules = load_rules(self.config)
        return self._rules

    @rules.setter
    def rules(self, value: RuleSet) -> None:
        self._rules = value

    @property
    def registry(self) -> registry.Registry:
        if self._registry is None:  # light: `maild inject` needs queue ids, not the rules
            self._registry = registry.sync(self.factory, self.config)
        return self._registry

    def intake_context(self) -> IntakeContext:
        from maild.cases import IntakeContext

        from maild.replytokens import load_key

        return IntakeContext(self.config, self.registry, self.renderer, self.rules,
                             load_key(self.config.security.reply_token_key_file))


def required_templates(config: Config) -> list[str]:
    """The templates this configuration sends mail with; checked at start-up and on reload."""
    queues = config.queues.values()
    wanted = list(REQUIRED_TEMPLATES)
    wanted += ["unknown_sender"] if any(q.unknown_senders == "refuse" for q in queues) else []
    wanted += ["closed_case_reply"] if any(q.on_reply_to_resolved == "keep_closed" for q in queues) else []
    wanted += ["csat_survey"] if any(q.csat for q in queues) else []
    wanted += ["agent_command_result", "agent_not_relayed"] if config.agents else []
    wanted += sorted({r.template for r in config.reports})
    kinds = {kind for q in queues for kind in q.notify_agents}
    wanted += [f"agent_{kind}" for kind in ("new_case", "customer_reply", "assigned") if kind in kinds]
    return wanted


def load_rules(config: Config) -> RuleSet:
    """The rule files under ``paths.rules``, checked against the configured queues and agents."""
    from maild import rules

    return rules.load(config.paths.rules, queues=config.queues, agents=[a.name for a in config.agents],
                      teams=[t.name for t in config.teams], statuses=config.cases.status_reasons.all()["Active"])


def load_app(path: str | Path, clock: Clock = utcnow) -> App:
    return App(config_mod.load(path), clock=clock)
