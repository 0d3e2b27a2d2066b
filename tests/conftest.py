"""Shared fixtures: a database on SQLite and PostgreSQL, a config file, and a real SMTP peer.

PostgreSQL runs when MAILD_TEST_DATABASE_URL is set (``.ci/run`` sets it). Each test gets a
schema of its own, so tests never see each other's rows. When the variable is set and the
server cannot be reached, the tests fail: a CI run must never skip PostgreSQL silently.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from click.testing import CliRunner, Result

import dovecot
from dovecot import free_port

REPO = Path(__file__).resolve().parent.parent
PG_ENV = "MAILD_TEST_DATABASE_URL"
MAILD = str(Path(sys.executable).with_name("maild"))


# Databases -------------------------------------------------------------------


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'maild.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base and os.environ.get("CI"):
        pytest.fail(f"CI must run the PostgreSQL tests: set {PG_ENV}")
    if not base:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    schema = "t_" + secrets.token_hex(6)
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"{PG_ENV} is set but PostgreSQL is unreachable: {exc}")
    try:
        yield _pg_schema_url(base, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


# SMTP peer ---------------------------------------------------------------------


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class SmtpPeer:
    """A real SMTP server on loopback that keeps what maild sends (the relay's stand-in)."""

    port: int
    received: list[Captured] = field(default_factory=list)
    refuse_with: str | None = None  # e.g. "451 4.3.0 try later" to simulate a failing relay
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse_with:
            return self.refuse_with
        with self.lock:
            self.received.append(Captured(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Captured]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} message(s) at the SMTP peer, got {len(self.received)}")


@pytest.fixture
def smtp_peer() -> Iterator[SmtpPeer]:
    peer = SmtpPeer(port=free_port())
    controller = Controller(peer, hostname="127.0.0.1", port=peer.port)
    controller.start()
    try:
        yield peer
    finally:
        controller.stop()


# Config --------------------------------------------------------------------------

BASE_CONFIG = """
[database]
url = "{db_url}"
busy_timeout = {busy_timeout}

[paths]
data = "data"
templates = "{templates}"
rules = "{rules}"

[intake]
poll_interval = 0.2

[intake.smtp]
enabled = {smtp_enabled}
host = "127.0.0.1"
port = {smtp_port}
max_message_size = {max_size}

[outgoing]
transport = "smtp"
backoff_initial = 1.0

[outgoing.smtp]
host = "127.0.0.1"
port = {peer_port}
timeout = 5.0

[cases]
reopen_window_days = 7

[acknowledgements]
max_per_sender_per_hour = {ack_limit}

[queues.support]
addresses = ["support@example.test"]
name = "Example Support"

[queues.billing]
addresses = ["billing@example.test", "invoices@example.test"]
name = "Example Billing"

[[agents]]
name = "Alice Agent"
emails = ["alice@example.test"]
"""


@dataclass
class Env:
    """A maild installation in a temp dir: config file, database, peer; plus CLI helpers."""

    path: Path
    config: Path
    db_url: str
    peer: SmtpPeer
    smtp_port: int

    def cli(self, *args: str, input: bytes | str | None = None) -> Result:
        from maild.cli.main import cli

        return CliRunner().invoke(cli, ["--config", str(self.config), *args], input=input, catch_exceptions=False)

    def ok(self, *args: str, input: bytes | str | None = None) -> str:
        result = self.cli(*args, input=input)
        assert result.exit_code == 0, f"maild {' '.join(args)} exited {result.exit_code}: {result.output}"
        return result.output

    def json(self, *args: str) -> Any:
        import json

        return json.loads(self.ok(*args, "--json"))

    def maild(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """The installed ``maild`` command, as a user or an MTA runs it."""
        return subprocess.run([MAILD, "--config", str(self.config), *args], input=input, capture_output=True,
                              timeout=timeout, cwd=self.path)

    def inject(self, raw: bytes, *extra: str) -> str:
        return self.ok("inject", *extra, input=raw)

    def app(self) -> Any:
        """The installation as ``maild run`` loads it: config read, schema checked, queues
        and agents written. The caller closes it."""
        from maild import config
        from maild.app import App

        app = App(config.load(self.config))
        app.prepare()
        return app

    def engine(self) -> sa.Engine:
        from maild.db import make_engine

        return make_engine(self.db_url)

    def rows(self, sql: str) -> list[Any]:
        """What a SQL query answers, read on a connection of its own."""
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text(sql)).all())
        finally:
            engine.dispose()

    def count(self, sql: str) -> int:
        """The single number a SQL query answers."""
        [(value,)] = self.rows(sql)
        return int(value)


def write_config(path: Path, db_url: str, peer_port: int, *, extra: str = "", **overrides: Any) -> Path:
    """The test config; ``extra`` TOML is appended (e.g. a ``[queues.support.imap]`` table)."""
    values: dict[str, Any] = {
        "db_url": db_url, "templates": (REPO / "templates").as_posix(), "rules": (REPO / "rules").as_posix(),
        "smtp_enabled": "false", "smtp_port": free_port(), "max_size": 1_000_000, "peer_port": peer_port,
        "ack_limit": 5, "busy_timeout": 5.0,
    }
    values.update(overrides)
    config = path / "config.toml"
    config.write_text(BASE_CONFIG.format(**values) + extra)
    return config


@pytest.fixture
def make_env(tmp_path: Path, db_url: str, smtp_peer: SmtpPeer) -> Callable[..., Env]:
    def make(**overrides: Any) -> Env:
        overrides.setdefault("smtp_port", free_port())
        config = write_config(tmp_path, db_url, smtp_peer.port, **overrides)
        env = Env(tmp_path, config, db_url, smtp_peer, overrides["smtp_port"])
        env.ok("db", "upgrade")
        return env

    return make


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env()


# Dovecot ---------------------------------------------------------------------------


def require(what: str, reason: str | None) -> None:
    """Skip when a real peer (``what``: Dovecot, mutt, Chromium) cannot run here, with the
    reason; where everything must run (.ci/run sets MAILD_REQUIRE_DOVECOT, or CI) it fails."""
    if reason:
        if os.environ.get(dovecot.REQUIRE_ENV) or os.environ.get("CI"):
            pytest.fail(f"{what} tests are required here but cannot run: {reason}")
        pytest.skip(reason)


def require_dovecot() -> None:
    require("Dovecot", dovecot.missing_reason())


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[dovecot.Dovecot]:
    """One private Dovecot (plain, STARTTLS and implicit TLS) for the session."""
    require_dovecot()
    server = dovecot.start(tls=True)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Mailbox:
    """A fresh IMAP account on the test Dovecot: its own, empty mailbox."""

    server: dovecot.Dovecot
    user: str
    password: str

    def client(self) -> Any:
        from imapclient import IMAPClient

        client = IMAPClient("127.0.0.1", port=self.server.port, ssl=False, timeout=10)
        client.login(self.user, self.password)
        return client

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        client = self.client()
        try:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for raw in messages:
                client.append(folder, raw)
        finally:
            client.logout()

    def uids(self, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
        """UID → flags of the messages in a folder."""
        client = self.client()
        try:
            if not client.folder_exists(folder):
                return {}
            client.select_folder(folder, readonly=True)
            return {uid: data[b"FLAGS"] for uid, data in client.fetch(client.search(), ["FLAGS"]).items()}
        finally:
            client.logout()

    def toml(self, queue: str = "support", **overrides: Any) -> str:
        settings: dict[str, Any] = {"host": "127.0.0.1", "port": self.server.port, "security": "none",
                                    "user": self.user, "password": self.password, "poll_interval": 0.5}
        settings.update(overrides)
        return f"\n[queues.{queue}.imap]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items())


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


_unused_accounts: list[str] = []


def fresh_mailbox(server: dovecot.Dovecot) -> Mailbox:
    """An account no test has used yet (see dovecot.pool_users)."""
    if not _unused_accounts:
        _unused_accounts.extend(sorted(server.users, reverse=True))
    user = _unused_accounts.pop()
    return Mailbox(server, user, server.users[user])


@pytest.fixture
def mailbox(dovecot_server: dovecot.Dovecot) -> Mailbox:
    return fresh_mailbox(dovecot_server)


# Mail ------------------------------------------------------------------------------


def mail(
    subject: str = "Printer on fire",
    body: str = "Help, my printer is on fire.\n",
    sender: str = "Jane Doe <jane@customer.test>",
    to: str = "support@example.test",
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """A customer message as raw bytes, built the way a mail client would."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or f"<{secrets.token_hex(8)}@customer.test>"
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()
