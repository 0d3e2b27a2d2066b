"""Benchmark maild's intake: how many customer messages per second it turns into cases.

What it measures, on a throw-away maild installation (temp dir, SQLite or a fresh
PostgreSQL schema, outgoing mail written to a Maildir):

* mode ``smtp`` (default): the real daemon (``maild run``) on a loopback port, fed by
  ``--clients`` concurrent SMTP clients.
    - intake rate: messages / seconds from the first send to the last ``250``. maild
      says 250 only after the message is committed, so this is the durable-store rate.
    - end-to-end rate: messages / seconds from the first send until every message is
      processed into a case and every acknowledgement has been written out.
    - peak RSS of the daemon (VmHWM), read just before SIGTERM; the daemon must then
      exit 0.
* mode ``inject``: one ``maild inject`` process per message, as an MTA pipe would run
  it (``--clients`` at a time), then one timed ``maild run --once`` over the backlog.
    - intake rate: injected messages / second; end-to-end: messages / (inject + process);
      process rate: messages / duration of ``run --once``; peak RSS of ``run --once``.
* mode ``store``: the messages are stored straight into the inbound table (what any
  intake path does first), then one timed ``maild run --once`` turns them into cases and
  sends the acknowledgements. Its CPU time per message is the steadiest figure for
  comparing two versions or settings (``--suggest``) of the writer: no client, no
  network, no per-message process.

Why: maild promises never to lose a message, so every accepted message costs a commit
(fsync) before the sender hears back, and each one is parsed, threaded, stored as a case
and acknowledged. These figures say what one host can take and where the time goes.

The messages are synthetic but shaped like real support mail (several paragraphs,
plain, alternative and HTML-only bodies, small attachments, quoted replies threading via
In-Reply-To/References) and deterministic for a given ``--seed``. After each run the
database is checked: every message stored once, none quarantined, one case per
non-reply, every reply threaded, one acknowledgement sent per case.

Run it with the virtualenv that has maild installed:
    .venv/bin/python bench/intake.py [--mode smtp|inject] [--messages N] [--clients C]
        [--database-url postgresql+psycopg://...] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import platform
import pstats
import random
import resource
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
QUEUES = {"support": "support@example.test", "billing": "billing@example.test"}
EX_TEMPFAIL = 75  # sysexits.h: maild inject's "try again later"
MIB = 1024.0


class BenchError(Exception):
    """The benchmark could not produce a trustworthy figure; the message says why."""


class BenchTimeout(BenchError):
    pass


class TemporaryRefusal(Exception):
    """maild said "try again later" (SMTP 4xx, exit 75); a real MTA would retry, so do we."""


# Options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    mode: str
    messages: int
    clients: int
    customers: int
    database_url: str | None
    seed: int
    timeout: float
    output: Path | None
    maild: Path
    keep: bool
    profile: Path | None
    # Knowledge articles a rule adds to every acknowledgement. None: no such rule and no articles;
    # 0: the same rule and articles with the feature off, the fair baseline for "on and off".
    suggest: int | None = None
    articles: int = 1000  # published articles seeded when suggest is not None
    parse_workers: int | None = None  # intake.parse_workers; None: maild's default


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--mode", choices=["smtp", "inject", "store"], default="smtp")
    p.add_argument("--messages", type=int, default=1000, help="messages to send (default 1000)")
    p.add_argument("--clients", type=int, default=4, help="concurrent SMTP clients / inject processes (default 4)")
    p.add_argument("--customers", type=int, default=200, help="distinct senders (default 200)")
    p.add_argument("--database-url", help="PostgreSQL base URL; a fresh schema is created and dropped "
                   "(default: SQLite in the temp dir)")
    p.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    p.add_argument("--output", type=Path, help="also write the figures as JSON to this file")
    p.add_argument("--maild", type=Path, default=Path(sys.executable).with_name("maild"),
                   help="the maild command to benchmark (default: next to this Python)")
    p.add_argument("--keep", action="store_true", help="keep the temp installation (config, logs, SQLite db)")
    p.add_argument("--profile", type=Path, help="inject or store mode: run `run --once` under cProfile, write stats here "
                   "(the figures then include profiler overhead)")
    p.add_argument("--suggest", type=int, choices=range(0, 11), metavar="N",
                   help="a rule for every message sets suggest_articles = N (0: the same rule and articles with "
                   "the feature off, the baseline to compare with); default: no rule and no articles")
    p.add_argument("--articles", type=int, default=1000,
                   help="with --suggest: published articles seeded from the corpus's own text (default 1000)")
    p.add_argument("--parse-workers", type=int, choices=range(0, 9), metavar="N",
                   help="maild's intake.parse_workers (default: unset, maild's own default)")
    a = p.parse_args(argv)
    if a.messages < 2 or a.clients < 1 or a.customers < 1 or a.timeout <= 0:
        p.error("--messages must be >= 2, --clients and --customers >= 1, --timeout > 0")
    if a.profile and a.mode == "smtp":
        p.error("--profile is for --mode inject or store (the daemon's work runs in threads cProfile does not see)")
    return Options(a.mode, a.messages, a.clients, a.customers, a.database_url, a.seed, a.timeout, a.output,
                   a.maild, a.keep, a.profile, a.suggest, a.articles, a.parse_workers)


class Deadline:
    """One time budget for the whole run, so no step can hang the benchmark."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def check(self, doing: str) -> None:
        if time.monotonic() >= self.end:
            raise BenchTimeout(f"timed out after {self.seconds:.0f} s while {doing}")


# Corpus ----------------------------------------------------------------------------

FIRST = ["Jane", "John", "Amira", "Chen", "Olga", "Pedro", "Fatima", "Lars", "Priya", "Tom", "Yuki", "Sofia",
         "Kwame", "Elena", "Marco", "Aisha", "Noah", "Ingrid", "Raj", "Zoë", "José", "Björn", "Mei", "Hannah"]
LAST = ["Doe", "Smith", "Haddad", "Wei", "Ivanova", "Alvarez", "Khan", "Nilsson", "Patel", "Becker", "Tanaka",
        "Rossi", "Mensah", "Novak", "Bianchi", "Okafor", "Müller", "Larsen", "Sharma", "O'Brien", "Dubois"]
DOMAINS = ["acme.test", "globex.test", "initech.test", "umbrella.test", "hooli.test", "stark.test",
           "wayne.test", "tyrell.test", "example-shop.test", "mail.customer.test"]
PRODUCTS = ["the mobile app", "the web portal", "the reporting module", "the API", "the desktop client",
            "the invoice export", "single sign-on", "the sync service"]
SUPPORT_SUBJECTS = [
    "Cannot log in to {product}", "{product} crashes when exporting to PDF", "Error 500 when saving order {num}",
    "Password reset email never arrives", "Urgent: {product} down for our whole team",
    "How do I add a user to {product}?", "Data missing after update {num}", "Slow response times in {product}",
    "Problème de connexion à {product}", "Fehlermeldung beim Import (Ticket {num})",
]
BILLING_SUBJECTS = [
    "Invoice {num} charged twice", "Refund request for order {num}", "Wrong VAT number on invoice {num}",
    "Question about my last invoice", "Cancel subscription {num}", "Payment failed for order {num}",
]
SENTENCES = [
    "Since this morning {product} shows an error as soon as I try to open it.",
    "We have restarted everything twice and cleared the cache, but nothing changed.",
    "This is blocking about {n} people in our team, so a quick answer would be much appreciated.",
    "The problem started right after the update you rolled out on Tuesday.",
    "I attached what I could find, but please tell me if you need more details.",
    "Our account number is {num} in case you need it.",
    "We were charged {n}0 EUR more than the amount in our contract.",
    "Could you please check what happened and let me know how to fix it?",
    "It works on one laptop but not on the others, which all run the same version.",
    "The error message says that the session has expired, although I just logged in.",
    "I already contacted you by phone last week, but I did not receive any follow-up.",
    "Our finance department needs a corrected document before the end of the month.",
    "When I click on export, the progress bar stops at {n} percent and nothing happens.",
    "We use {product} every day, so this is quite urgent for us.",
    "Thank you in advance for your help and sorry for the long message.",
]
GREETINGS = ["Hello,", "Hi support team,", "Dear Sir or Madam,", "Hi there,", "Good morning,"]
CLOSINGS = ["Best regards,", "Kind regards,", "Thanks,", "Cheers,", "Many thanks,"]


@dataclass(frozen=True)
class Customer:
    name: str
    email: str
    company: str


@dataclass(frozen=True)
class Generated:
    """One benchmark message: its bytes and what the checks need to know about it."""

    index: int
    raw: bytes
    message_id: str
    sender: str
    recipient: str
    parent: int | None  # index of the earlier message this one replies to
    html_only: bool
    attachment: bool


@dataclass(frozen=True)
class _Draft:
    """A message before it is serialised; kept so replies can quote and thread on it."""

    customer: Customer
    recipient: str
    subject: str
    text: str
    message_id: str
    references: tuple[str, ...]
    date: datetime


def make_customers(rng: random.Random, count: int) -> list[Customer]:
    people = []
    for i in range(count):
        first, last, domain = rng.choice(FIRST), rng.choice(LAST), rng.choice(DOMAINS)
        local = f"{first}.{last}".lower().replace("'", "").encode("ascii", "ignore").decode() or "user"
        people.append(Customer(f"{first} {last}", f"{local}{i}@{domain}", domain.split(".")[0].title()))
    return people


def _sentence(rng: random.Random) -> str:
    return rng.choice(SENTENCES).format(product=rng.choice(PRODUCTS), n=rng.randint(2, 90),
                                        num=rng.randint(10000, 99999))


def _paragraphs(rng: random.Random, low: int, high: int) -> list[str]:
    return [" ".join(_sentence(rng) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(low, high))]


def _new_topic(rng: random.Random, customer: Customer) -> tuple[str, str, str]:
    """(recipient, subject, body) of a message that starts a new case."""
    queue = "billing" if rng.random() < 0.3 else "support"
    pattern = rng.choice(BILLING_SUBJECTS if queue == "billing" else SUPPORT_SUBJECTS)
    subject = pattern.format(product=rng.choice(PRODUCTS), num=rng.randint(10000, 99999))
    body = _letter(rng, customer, _paragraphs(rng, 2, 4))
    return QUEUES[queue], subject, body


def _letter(rng: random.Random, customer: Customer, paragraphs: list[str]) -> str:
    phone = f"+1 555 {rng.randint(1000, 9999)}"
    signature = f"{rng.choice(CLOSINGS)}\n{customer.name}\n{customer.company} Ltd.\n{phone}"
    return "\n\n".join([rng.choice(GREETINGS), *paragraphs, signature]) + "\n"


def _reply_body(rng: random.Random, parent: _Draft) -> str:
    # Real replies quote what they answer; maild's reply stripper has to cut the quote off.
    quoted = "\n".join(f"> {line}" if line else ">" for line in parent.text.splitlines())
    when = format_datetime(parent.date)
    return (_letter(rng, parent.customer, _paragraphs(rng, 1, 2))
            + f"\nOn {when}, {parent.customer.name} <{parent.customer.email}> wrote:\n{quoted}\n")


def _html(text: str) -> str:
    paras = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in text.split("\n\n"))
    head = '<head><meta charset="utf-8"><title>mail</title></head>'
    return f'<html>{head}<body style="font-family:Arial">{paras}</body></html>'


@dataclass(frozen=True)
class Shape:
    """How heavy the messages are. The default is this benchmark's own corpus, unchanged
    (byte-identical for a seed); bench/imap.py asks for mail the size of a real mailbox."""

    attachment_share: float = 0.05
    attachment_bytes: tuple[int, int] = (2048, 8192)
    # Received/DKIM/ARC/X- headers as a big provider adds them (~3-5 KB): real delivered
    # mail carries them, and every parser reads them.
    trace_headers: bool = False


def _attach(rng: random.Random, msg: EmailMessage, shape: Shape) -> None:
    kind = rng.randrange(3)
    size = rng.randint(*shape.attachment_bytes)
    if kind == 0:
        lines = [f"2026-11-02T09:{i % 60:02d}:00Z ERROR sync failed: code={rng.randint(100, 999)}"
                 for i in range(size // 50)]
        msg.add_attachment("\n".join(lines), filename="error.log")
    elif kind == 1:
        msg.add_attachment(b"\x89PNG\r\n\x1a\n" + rng.randbytes(size), maintype="image", subtype="png",
                           filename="screenshot.png")
    else:
        msg.add_attachment(b"%PDF-1.4\n" + rng.randbytes(size), maintype="application", subtype="pdf",
                           filename="invoice.pdf")


def _serialise(draft: _Draft, rng: random.Random, html_only: bool, attachment: bool, shape: Shape) -> bytes:
    msg = EmailMessage()
    msg["From"] = formataddr((draft.customer.name, draft.customer.email))
    msg["To"] = draft.recipient
    msg["Subject"] = draft.subject
    msg["Date"] = format_datetime(draft.date)
    msg["Message-ID"] = draft.message_id
    if draft.references:
        msg["In-Reply-To"] = draft.references[-1]
        msg["References"] = " ".join(draft.references)
    if html_only:
        msg.set_content(_html(draft.text), subtype="html")
    else:
        msg.set_content(draft.text)
        if rng.random() < 0.45:  # most mail clients send text and HTML alternatives
            msg.add_alternative(_html(draft.text), subtype="html")
    if attachment:
        _attach(rng, msg, shape)
    for part in msg.walk():
        if part.is_multipart():  # the email package would pick a random boundary: not reproducible
            part.set_boundary(f"=_bench_{rng.getrandbits(64):016x}")
    trace = _trace_headers(rng, draft) if shape.trace_headers else b""
    return trace + msg.as_bytes()


def _trace_headers(rng: random.Random, draft: _Draft) -> bytes:
    """What the sender's provider and the receiving MX put above the message's own headers.

    Built as bytes, folded by hand: the email package would re-fold or RFC 2047-encode
    the long base64 signatures, which no real MTA does.
    """
    domain = draft.customer.email.rpartition("@")[2]

    def b64(n: int) -> str:
        text = base64.b64encode(rng.randbytes(n)).decode()
        return "\n\t".join(text[i:i + 72] for i in range(0, len(text), 72))

    hops = []
    for hop in range(rng.randint(3, 6)):
        when = format_datetime(draft.date + timedelta(seconds=hop))
        ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        hops.append(f"Received: from mx{hop}.{domain} (mx{hop}.{domain} [{ip}])\n\tby mx.example.test "
                    f"(Postfix) with ESMTPS id {rng.getrandbits(40):010X}\n\tfor <{draft.recipient}>; {when}")
    signed = "h=from:to:subject:date:message-id:mime-version:content-type;"
    lines = [
        f"Return-Path: <{draft.customer.email}>", *hops,
        f"Authentication-Results: mx.example.test;\n\tdkim=pass header.d={domain};\n\tspf=pass "
        f"smtp.mailfrom={draft.customer.email};\n\tdmarc=pass (p=QUARANTINE) header.from={domain}",
        f"ARC-Seal: i=1; a=rsa-sha256; t={int(draft.date.timestamp())}; cv=none; d={domain}; s=arc;\n\tb={b64(256)}",
        f"ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=arc;\n\t{signed}\n\t"
        f"bh={b64(32)};\n\tb={b64(256)}",
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=sel1;\n\t{signed}\n\t"
        f"bh={b64(32)};\n\tb={b64(256)}",
        f"X-MS-Exchange-Organization-SCL: {rng.randint(-1, 5)}",
        f"X-Forefront-Antispam-Report: CIP:10.0.0.{rng.randrange(256)};CTRY:;LANG:en;SCL:1;SRV:;"
        f"IPV:NLI;SFV:NSPM;H:mx.{domain};\n\tPTR:;CAT:NONE;SFS:({rng.getrandbits(64):x});DIR:INB;",
        f"X-Mailer: Microsoft Outlook 16.0.{rng.randint(10000, 19999)}",
    ]
    return ("\n".join(lines) + "\n").encode()


def generate(count: int, customers: int, seed: int, reply_share: float = 0.2,
             shape: Shape = Shape()) -> list[Generated]:
    """``count`` distinct messages; about ``reply_share`` of them reply to an earlier one."""


    rng = random.Random(seed)
    people = make_customers(rng, customers)
    start = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    drafts: list[_Draft] = []
    out: list[Generated] = []
    for i in range(count):
        parent = rng.randrange(max(0, i - 200), i) if i > 0 and rng.random() < reply_share else None
        draft = _next_draft(rng, people, drafts, parent, i, seed, start + timedelta(seconds=37 * i))
        html_only, attachment = rng.random() < 0.10, rng.random() < shape.attachment_share
        raw = _serialise(draft, rng, html_only, attachment, shape)
        drafts.append(draft)
        out.append(Generated(i, raw, draft.message_id, draft.customer.email, draft.recipient, parent,
                             html_only, attachment))
    return out


def _next_draft(rng: random.Random, people: list[Customer], drafts: list[_Draft], parent: int | None,
                i: int, seed: int, date: datetime) -> _Draft:
    if parent is None:
        customer = rng.choice(people)
        recipient, subject, text = _new_topic(rng, customer)
        references: tuple[str, ...] = ()
    else:
        # The customer answers their own thread, to the same queue, keeping the history.
        p = drafts[parent]
        customer, recipient = p.customer, p.recipient
        subject = p.subject if p.subject.startswith("Re: ") else f"Re: {p.subject}"
        text, references = _reply_body(rng, p), (*p.references, p.message_id)
    domain = customer.email.rpartition("@")[2]
    message_id = f"<bench.{seed}.{i}.{rng.getrandbits(40):010x}@mail.{domain}>"
    return _Draft(customer, recipient, subject, text, message_id, references, date)


# The installation ---------------------------------------------------------------------

CONFIG = """\
# A throw-away maild installation written by bench/intake.py, modelled on config.example.toml.

[database]
url = "{db_url}"
echo = false
busy_timeout = 30.0

[paths]
data = "data"
templates = "{templates}"
rules = "{rules}"

[intake]
poll_interval = 1.0
max_attempts = 5
lease_seconds = 300
{parse_workers}
[intake.smtp]
enabled = {smtp_enabled}
host = "127.0.0.1"
port = {port}
protocol = "smtp"
max_message_size = 26214400
# Named explicitly so startup does not depend on a DNS lookup of this host.
hostname = "maild-bench.test"

[outgoing]
transport = "maildir"
maildir = "outgoing"
max_attempts = 10
backoff_initial = 30.0
backoff_max = 3600.0

[cases]
reference_prefix = "CAS"
reopen_window_days = 7

[acknowledgements]
enabled = true
# The example's 5 per sender per hour would (rightly) hold back acknowledgements to a
# customer who opens many cases in a few minutes. Here every new case must be
# acknowledged, so the check "one acknowledgement sent per case" is exact.
max_per_sender_per_hour = {ack_limit}
template = "acknowledgement"

[queues.support]
addresses = ["support@example.test"]
name = "Example Support"
acknowledge = true

[queues.billing]
addresses = ["billing@example.test"]
name = "Example Billing"
acknowledge = true

[[agents]]
name = "Alice Agent"
emails = ["alice@example.test"]

[[agents]]
name = "Bob Agent"
emails = ["bob@example.test"]

[logging]
level = "INFO"
format = "plain"
"""


@dataclass(frozen=True)
class Install:
    path: Path
    config: Path
    db_url: str
    database: str  # "sqlite" or "postgresql", for the report
    port: int
    maild: Path

    def command(self, *args: str) -> list[str]:
        return [str(self.maild), "--config", str(self.config), *args]

    @property
    def log(self) -> Path:
        return self.path / "maild.log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A fresh schema for this run, reached through search_path (as tests/conftest.py does)."""
    schema = "bench_" + secrets.token_hex(6)
    admin = sa.create_engine(base_url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        raise BenchError(f"PostgreSQL at {_redact(base_url)} is unreachable: {exc.orig}") from None
    try:
        sep = "&" if "?" in base_url else "?"
        yield f"{base_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def create_install(opts: Options, stack: ExitStack, deadline: Deadline, extra: str = "",
                   db_url: str | None = None) -> Install:
    """Temp dir, config, database and schema; everything is undone when ``stack`` closes.

    ``extra`` is TOML appended to the config (bench/imap.py adds a ``[queues.support.imap]``).
    ``db_url``: a database the caller made and removes (a test's fixture), used as it is.
    """
    path = Path(tempfile.mkdtemp(prefix="maild-bench-"))
    if opts.keep:
        print(f"keeping the installation in {path}")
    else:
        stack.callback(shutil.rmtree, path, ignore_errors=True)
    if db_url:
        database = sa.engine.make_url(db_url).get_backend_name()
    elif opts.database_url:
        db_url, database = stack.enter_context(postgres_schema(opts.database_url)), "postgresql"
    else:
        db_url, database = f"sqlite:///{path / 'maild.db'}", "sqlite"
    port = free_port()
    config = path / "config.toml"
    rules = REPO / "rules"
    if opts.suggest is not None:  # one rule for every message: suggest articles in the acknowledgement
        rules = path / "rules"
        rules.mkdir()
        (rules / "suggest.toml").write_text(
            f'[[creation]]\nname = "suggest articles"\nset = {{ suggest_articles = {opts.suggest} }}\n')
    config.write_text(CONFIG.format(
        db_url=db_url, templates=(REPO / "templates").as_posix(), rules=rules.as_posix(),
        smtp_enabled="true" if opts.mode == "smtp" else "false", port=port, ack_limit=opts.messages + 1,
        parse_workers="" if opts.parse_workers is None else f"parse_workers = {opts.parse_workers}\n",
    ) + extra)
    install = Install(path, config, db_url, database, port, opts.maild)
    _check(run_command(install.command("db", "upgrade"), deadline), "maild db upgrade")
    return install


def run_command(args: list[str], deadline: Deadline) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, check=False, capture_output=True, text=True, timeout=deadline.remaining())
    except subprocess.TimeoutExpired:
        raise BenchTimeout(f"timed out after {deadline.seconds:.0f} s running {' '.join(args[3:])}") from None


def _check(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        raise BenchError(f"{what} exited {result.returncode}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def maild_version(install: Install, deadline: Deadline) -> str:
    out = _check(run_command(install.command("--version"), deadline), "maild --version")
    return out.strip().rpartition(" ")[2]


# Database checks ----------------------------------------------------------------------

COUNTS_SQL = sa.text("""
SELECT
  (SELECT count(*) FROM inbound_message) AS inbound,
  (SELECT count(*) FROM inbound_message WHERE state <> 'received') AS processed,
  (SELECT count(*) FROM inbound_message WHERE state = 'quarantined') AS quarantined,
  (SELECT count(*) FROM inbound_message WHERE outcome = 'created') AS created,
  (SELECT count(*) FROM inbound_message WHERE outcome = 'threaded') AS threaded,
  (SELECT count(*) FROM cases) AS cases,
  (SELECT count(*) FROM outbound_message) AS outbound,
  (SELECT count(*) FROM outbound_message WHERE state IN ('pending', 'sending')) AS outbound_open,
  (SELECT count(*) FROM outbound_message WHERE state = 'sent') AS sent
""")


@dataclass(frozen=True)
class Counts:
    inbound: int
    processed: int
    quarantined: int
    created: int
    threaded: int
    cases: int
    outbound: int
    outbound_open: int
    sent: int


def read_counts(engine: sa.Engine) -> Counts:
    # Plain counts in one round trip: cheap enough to poll, and independent of maild's code.
    with engine.connect() as conn:
        row = conn.execute(COUNTS_SQL).one()
    return Counts(*(int(v) for v in row))


def wait_until_done(engine: sa.Engine, expected: int, deadline: Deadline) -> float:
    """Poll until all ``expected`` messages are processed and the outbox is empty; return when."""
    while True:
        counts = read_counts(engine)
        if counts.processed >= expected and counts.outbound_open == 0:
            return time.monotonic()
        deadline.check(f"waiting for processing: {counts.processed}/{expected} processed, "
                       f"{counts.sent}/{counts.cases} acknowledgements sent")
        time.sleep(0.05)


def verify(counts: Counts, corpus: list[Generated], maildir: Path) -> list[str]:
    """Everything that must hold after a run; an empty list means the figures are trustworthy."""
    n, replies = len(corpus), sum(1 for m in corpus if m.parent is not None)
    delivered = len(list((maildir / "new").iterdir())) if (maildir / "new").is_dir() else 0
    expect = [
        ("inbound rows", counts.inbound, n),
        ("quarantined", counts.quarantined, 0),
        ("cases", counts.cases, n - replies),
        ("messages that created a case", counts.created, n - replies),
        ("replies threaded onto their case", counts.threaded, replies),
        ("acknowledgements sent", counts.sent, counts.cases),
        ("outbound rows", counts.outbound, counts.cases),
        ("files in the outgoing Maildir", delivered, counts.sent),
    ]
    return [f"{what}: {got}, expected {want}" for what, got, want in expect if got != want]


# Clients -----------------------------------------------------------------------------


class Sender(Protocol):
    def send(self, msg: Generated) -> None: ...

    def close(self) -> None: ...


@dataclass
class Delivery:
    """What the client threads report back."""

    last_ack: float = 0.0
    temp_failures: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Schedule:
    """Hands out messages in corpus order; a reply waits until its parent was accepted.

    The wait makes threading deterministic: the parent's row (lower id) is committed
    before the reply's, and maild processes rows in id order, so every reply finds its
    case. Parents are earlier in the queue, hence already taken: no deadlock.
    """

    def __init__(self, corpus: list[Generated]) -> None:
        self.corpus = corpus
        self.accepted = [threading.Event() for _ in corpus]
        self.stop = threading.Event()
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> Generated | None:
        with self._lock:
            if self._next >= len(self.corpus) or self.stop.is_set():
                return None
            msg = self.corpus[self._next]
            self._next += 1
        while msg.parent is not None and not self.accepted[msg.parent].wait(0.1):
            if self.stop.is_set():
                return None
        return msg


def client(schedule: Schedule, make_sender: Callable[[], Sender], result: Delivery) -> None:
    """One client thread: deliver until the schedule is empty, retrying temporary refusals."""
    try:
        sender = make_sender()
        try:
            while (msg := schedule.take()) is not None:
                _deliver(sender, msg, schedule, result)
        finally:
            sender.close()
    except Exception as exc:  # noqa: BLE001 -- reported by the main thread; stop the others too
        with result.lock:
            result.errors.append(f"{type(exc).__name__}: {exc}")
        schedule.stop.set()


def _deliver(sender: Sender, msg: Generated, schedule: Schedule, result: Delivery) -> None:
    for attempt in range(1, 11):
        try:
            sender.send(msg)
            break
        except TemporaryRefusal:
            with result.lock:
                result.temp_failures += 1
            if attempt == 10:
                raise
            time.sleep(0.2 * attempt)
    now = time.monotonic()
    with result.lock:
        result.last_ack = max(result.last_ack, now)
    schedule.accepted[msg.index].set()


def deliver_all(corpus: list[Generated], clients: int, make_sender: Callable[[], Sender],
                deadline: Deadline) -> tuple[float, Delivery]:
    """Run the client threads; return (start time, results)."""
    schedule, result = Schedule(corpus), Delivery()
    # Daemon threads: if the deadline passes, a client stuck on a socket must not keep us alive.
    threads = [threading.Thread(target=client, args=(schedule, make_sender, result), daemon=True)
               for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(deadline.remaining())
            accepted = sum(e.is_set() for e in schedule.accepted)
            deadline.check(f"delivering messages ({accepted}/{len(corpus)} accepted)")
    finally:
        schedule.stop.set()
    if result.errors:
        raise BenchError(f"delivery failed: {result.errors[0]}")
    return start, result


class SmtpSender:
    """One SMTP session per client thread, reused for every message, as an MTA would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.smtp = self._connect()

    def _connect(self) -> smtplib.SMTP:
        # local_hostname: skip smtplib's getfqdn(), which can stall on a sandbox's DNS.
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="bench.localhost", timeout=60)

    def send(self, msg: Generated) -> None:
        data = msg.raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # SMTP wants CRLF
        try:
            self.smtp.sendmail(msg.sender, [msg.recipient], data)
        except smtplib.SMTPServerDisconnected:
            self.smtp = self._connect()
            raise TemporaryRefusal("server disconnected") from None
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                self.smtp.rset()
                raise TemporaryRefusal(f"{exc.smtp_code} {exc.smtp_error!r}") from None
            raise

    def close(self) -> None:
        try:
            self.smtp.quit()
        except smtplib.SMTPException:
            self.smtp.close()


class InjectSender:
    """``maild inject`` per message, with the environment Postfix's pipe(8) would set."""

    def __init__(self, install: Install, deadline: Deadline, peak: list[int]) -> None:
        self.install, self.deadline, self.peak = install, deadline, peak

    def send(self, msg: Generated) -> None:
        env = {**os.environ, "SENDER": msg.sender, "RECIPIENT": msg.recipient, "ORIGINAL_RECIPIENT": msg.recipient}
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self.install.command("inject"), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
            assert proc.stdin is not None
            proc.stdin.write(msg.raw)  # inject reads all of stdin first: no pipe deadlock
            proc.stdin.close()
            code, usage = wait_with_rusage(proc, self.deadline, "maild inject")
            self.peak.append(usage.ru_maxrss)
            if code == EX_TEMPFAIL:
                raise TemporaryRefusal("maild inject exited 75")
            if code != 0:
                err.seek(0)
                raise BenchError(f"maild inject exited {code}: {err.read().decode(errors='replace').strip()}")

    def close(self) -> None:
        pass


# Processes ---------------------------------------------------------------------------


def wait_with_rusage(
    proc: subprocess.Popen[Any], deadline: Deadline, what: str
) -> tuple[int, resource.struct_rusage]:
    """Wait for a child and return (exit code, its own resource usage: peak RSS, CPU).

    os.wait4 reports the usage of exactly this child, unlike RUSAGE_CHILDREN, which
    would mix in every inject and the db upgrade run before.
    """
    killer = threading.Timer(deadline.remaining(), proc.kill)  # wait4 has no timeout of its own
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    deadline.check(f"waiting for {what}")
    return proc.returncode, usage


def start_daemon(install: Install, stack: ExitStack, deadline: Deadline) -> subprocess.Popen[bytes]:
    log = stack.enter_context(install.log.open("wb"))
    proc = subprocess.Popen(install.command("run"), stdout=log, stderr=log, cwd=install.path)
    stack.callback(_kill, proc)  # whatever happens, no daemon outlives the benchmark
    while True:
        if proc.poll() is not None:
            raise BenchError(f"maild run exited {proc.returncode} at startup:\n{tail(install.log)}")
        try:
            with socket.create_connection(("127.0.0.1", install.port), timeout=1):
                return proc
        except OSError:
            deadline.check("waiting for maild run to listen")
            time.sleep(0.05)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None and proc.poll() is None:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the peak resident set size the kernel recorded for this process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (maild's parse workers), from /proc."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


class ProcessTree:
    """maild's memory: its own VmHWM plus its parse workers' (its children), an upper bound
    of what it held at once. A process that exited keeps the last figure read for it.
    Not ru_maxrss: that gives the largest single process, and a child started with vfork
    (subprocess does) inherits its parent's high-water mark."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._seen: dict[int, float] = {}  # pid -> VmHWM in KiB

    def sample(self) -> float | None:
        """Read every process's VmHWM now; the total in KiB, None while none was ever read."""
        for pid in [self.pid, *children(self.pid)]:
            try:
                self._seen[pid] = peak_rss_kib(pid)
            except (OSError, BenchError):
                continue  # exited (a zombie has no memory left to report)
        return sum(self._seen.values()) if self._seen else None


class TreePeak:
    """A ProcessTree read every POLL seconds in a thread, for a process timed to its exit."""

    POLL = 0.1

    def __init__(self, pid: int) -> None:
        self.tree, self.kib = ProcessTree(pid), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.POLL):
            self.kib = self.tree.sample() or self.kib

    def stop(self) -> float:
        """Stop reading; the peak in KiB."""
        self._stop.set()
        self._thread.join()
        return self.kib


def stop_daemon(proc: subprocess.Popen[bytes], deadline: Deadline) -> tuple[int, resource.struct_rusage]:
    proc.send_signal(signal.SIGTERM)
    return wait_with_rusage(proc, deadline, "maild run to exit after SIGTERM")


def cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


# Results -----------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    database: str
    messages: int
    clients: int
    intake_per_sec: float
    end_to_end_per_sec: float
    peak_rss_mib: float
    python: str
    maild_version: str
    date: str
    seed: int
    replies: int
    html_only: int
    with_attachment: int
    customers: int
    intake_seconds: float
    end_to_end_seconds: float
    temp_failures: int
    maild_cpu_seconds: float
    bench_cpu_seconds: float
    nproc: int
    machine: str
    process_per_sec: float | None = None
    process_seconds: float | None = None
    run_once_idle_seconds: float | None = None
    inject_peak_rss_mib: float | None = None


def base_result(opts: Options, install: Install, corpus: list[Generated], deadline: Deadline) -> dict[str, Any]:
    return {
        "mode": opts.mode, "database": install.database, "messages": len(corpus), "clients": opts.clients,
        "python": platform.python_version(), "maild_version": maild_version(install, deadline),
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "seed": opts.seed,
        "replies": sum(m.parent is not None for m in corpus), "html_only": sum(m.html_only for m in corpus),
        "with_attachment": sum(m.attachment for m in corpus), "customers": len({m.sender for m in corpus}),
        "nproc": os.cpu_count() or 0, "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def print_report(r: Result) -> None:
    print(f"\nmaild {r.maild_version} intake benchmark: mode={r.mode} database={r.database} "
          f"messages={r.messages} clients={r.clients}")
    print(f"  corpus: {r.customers} senders, {r.replies} replies, {r.html_only} HTML-only, "
          f"{r.with_attachment} with attachment (seed {r.seed})")
    print(f"  intake:      {r.intake_per_sec:8.1f} msg/s  ({r.intake_seconds:.2f} s)")
    if r.process_per_sec is not None:
        print(f"  run --once:  {r.process_per_sec:8.1f} msg/s  ({r.process_seconds:.2f} s, of which "
              f"~{r.run_once_idle_seconds:.2f} s start-up)")
    print(f"  end-to-end:  {r.end_to_end_per_sec:8.1f} msg/s  ({r.end_to_end_seconds:.2f} s)")
    print(f"  peak RSS:    {r.peak_rss_mib:8.1f} MiB" +
          (f"  (largest maild inject: {r.inject_peak_rss_mib:.1f} MiB)" if r.inject_peak_rss_mib else ""))
    print(f"  CPU:         maild {r.maild_cpu_seconds:.1f} s, benchmark clients {r.bench_cpu_seconds:.1f} s; "
          f"temporary refusals retried: {r.temp_failures}")
    print(f"  machine:     {r.machine}, {r.nproc} CPUs, Python {r.python}, {r.date}")


# Modes -------------------------------------------------------------------------------


def run_smtp(opts: Options, install: Install, corpus: list[Generated], engine: sa.Engine,
             stack: ExitStack, deadline: Deadline) -> Result:
    proc = start_daemon(install, stack, deadline)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start, delivery = deliver_all(corpus, opts.clients, lambda: SmtpSender(install.port), deadline)
    done = wait_until_done(engine, len(corpus), deadline)
    bench_cpu = cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)) - cpu_seconds(cpu0)
    peak = ProcessTree(proc.pid).sample() or 0.0  # before SIGTERM: afterwards /proc/<pid> may be gone
    code, usage = stop_daemon(proc, deadline)
    if code != 0:
        raise BenchError(f"maild run exited {code} after SIGTERM, expected 0:\n{tail(install.log)}")
    n = len(corpus)
    intake, e2e = delivery.last_ack - start, done - start
    return Result(**base_result(opts, install, corpus, deadline),
                  intake_per_sec=n / intake, end_to_end_per_sec=n / e2e, peak_rss_mib=peak / MIB,
                  intake_seconds=intake, end_to_end_seconds=e2e, temp_failures=delivery.temp_failures,
                  maild_cpu_seconds=cpu_seconds(usage), bench_cpu_seconds=bench_cpu)


def run_inject(opts: Options, install: Install, corpus: list[Generated], deadline: Deadline) -> Result:
    idle, _, _ = run_once(install, deadline, None)  # start-up cost alone, to read the figure below
    peaks: list[int] = []
    # Every inject is reaped by wait4, so RUSAGE_CHILDREN grows by exactly their CPU time.
    children0, self0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    start, delivery = deliver_all(corpus, opts.clients, lambda: InjectSender(install, deadline, peaks), deadline)
    inject_cpu = cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN)) - cpu_seconds(children0)
    bench_cpu = cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)) - cpu_seconds(self0)
    seconds, usage, peak = run_once(install, deadline, opts.profile)
    n, intake = len(corpus), delivery.last_ack - start
    return Result(**base_result(opts, install, corpus, deadline), intake_per_sec=n / intake,
                  end_to_end_per_sec=n / (intake + seconds), peak_rss_mib=peak,
                  intake_seconds=intake, end_to_end_seconds=intake + seconds, temp_failures=delivery.temp_failures,
                  maild_cpu_seconds=inject_cpu + cpu_seconds(usage), bench_cpu_seconds=bench_cpu,
                  process_per_sec=n / seconds, process_seconds=seconds, run_once_idle_seconds=idle,
                  inject_peak_rss_mib=max(peaks) / MIB)


def run_store(opts: Options, install: Install, corpus: list[Generated], deadline: Deadline) -> Result:
    idle, _, _ = run_once(install, deadline, None)  # start-up cost alone, to read the figure below
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    store_all(install, corpus)
    stored = time.monotonic() - start
    bench_cpu = cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)) - cpu_seconds(self0)
    seconds, usage, peak = run_once(install, deadline, opts.profile)
    n = len(corpus)
    return Result(**base_result(opts, install, corpus, deadline), intake_per_sec=n / stored,
                  end_to_end_per_sec=n / (stored + seconds), peak_rss_mib=peak,
                  intake_seconds=stored, end_to_end_seconds=stored + seconds, temp_failures=0,
                  maild_cpu_seconds=cpu_seconds(usage), bench_cpu_seconds=bench_cpu,
                  process_per_sec=n / seconds, process_seconds=seconds, run_once_idle_seconds=idle)


def store_all(install: Install, corpus: list[Generated]) -> None:
    """Every message into the inbound table, committed one by one as intake does."""
    from maild import inbound
    from maild.app import load_app
    from maild.models import Queue

    app = load_app(install.config)
    try:
        app.prepare()  # the queues' rows
        with app.factory() as session:
            queue_id = session.scalar(sa.select(Queue.id).where(Queue.name == "support"))
        assert queue_id is not None
        for msg in corpus:
            inbound.add(app.factory, [queue_id], msg.raw, source="bench", now=datetime.now(UTC))
    finally:
        app.close()


def run_once(install: Install, deadline: Deadline, profile: Path | None
             ) -> tuple[float, resource.struct_rusage, float]:
    """Time one ``maild run --once``; return (seconds, its resource usage, its peak RSS in MiB
    with its parse workers': see TreePeak)."""
    args = install.command("run", "--once")
    if profile is not None:
        # cProfile.run catches the SystemExit that click raises at the end.
        code = ("import cProfile, sys; from maild.cli.main import main; "
                f"sys.argv = {['maild', *args[1:]]!r}; cProfile.run('main()', {str(profile)!r})")
        args = [sys.executable, "-c", code]
    with (install.path / "run-once.log").open("ab") as log:
        started = time.monotonic()
        proc = subprocess.Popen(args, stdout=log, stderr=log, cwd=install.path)
        peak = TreePeak(proc.pid)
        exit_code, usage = wait_with_rusage(proc, deadline, "maild run --once")
        seconds = time.monotonic() - started
        peak_kib = peak.stop()
    if exit_code != 0:
        raise BenchError(f"maild run --once exited {exit_code}:\n{tail(install.path / 'run-once.log')}")
    return seconds, usage, peak_kib / MIB


def print_profile(path: Path, top: int = 25) -> None:
    print(f"\ncProfile of `maild run --once` (top {top} by cumulative time; full stats in {path}):")
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(top)


def benchmark(opts: Options, deadline: Deadline) -> Result:
    corpus = generate(opts.messages, opts.customers, opts.seed)
    with ExitStack() as stack:
        install = create_install(opts, stack, deadline)
        engine = sa.create_engine(install.db_url)
        stack.callback(engine.dispose)  # before the schema is dropped: no connection may hold it
        if opts.suggest is not None:
            seed_articles(install, corpus, opts.articles)
            print(f"seeded {opts.articles} published knowledge articles; each acknowledgement suggests up to "
                  f"{opts.suggest}")
        if opts.mode == "smtp":
            result = run_smtp(opts, install, corpus, engine, stack, deadline)
        elif opts.mode == "store":
            result = run_store(opts, install, corpus, deadline)
        else:
            result = run_inject(opts, install, corpus, deadline)
        problems = verify(read_counts(engine), corpus, install.path / "outgoing")
        if problems:
            raise BenchError("the run is not trustworthy:\n  " + "\n  ".join(problems))
        return result


def seed_articles(install: Install, corpus: list[Generated], count: int) -> None:
    """Publish ``count`` articles made of the corpus's own subjects and text, so suggestions
    find real matches (what a knowledge base grown from these cases would hold)."""
    from email import message_from_bytes, policy

    from maild import knowledge
    from maild.app import load_app
    from maild.db import transaction

    app = load_app(install.config)
    now = datetime.now(UTC)
    try:
        with transaction(app.factory) as session:
            for i in range(count):
                msg = message_from_bytes(corpus[i % len(corpus)].raw, policy=policy.default)
                part = msg.get_body(("plain", "html"))
                body = str(part.get_content()) if part is not None else ""
                text = knowledge.Text(title=f"{msg['Subject']} ({i})", body=body or "(empty)")
                knowledge.set_state(session, knowledge.add(session, text, author="bench", now=now), "published",
                                    now=now)
    finally:
        app.close()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    deadline = Deadline(opts.timeout)
    try:
        result = benchmark(opts, deadline)
    except BenchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    print_report(result)
    if opts.profile:
        print_profile(opts.profile)
    if opts.output:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(result).items()}
        opts.output.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"  written to {opts.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
