"""Load config.toml once, validate every key, and hand out frozen settings objects.

Validation is done by pydantic so that every error can name the file, the key path and
the problem (``config.toml: queues.support.address: expected an email address, got "x"``).
Relative paths are resolved against the directory of the config file, so the example
config works from any current directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BeforeValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from maild import reportschedule, statuses
from maild.errors import ConfigError

_EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_QUEUE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9]{1,9}$")


def _email(value: str) -> str:
    value = value.strip().lower()
    if not _EMAIL_RE.match(value):
        raise ValueError(f"expected an email address, got {value!r}")
    return value


Email = Annotated[str, AfterValidator(_email)]


def _parse_workers(value: Any) -> Any:
    # One message for the one key, rather than one per member of the union.
    if value == "auto" or (type(value) is int and 0 <= value <= 32):
        return value
    raise ValueError(f'expected "auto" or a whole number from 0 to 32, got {_show(value)}')


def _intake_batch(value: Any) -> Any:
    if value == "auto" or (type(value) is int and 1 <= value <= 500):
        return value
    raise ValueError(f'expected "auto" or a whole number from 1 to 500, got {_show(value)}')


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Secret(_Model):
    """A password given inline, by environment variable, or in a file (first line)."""

    password: str | None = None
    password_env: str | None = None
    password_file: Path | None = None

    def resolve(self) -> str | None:
        """Read the secret at the moment it is needed, so rotated files are picked up."""
        if self.password is not None:
            return self.password
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"environment variable {self.password_env} is not set")
            return value
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").splitlines()[0]
            except (OSError, IndexError) as exc:
                raise ConfigError(f"cannot read password_file {self.password_file}: {exc}") from exc
        return None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        given = [n for n in ("password", "password_env", "password_file") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError(f"give only one of password, password_env, password_file (got {', '.join(given)})")
        return self


class DatabaseConfig(_Model):
    url: str = "sqlite:///maild.db"
    echo: bool = False
    busy_timeout: float = Field(default=30.0, ge=0)


class PathsConfig(_Model):
    data: Path = Path("var/data")
    templates: Path = Path("templates")
    rules: Path = Path("rules")


class SmtpIntakeConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=1, le=65535)
    protocol: Literal["smtp", "lmtp"] = "smtp"
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    hostname: str | None = None


class IntakeConfig(_Model):
    smtp: SmtpIntakeConfig = SmtpIntakeConfig()
    poll_interval: float = Field(default=1.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    lease_seconds: int = Field(default=300, ge=5)
    # How long a worker owns a mailbox without renewing; after that another worker takes over.
    mailbox_lease_seconds: int = Field(default=120, ge=10)
    # Processes that parse the next batch of a backlog while the current one is written
    # (0: parse in-process). "auto": one on SQLite when the host has a CPU to spare, none on
    # PostgreSQL, where more daemons are the way to use more CPUs (maild.parsepool.workers_for).
    parse_workers: Annotated[int | Literal["auto"], BeforeValidator(_parse_workers)] = "auto"
    # Messages written per transaction (maild.processing.batch_for): "auto" is 50 on SQLite,
    # 20 on PostgreSQL, where smaller batches share a backlog better between workers.
    batch: Annotated[int | Literal["auto"], BeforeValidator(_intake_batch)] = "auto"


class SmtpRelayConfig(Secret):
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "none"
    user: str | None = None
    timeout: float = Field(default=30.0, gt=0)
    local_hostname: str | None = None
    # A private CA for the relay's certificate; the system's CAs are used when unset.
    ca_file: Path | None = None


class OutgoingConfig(_Model):
    transport: Literal["maildir", "smtp"] = "maildir"
    maildir: Path = Path("var/outgoing")
    smtp: SmtpRelayConfig = SmtpRelayConfig()
    max_attempts: int = Field(default=10, ge=1)
    backoff_initial: float = Field(default=30.0, gt=0)
    backoff_max: float = Field(default=3600.0, gt=0)
    message_id_domain: str | None = None
    # A row left "sending" past its lease (its worker died before recording the relay's
    # answer): "resend" sends the same bytes again, same Message-ID, within max_attempts;
    # "hold" parks it as "unknown" for an admin (`maild outbox retry`).
    unknown: Literal["resend", "hold"] = "resend"
    # Hard bounces after which an address is suppressed (never mailed until lifted); 0: never.
    suppress_after_bounces: int = Field(default=3, ge=0)


NonEmpty = Annotated[str, Field(min_length=1, max_length=50)]


class StatusReasonsConfig(_Model):
    """Extra status reasons, added to the built-in ones from Dynamics 365's case model."""

    active: tuple[NonEmpty, ...] = ()
    resolved: tuple[NonEmpty, ...] = ()
    cancelled: tuple[NonEmpty, ...] = ()

    def all(self) -> dict[str, tuple[str, ...]]:
        return statuses.with_extras(self.active, self.resolved, self.cancelled)

    @model_validator(mode="after")
    def _each_reason_once(self) -> StatusReasonsConfig:
        seen: dict[str, str] = {}
        for status, names in self.all().items():
            for name in names:
                if name.lower() in seen and seen[name.lower()] != status:
                    raise ValueError(f"status reason {name!r} is both {seen[name.lower()]} and {status}")
                seen[name.lower()] = status
        return self


# Domains anyone can sign up at: an account named after one would lump strangers together.
PUBLIC_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "hotmail.co.uk", "hotmail.fr", "live.com",
    "live.co.uk", "msn.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "ymail.com", "icloud.com",
    "me.com", "mac.com", "aol.com", "gmx.de", "gmx.net", "gmx.com", "web.de", "proton.me", "protonmail.com",
    "protonmail.ch", "pm.me", "mail.com", "yandex.ru", "yandex.com", "mail.ru", "zoho.com", "fastmail.com",
    "hey.com", "tutanota.com", "t-online.de", "orange.fr", "free.fr", "laposte.net", "sfr.fr", "libero.it",
    "seznam.cz", "wp.pl", "btinternet.com", "comcast.net", "verizon.net", "att.net", "qq.com", "163.com",
    "126.com", "naver.com", "rediffmail.com", "bigpond.com",
})


class CasesConfig(_Model):
    reference_prefix: str = "CAS"
    reopen_window_days: float = Field(default=7.0, ge=0)
    # Resolving a parent case resolves its open children too, with the same resolution type.
    resolve_children: bool = True
    # Mail with a case's key from someone who is not on the case (not the customer, a contact
    # of the same account, an address already on its mail, or an agent): open a "new_case"
    # linked to it, or "quarantine" it for review. Never appended silently.
    unknown_participant: Literal["new_case", "quarantine"] = "new_case"
    # Mail providers anyone can sign up at: their domain says nothing about the company, so a
    # sender there never joins an account by domain (queues' unknown_senders).
    public_mail_domains: tuple[Annotated[str, AfterValidator(str.lower)], ...] = tuple(sorted(PUBLIC_MAIL_DOMAINS))
    status_reasons: StatusReasonsConfig = StatusReasonsConfig()
    # Which status reasons a case may move to from a given one ("On Hold" = ["In Progress",
    # "Cancelled"]); a status name stands for all its reasons. A reason not listed may move
    # anywhere. Checked for every change an agent or admin makes (CLI and mail commands).
    transitions: dict[str, tuple[str, ...]] = {}

    @model_validator(mode="after")
    def _prefix(self) -> CasesConfig:
        if not _PREFIX_RE.match(self.reference_prefix):
            raise ValueError(
                f"reference_prefix: expected 2-10 upper-case letters or digits starting with a letter, "
                f"got {self.reference_prefix!r}"
            )
        known = self.status_reasons.all()
        for source, targets in self.transitions.items():
            if statuses.status_of(source, known) is None:
                raise ValueError(f"transitions.{source}: not a status reason (see `maild cases statuses`)")
            for target in targets:
                if statuses.status_of(target, known) is None and target.capitalize() not in known:
                    raise ValueError(f"transitions.{source}: {target!r} is neither a status nor a status reason")
        return self


class AcknowledgementConfig(_Model):
    enabled: bool = True
    max_per_sender_per_hour: int = Field(default=5, ge=0)
    template: str = "acknowledgement"


class SecurityConfig(_Model):
    # The secret that signs reply addresses (support+CAS-...-SIG@); created on first use.
    reply_token_key_file: Path = Path("var/reply-token.key")
    # Mail servers whose Authentication-Results headers maild believes (their authserv-id, e.g.
    # "mx.example.test"). With any listed, an agent's mail also counts as genuine when such a
    # header shows dkim=pass or dmarc=pass for the agent's own domain. Only list servers that
    # remove Authentication-Results headers claiming their id from incoming mail (RFC 8601).
    trusted_authserv_ids: tuple[NonEmpty, ...] = ()
    # "token": an agent's emailed reply is relayed only if it was sent to the case's signed
    # reply address; "from": trust the From address alone (forgeable; for migrations only).
    agent_verification: Literal["token", "from"] = "token"


class EntitlementsConfig(_Model):
    # Who is told when a case is created on an exhausted entitlement (policy "flag"):
    # addresses outside maild's queues, e.g. the account manager; empty: flag and log only.
    notify: tuple[Email, ...] = ()


class ImapConfig(Secret):
    """A mailbox this queue reads over IMAP (one per queue)."""

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)  # default: 993 for ssl, else 143
    security: Literal["ssl", "starttls", "none"] = "ssl"
    user: str = Field(min_length=1)
    # XOAUTH2 (Gmail, Microsoft 365): a command that prints a fresh access token.
    token_command: str | None = None
    ca_file: Path | None = None
    folder: str = "INBOX"
    # After a message is stored: move it to `move_to`, mark it \Seen, or delete it.
    after: Literal["move", "seen", "delete"] = "move"
    move_to: str = "Processed"
    poll_interval: float = Field(default=60.0, gt=0)
    idle: bool = True
    timeout: float = Field(default=60.0, gt=0)
    batch: int = Field(default=100, ge=1, le=5000)

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "ssl" else 143)

    @model_validator(mode="after")
    def _credentials(self) -> ImapConfig:
        if self.token_command is None and not (self.password or self.password_env or self.password_file):
            raise ValueError("give password, password_env, password_file or token_command")
        if self.token_command is not None and (self.password or self.password_env or self.password_file):
            raise ValueError("give either a password or token_command, not both")
        if self.after == "move" and self.move_to == self.folder:
            raise ValueError(f"move_to must differ from folder ({self.folder!r})")
        return self


class QueueConfig(_Model):
    addresses: tuple[Email, ...] = Field(min_length=1)
    name: str | None = None
    acknowledge: bool = True
    # Senders not yet in the customer records: "create_with_account" (a contact, filed under
    # the account for its company domain, so colleagues count as the same customer; never
    # for [cases] public_mail_domains), "create" (a contact without an account), or
    # "refuse" (no case; templated answer).
    unknown_senders: Literal["create", "create_with_account", "refuse"] = "create_with_account"
    # Who an SLA action `notify = "queue"` reaches: the people watching this queue (never the
    # queue's own address, which would come back in as a new message).
    notify: tuple[Email, ...] = ()
    imap: ImapConfig | None = None
    # A customer's reply to a resolved case: "reopen" it within reopen_window_days (later, a
    # new linked case), always open a "new_case" linked to it, or "keep_closed": file the mail
    # on the closed case and answer with the `closed_case_reply` template ("thanks!" mails).
    on_reply_to_resolved: Literal["reopen", "new_case", "keep_closed"] = "reopen"
    # Automatic replies (out of office, vacation; RFC 3834 Auto-Submitted and vendor headers):
    # "file" them on the case they answer, or keep them without a case, never opening one;
    # "create": open cases from them like any mail (a queue fed by web forms or monitoring).
    auto_replies: Literal["file", "create"] = "file"
    reopen_window_days: float | None = Field(default=None, ge=0)  # unset: [cases] reopen_window_days
    # Addresses for agents' internal notes (support-comment@): stored on the case, never relayed.
    comment_addresses: tuple[Email, ...] = ()
    # The agents who work this queue (by name): told of new cases when notify_agents says so.
    agents: tuple[str, ...] = ()
    # Which mails agents get: "new_case" (to the queue's agents), "customer_reply" (to the
    # case's owner) and "assigned" (to the new owner, when someone else assigns a case).
    notify_agents: tuple[Literal["new_case", "customer_reply", "assigned"], ...] = ()
    # Send a satisfaction survey (template `csat_survey`) when a case is resolved; the
    # customer answers by replying with a number from 1 to 5.
    csat: bool = False
    # A customer's reply "article 42 helped" (or "yes" to an article mail) on an open case
    # resolves it, as the acknowledgement template promises; false: an agent resolves it.
    resolve_on_helpful_article: bool = True

    def all_addresses(self) -> tuple[str, ...]:
        return self.addresses + self.comment_addresses


class AgentConfig(_Model):
    name: str = Field(min_length=1)
    emails: tuple[Email, ...] = Field(min_length=1)


class BusinessHoursConfig(_Model):
    """When the support team works: rules can test it, SLA clocks count only this time."""

    timezone: str = "UTC"
    days: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = Field(
        default=("mon", "tue", "wed", "thu", "fri"), min_length=1)
    start: str = "09:00"
    end: str = "17:00"
    # Public holidays by ISO country code (and region), from the `holidays` package.
    holidays: str | None = None
    holiday_region: str | None = None
    extra_holidays: tuple[date, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like \"Europe/Berlin\"") from None
        return value

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d|24:00", value):
            raise ValueError(f"expected a time like \"09:00\", got {value!r}")
        return "23:59:59.999999" if value == "24:00" else value

    @model_validator(mode="after")
    def _order(self) -> BusinessHoursConfig:
        if self.start >= self.end:
            raise ValueError(f"start ({self.start}) must be before end ({self.end})")
        if self.holidays is not None:
            import holidays

            try:
                holidays.country_holidays(self.holidays, subdiv=self.holiday_region)
            except NotImplementedError as exc:
                raise ValueError(f"holidays: {exc}") from None
        return self


class TeamConfig(_Model):
    """Agents who share a routing target; a new case goes to one of them."""

    name: str = Field(min_length=1)
    agents: tuple[str, ...] = Field(min_length=1)
    # round_robin: each in turn; least_loaded: whoever owns the fewest active cases.
    assignment: Literal["round_robin", "least_loaded"] = "round_robin"


# The case fields a stage can require, each a column of Case that is empty until someone sets it.
StageField = Literal["case_type", "subject", "priority", "severity", "owner", "customer", "account", "parent",
                     "entitlement"]


class StageConfig(_Model):
    name: str = Field(min_length=1, max_length=100)
    requires: tuple[StageField, ...] = ()


class ProcessConfig(_Model):
    """A business process flow: the stages a case goes through, for some case types or subjects."""

    name: str = Field(min_length=1)
    # Which cases follow it: by case type, or by subject path (a subject's descendants too).
    # With neither it is the default for every case no other process claims.
    case_types: tuple[NonEmpty, ...] = ()
    subjects: tuple[str, ...] = ()
    stages: tuple[StageConfig, ...]
    require_final_stage_to_resolve: bool = False

    @field_validator("stages")
    @classmethod
    def _unique_stages(cls, stages: tuple[StageConfig, ...]) -> tuple[StageConfig, ...]:
        # Checked here, not with min_length: a bad stage would also be reported as "no stages".
        if not stages:
            raise ValueError("a process needs at least one stage")
        names = [s.name.lower() for s in stages]
        twice = next((s.name for i, s in enumerate(stages) if s.name.lower() in names[:i]), None)
        if twice is not None:
            raise ValueError(f"stage {twice!r} is listed twice; stage names are unique within a process")
        return stages

    @property
    def is_default(self) -> bool:
        return not self.case_types and not self.subjects


def subject_key(path: str) -> str:
    """A subject path as compared with the subject tree: "billing>refund" is "Billing > Refund"."""
    return " > ".join(part.strip() for part in path.split(">")).lower()


def _overlap(key: str, value: str, first: str, second: str) -> str:
    if key == "name":
        return f"{second}.name: process {value!r} is already defined at {first}"
    if key == "default":
        return (f"{second}: a second default process (no case_types and no subjects); {first} is the default "
                "already; give this one case_types or subjects")
    what = "case type" if key == "case_types" else "subject"
    return f"{second}.{key}: {what} {value!r} already belongs to {first}; a case follows one process"


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["plain", "json"] = "plain"


_AGE_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class MetricsConfig(_Model):
    """``maild run`` serving Prometheus ``/metrics`` and ``/healthz`` over HTTP; off unless ``listen`` is set."""

    # "127.0.0.1:9464" or "[::1]:9464". Loopback only: the endpoints have no authentication.
    listen: str | None = None
    # /healthz fails when a mailbox has not polled successfully for this long: "10m", "1h30m", "30s".
    health_max_poll_age: str = "10m"

    @field_validator("listen")
    @classmethod
    def _loopback(cls, value: str | None) -> str | None:
        if value is not None:
            listen_address(value)
        return value

    @field_validator("health_max_poll_age")
    @classmethod
    def _age(cls, value: str) -> str:
        m = _AGE_RE.match(value.strip())
        if not value.strip() or not m or not any(m.groups()):
            raise ValueError(f"expected a duration like 10m, 1h30m or 30s, got {value!r}")
        return value.strip()

    @property
    def max_poll_age(self) -> timedelta:
        m = _AGE_RE.match(self.health_max_poll_age)
        assert m is not None  # checked on load
        h, mins, secs = (int(g or 0) for g in m.groups())
        return timedelta(hours=h, minutes=mins, seconds=secs)


def listen_address(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) -> (host, port); only loopback hosts are accepted."""
    host, sep, port = value.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        raise ValueError(f"expected host:port like \"127.0.0.1:9464\", got {value!r}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{host} is not a loopback address; /metrics and /healthz have no authentication, "
                         "so maild serves them on 127.0.0.1 or [::1] only (put a proxy in front to publish them)")
    return host, int(port)


class Config(_Model):
    """The whole validated configuration. ``source`` is the file it came from."""

    source: Path = Path("config.toml")
    database: DatabaseConfig = DatabaseConfig()
    paths: PathsConfig = PathsConfig()
    intake: IntakeConfig = IntakeConfig()
    outgoing: OutgoingConfig = OutgoingConfig()
    cases: CasesConfig = CasesConfig()
    acknowledgements: AcknowledgementConfig = AcknowledgementConfig()
    entitlements: EntitlementsConfig = EntitlementsConfig()
    security: SecurityConfig = SecurityConfig()
    queues: dict[str, QueueConfig] = Field(min_length=1)
    agents: tuple[AgentConfig, ...] = ()
    teams: tuple[TeamConfig, ...] = ()
    processes: tuple[ProcessConfig, ...] = ()
    business_hours: BusinessHoursConfig = BusinessHoursConfig()
    logging: LoggingConfig = LoggingConfig()
    reports: tuple[reportschedule.ScheduledReport, ...] = ()  # scheduled report mails
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("processes")
    @classmethod
    def _processes_do_not_overlap(cls, processes: tuple[ProcessConfig, ...]) -> tuple[ProcessConfig, ...]:
        # Every case must have exactly one process, or its stage would depend on list order.
        owner: dict[tuple[str, str], str] = {}
        for i, process in enumerate(processes):
            claims = [("name", process.name), *(("case_types", t) for t in process.case_types),
                      *(("subjects", subject_key(s)) for s in process.subjects)]
            for key, value in claims + ([("default", "")] if process.is_default else []):
                if (key, value.lower()) in owner:
                    raise ValueError(_overlap(key, value, owner[key, value.lower()], f"processes.{i}"))
                owner[key, value.lower()] = f"processes.{i}"
        return processes

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        seen: dict[str, str] = {}
        for name, queue in self.queues.items():
            if not _QUEUE_NAME_RE.match(name):
                raise ValueError(f"queues.{name}: queue names are lower-case letters, digits, - and _")
            for key, addrs in (("addresses", queue.addresses), ("comment_addresses", queue.comment_addresses)):
                for addr in addrs:
                    if addr in seen:
                        raise ValueError(f"queues.{name}.{key}: {addr} is already an address of queue {seen[addr]}")
                    seen[addr] = name
        for i, agent in enumerate(self.agents):
            for addr in agent.emails:
                if addr in seen:
                    raise ValueError(f"agents.{i}.emails: {addr} is a queue address and cannot be an agent")
        names = {a.name for a in self.agents}
        for name, queue in self.queues.items():
            unknown_agents = [a for a in queue.agents if a not in names]
            if unknown_agents:
                raise ValueError(f"queues.{name}.agents: unknown agent {unknown_agents[0]!r}; agents are listed in "
                                 "[[agents]]")
        for i, team in enumerate(self.teams):
            unknown = [a for a in team.agents if a not in names]
            if unknown:
                raise ValueError(f"teams.{i}.agents: unknown agent {unknown[0]!r}; agents are listed in [[agents]]")
        reportschedule.check(self.reports, self.queues)
        return self

    def team(self, name: str) -> TeamConfig | None:
        return next((t for t in self.teams if t.name == name), None)

    # Lookups used on every message; computed from frozen data, so cheap to call.
    def queue_for_address(self, address: str) -> str | None:
        address = _untagged(address)
        return next((n for n, q in self.queues.items() if address in q.all_addresses()), None)

    def comment_queue(self, addresses: Iterable[str]) -> str | None:
        """The queue whose comment address (signed or not) is among ``addresses``, if any."""
        plain = {_untagged(a) for a in addresses}
        return next((n for n, q in self.queues.items() if plain.intersection(q.comment_addresses)), None)

    def agent_for_address(self, address: str | None) -> AgentConfig | None:
        if not address:
            return None
        address = address.strip().lower()
        return next((a for a in self.agents if address in a.emails), None)

    def own_addresses(self) -> frozenset[str]:
        return frozenset(a for q in self.queues.values() for a in q.all_addresses())


def _untagged(address: str) -> str:
    """support+CAS-00001-AB12CD.sig@ is support@: the tag is a signed reply address."""
    local, at, domain = address.strip().lower().partition("@")
    return local.split("+", 1)[0] + at + domain


_PATH_KEYS = (("paths", "data"), ("paths", "templates"), ("paths", "rules"), ("outgoing", "maildir"),
              ("security", "reply_token_key_file"))
_FILE_KEYS = ("password_file", "ca_file")


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; every problem raises ConfigError naming file and key."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    return from_dict(data, file)


def from_dict(data: dict[str, Any], file: Path) -> Config:
    """Validate parsed TOML data; paths and SQLite URLs are made absolute against the file's folder."""
    base = file.resolve().parent
    data = {**data, "source": file}
    try:
        config = Config.model_validate(_resolve_paths(data, base), strict=False)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(file, exc)) from None
    return config


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Copy of ``data`` with every path key (given or defaulted) absolute against ``base``."""
    data = _copy_tables(data)
    for section, key in _PATH_KEYS:
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            continue  # wrong type: validation reports it
        default = getattr(Config.model_fields[section].default, key)
        value = table.get(key, str(default))
        if isinstance(value, str):
            table[key] = str(base / value)
    outgoing = data.get("outgoing")
    smtp = outgoing.get("smtp") if isinstance(outgoing, dict) else None
    if isinstance(smtp, dict):
        outgoing["smtp"] = {k: str(base / v) if k in _FILE_KEYS and isinstance(v, str) else v  # type: ignore[index]
                            for k, v in smtp.items()}
    for queue in (data.get("queues") or {}).values() if isinstance(data.get("queues"), dict) else ():
        imap = queue.get("imap") if isinstance(queue, dict) else None
        if isinstance(imap, dict):
            queue["imap"] = {k: str(base / v) if k in _FILE_KEYS and isinstance(v, str) else v
                             for k, v in imap.items()}
    db = data.setdefault("database", {})
    if isinstance(db, dict):
        url = db.get("url", DatabaseConfig().url)
        if isinstance(url, str):
            db["url"] = resolve_sqlite_url(url, base)
    return data


def _copy_tables(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_tables(v) if isinstance(v, dict) else v for k, v in data.items()}


def resolve_sqlite_url(url: str, base: Path) -> str:
    """Make ``sqlite:///relative.db`` absolute against ``base``; other URLs pass through."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str(base / url[len(prefix):])
    return url


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "str": "a string",
    "dict": "a table",
    "list": "an array",
    "tuple": "an array",
}


def format_validation_error(file: Path, exc: ValidationError) -> str:
    """One line per problem: ``file: dotted.key.path: what is wrong``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        problem = _describe(err)
        if loc and problem.startswith(f"{loc}."):  # a cross-check named the exact key below ``loc`` itself
            lines.append(f"{file}: {problem}")
            continue
        lines.append(f"{file}: {loc or '(top level)'}: {problem}")
    return "\n".join(lines)


def _describe(err: Any) -> str:
    kind: str = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling against config.example.toml)"
    if kind == "missing":
        return "required key is missing"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        word = kind.split("_")[0]
        expected = _TYPE_WORDS.get(word, word)
        return f"expected {expected}, got {_show(given)}"
    if kind == "literal_error":
        return f"{err['msg'].replace('Input should be', 'expected')}, got {_show(given)}"
    if kind == "value_error":
        return str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
    return f"{err['msg']}, got {_show(given)}"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value).lower() if isinstance(value, bool) else repr(value)
