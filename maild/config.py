"""Load config.toml once, validate every key, and hand out frozen settings objects.

Validation is done by pydantic so that every error can name the file, the key path and
the problem (``config.toml: queues.support.address: expected an email address, got "x"``).
Relative paths are resolved against the directory of the config file, so the example
config works from any current directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from maild import statuses
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


class CasesConfig(_Model):
    reference_prefix: str = "CAS"
    reopen_window_days: float = Field(default=7.0, ge=0)
    # Resolving a parent case resolves its open children too, with the same resolution type.
    resolve_children: bool = True
    # Mail with a case's key from someone who is not on the case (not the customer, a contact
    # of the same account, an address already on its mail, or an agent): open a "new_case"
    # linked to it, or "quarantine" it for review. Never appended silently.
    unknown_participant: Literal["new_case", "quarantine"] = "new_case"
    status_reasons: StatusReasonsConfig = StatusReasonsConfig()

    @model_validator(mode="after")
    def _prefix(self) -> CasesConfig:
        if not _PREFIX_RE.match(self.reference_prefix):
            raise ValueError(
                f"reference_prefix: expected 2-10 upper-case letters or digits starting with a letter, "
                f"got {self.reference_prefix!r}"
            )
        return self


class AcknowledgementConfig(_Model):
    enabled: bool = True
    max_per_sender_per_hour: int = Field(default=5, ge=0)
    template: str = "acknowledgement"


class SecurityConfig(_Model):
    # The secret that signs reply addresses (support+CAS-...-SIG@); created on first use.
    reply_token_key_file: Path = Path("var/reply-token.key")
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
    # Senders not yet in the customer records: "create" a contact, "create_with_account"
    # (also an account for the sender's domain), or "refuse" (no case; templated answer).
    unknown_senders: Literal["create", "create_with_account", "refuse"] = "create"
    # Who an SLA action `notify = "queue"` reaches: the people watching this queue (never the
    # queue's own address, which would come back in as a new message).
    notify: tuple[Email, ...] = ()
    imap: ImapConfig | None = None


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


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["plain", "json"] = "plain"


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
    business_hours: BusinessHoursConfig = BusinessHoursConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        seen: dict[str, str] = {}
        for name, queue in self.queues.items():
            if not _QUEUE_NAME_RE.match(name):
                raise ValueError(f"queues.{name}: queue names are lower-case letters, digits, - and _")
            for addr in queue.addresses:
                if addr in seen:
                    raise ValueError(f"queues.{name}.addresses: {addr} is already the address of queue {seen[addr]}")
                seen[addr] = name
        for i, agent in enumerate(self.agents):
            for addr in agent.emails:
                if addr in seen:
                    raise ValueError(f"agents.{i}.emails: {addr} is a queue address and cannot be an agent")
        names = {a.name for a in self.agents}
        for i, team in enumerate(self.teams):
            unknown = [a for a in team.agents if a not in names]
            if unknown:
                raise ValueError(f"teams.{i}.agents: unknown agent {unknown[0]!r}; agents are listed in [[agents]]")
        return self

    def team(self, name: str) -> TeamConfig | None:
        return next((t for t in self.teams if t.name == name), None)

    # Lookups used on every message; computed from frozen data, so cheap to call.
    def queue_for_address(self, address: str) -> str | None:
        # support+CAS-00001-AB12CD.sig@ is support@: the tag is a signed reply address.
        local, at, domain = address.strip().lower().partition("@")
        address = local.split("+", 1)[0] + at + domain
        for name, queue in self.queues.items():
            if address in queue.addresses:
                return name
        return None

    def agent_for_address(self, address: str | None) -> AgentConfig | None:
        if not address:
            return None
        address = address.strip().lower()
        return next((a for a in self.agents if address in a.emails), None)

    def own_addresses(self) -> frozenset[str]:
        return frozenset(a for q in self.queues.values() for a in q.addresses)


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
        lines.append(f"{file}: {loc or '(top level)'}: {_describe(err)}")
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
