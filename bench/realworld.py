"""Judge maild's correctness on a generated support mailbox with a real-world mix of mail.

Not a speed benchmark: it asks whether every message of a realistic mailbox ends up where
it belongs, and says which ones do not.

1. Generate N messages (deterministic for ``--seed``) over many threads: customers at
   company domains (several people per company) and at public mail providers; each
   thread a customer's first message (plain or text+HTML, some with 20-200 KB
   attachments, some non-English with encoded headers), then replies threaded with
   In-Reply-To/References: by the customer, by a colleague Cc'd on the thread, by a
   colleague of the same company who was not Cc'd, and the customer answering that
   colleague. Besides: out-of-office auto-replies (RFC 3834, X-Autoreply, Exchange's
   headers; some answering a customer's message, some standalone), Message-ID collisions
   (another sender's new message reusing a stored Message-ID) and broken headers
   (no Message-ID, no Date, a bad charset). The ground truth (each message's thread and
   kind) is kept apart, never in the mail.
2. Load the mailbox into a private Dovecot and drain it with maild (``maild run --once``;
   ``--workers``: daemons side by side on PostgreSQL; ``--kill``: a daemon killed with
   SIGKILL at random points and restarted).
3. Phase 2: for about 1% of the messages, an RFC 3464 DSN (multipart/report from
   MAILER-DAEMON, Return-Path <>) bouncing maild's acknowledgement as it was sent (read
   from the outgoing Maildir) is appended to the mailbox, which is drained again.
4. Judge from the database: every message stored once, every reply on its thread's case,
   no case mixing two threads, no case made by an auto-reply or a DSN. Exit 1 when one of
   these fails (or, with ``--workers``, when the workers' cases differ from one worker's).

    .venv/bin/python bench/realworld.py [--messages 2000] [--db sqlite|postgresql]
        [--workers 2] [--kill 5] [--output FILE.json] [--truth FILE.json]

Needs root, Dovecot and the ``maildtest`` user, as bench/imap.py does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH)]  # reuse bench/imap.py (which brings bench/intake.py and tests/dovecot.py)

import imap as bench_imap  # noqa: E402
import intake as bench_intake  # noqa: E402
from intake import BenchError, Deadline, Generated, Install  # noqa: E402

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SUPPORT = bench_intake.QUEUES["support"]
# The weight of a real mailbox's mail (trace headers on every message), attachments 20-200 KB.
SHAPE = bench_intake.Shape(attachment_share=0.10, attachment_bytes=(20_000, 200_000), trace_headers=True)

# Kinds of message (the ground truth's "kind").
FIRST = "first"  # a customer opens a thread
REPLY = "reply"  # the customer again, In-Reply-To the thread's latest message
CC_REPLY = "cc_reply"  # a colleague Cc'd on the thread replies to all
COLLEAGUE_REPLY = "colleague_reply"  # a colleague of the same company, not on the thread, answers one of its messages
REPLY_TO_COLLEAGUE = "reply_to_colleague"  # the customer answers that colleague's message
AUTO_REPLY = "auto_reply"  # out of office, answering a customer's message of the thread
AUTO_STANDALONE = "auto_reply_standalone"  # out of office, about nothing maild knows
COLLISION = "collision"  # another sender's new message under a Message-ID already used
DSN = "dsn"  # a delivery failure report on maild's acknowledgement (phase 2)
HUMAN_REPLIES = (REPLY, CC_REPLY, COLLEAGUE_REPLY, REPLY_TO_COLLEAGUE)
AUTOMATIC = (AUTO_REPLY, AUTO_STANDALONE, DSN)
OPENERS = (FIRST, COLLISION)  # each should make one case
KINDS = (FIRST, *HUMAN_REPLIES, COLLISION, AUTO_REPLY, AUTO_STANDALONE, DSN)

# Shares of the N messages (the rest are threads' firsts and replies).
AUTO_SHARE, COLLISION_SHARE = 0.03, 0.01
BROKEN_SHARE = 0.01  # each of: no Message-ID, no Date, bad charset
DSN_SHARE = 0.01  # phase 2: DSNs for about this share of N


# The world: companies, people, what they write ------------------------------------------

COMPANIES = ["Northwind", "Contoso", "Fabrikam", "Tailspin", "Litware", "Proseware", "Woodgrove", "Relecloud",
             "Fourth Coffee", "Coho Winery", "Alpine Ski House", "Trey Research", "Wingtip Toys", "VanArsdel",
             "Lucerne Publishing", "Humongous Insurance", "Blue Yonder", "Wide World Importers", "Adatum",
             "Graphic Design Institute"]
# Public providers, and the language their users write in when they do not write English.
PUBLIC = {"gmail.com": "en", "outlook.com": "en", "yahoo.com": "en", "hotmail.com": "en", "icloud.com": "en",
          "gmx.de": "de", "web.de": "de", "orange.fr": "fr", "yandex.ru": "ru", "yahoo.co.jp": "ja"}
FOREIGN: dict[str, dict[str, Any]] = {
    "de": {"names": [("Jürgen", "Müller"), ("Käthe", "Schröder"), ("Björn", "Weiß"), ("Grete", "Hoffmann")],
           "greeting": "Hallo,", "closing": "Viele Grüße,", "re": "AW: ", "auto": "Abwesenheitsnotiz: ",
           "subjects": ["Anmeldung bei {product} schlägt fehl", "Rechnung {num} doppelt abgebucht",
                        "Fehlermeldung beim Export – bitte um Rückruf"],
           "sentences": ["Seit heute Morgen können wir uns nicht mehr anmelden.",
                         "Die Fehlermeldung lautet „Sitzung abgelaufen“, obwohl ich gerade angemeldet war.",
                         "Wir haben den Browser-Cache geleert, aber es hat nichts geändert.",
                         "Könnten Sie das bitte dringend prüfen? Unser Team ist blockiert."],
           "away": "Ich bin bis {until} nicht im Büro und habe keinen Zugriff auf meine E-Mails."},
    "fr": {"names": [("Hélène", "Dupré"), ("François", "Lefèvre"), ("Zoé", "Béranger")],
           "greeting": "Bonjour,", "closing": "Cordialement,", "re": "RE: ", "auto": "Réponse automatique : ",
           "subjects": ["Problème de connexion à {product}", "Facture {num} : montant erroné",
                        "Impossible d'exporter les données – urgent"],
           "sentences": ["Depuis ce matin, l'application affiche une erreur dès l'ouverture.",
                         "Nous avons déjà redémarré les postes, sans succès.",
                         "Le montant facturé ne correspond pas à notre contrat.",
                         "Merci de bien vouloir vérifier ce qui s'est passé."],
           "away": "Je suis absente jusqu'au {until} avec un accès limité à mes e-mails."},
    "ru": {"names": [("Ольга", "Иванова"), ("Дмитрий", "Петров"), ("Анна", "Смирнова")],
           "greeting": "Здравствуйте,", "closing": "С уважением,", "re": "Re: ", "auto": "Автоответ: ",
           "subjects": ["Не могу войти в {product}", "Ошибка при экспорте отчёта {num}"],
           "sentences": ["С утра приложение выдаёт ошибку при запуске.",
                         "Мы уже очистили кэш и перезапустили компьютеры.",
                         "Пожалуйста, проверьте, в чём проблема."],
           "away": "Меня нет в офисе до {until}, доступ к почте ограничен."},
    "ja": {"names": [("太郎", "山田"), ("花子", "佐藤"), ("健", "鈴木")],
           "greeting": "お世話になっております。", "closing": "よろしくお願いいたします。", "re": "Re: ",
           "auto": "不在通知: ",
           "subjects": ["{product}にログインできません", "請求書{num}について"],
           "sentences": ["今朝からアプリを開くとエラーが表示されます。", "キャッシュを削除しましたが改善しません。",
                         "至急ご確認いただけますでしょうか。"],
           "away": "{until}まで不在にしております。"},
}
AWAY_EN = ("I am out of the office until {until} with limited access to email. For anything urgent please "
           "contact my colleague {colleague}.")
AUTO_SUBJECTS = ["Automatic reply: ", "Out of Office: ", "Auto: ", "Out of office re: "]
STANDALONE_SUBJECTS = ["Out of Office", "Automatic reply: Your message", "Away until next week",
                       "Automatic reply: Newsletter November"]
# Out-of-office mail, by how it says so (maild's rules have to recognise each).
AUTO_VARIANTS = {
    "auto-submitted": [("Auto-Submitted", "auto-replied")],  # RFC 3834
    "x-autoreply": [("X-Autoreply", "yes")],
    "exchange": [("X-Auto-Response-Suppress", "All"), ("X-MS-Exchange-Inbox-Rules-Loop", "{sender}")],
    "exchange-suppress-only": [("X-Auto-Response-Suppress", "All")],
    "exchange-rules-loop-only": [("X-MS-Exchange-Inbox-Rules-Loop", "{sender}")],
}
# Broken headers, and for a bad charset how it is bad.
NO_MESSAGE_ID, NO_DATE, BAD_CHARSET = "no_message_id", "no_date", "bad_charset"
BAD_CHARSETS = {"undeclared-8bit": "text/plain", "unknown-charset": 'text/plain; charset="x-mac-unknown"',
                "latin1-labelled-utf8": 'text/plain; charset="utf-8"'}


@dataclass(frozen=True)
class Person:
    name: str
    email: str
    company: str | None  # None: a public mail provider's user
    lang: str  # "en" or a key of FOREIGN

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]

    def address(self) -> str:
        return formataddr((self.name, self.email))  # RFC 2047-encoded where the name is not ASCII


@dataclass
class World:
    companies: dict[str, list[Person]]  # by domain
    public: list[Person]


def _slug(text: str) -> str:
    return "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c == "-")


def _person(rng: random.Random, domain: str, company: str | None, lang: str, taken: set[str]) -> Person:
    if lang == "en":
        first, last = rng.choice(bench_intake.FIRST), rng.choice(bench_intake.LAST)
    else:
        first, last = rng.choice(FOREIGN[lang]["names"])
    local = f"{first}.{last}".lower().replace("'", "").encode("ascii", "ignore").decode().strip(".")
    if lang in ("ru", "ja") or not local:
        local = f"user.{rng.randrange(10_000)}"
    if company is None:
        local += str(rng.randrange(1, 999))
    email = f"{local}@{domain}"
    while email in taken:
        local += str(rng.randrange(10))
        email = f"{local}@{domain}"
    taken.add(email)
    return Person(f"{first} {last}" if lang != "ja" else f"{last} {first}", email, company, lang)


def make_world(rng: random.Random, n: int) -> World:
    taken: set[str] = set()
    companies: dict[str, list[Person]] = {}
    for i in range(max(4, n // 40)):
        name = COMPANIES[i % len(COMPANIES)] + (f" {i // len(COMPANIES) + 1}" if i >= len(COMPANIES) else "")
        domain = f"{_slug(name)}.test"
        lang = "de" if rng.random() < 0.03 else "en"
        companies[domain] = [_person(rng, domain, name, lang, taken) for _ in range(rng.randint(3, 7))]
    public = []
    for _ in range(max(10, n // 12)):
        domain = rng.choice(list(PUBLIC))
        lang = PUBLIC[domain] if rng.random() < 0.15 else "en"  # ~5% of the mail non-English in all
        public.append(_person(rng, domain, None, lang, taken))
    return World(companies, public)


# Messages ----------------------------------------------------------------------------------


@dataclass
class Mail:
    """One message of the mailbox and its ground truth."""

    thread: str
    kind: str
    sender: Person
    to: list[str]
    cc: list[str]
    subject: str
    text: str
    date: datetime
    message_id: str | None  # as in its header; None: it has none (broken)
    references: tuple[str, ...] = ()
    parent: Mail | None = None
    attachment: bool = False
    variant: str | None = None  # auto-reply: AUTO_VARIANTS key; bad charset: BAD_CHARSETS key
    broken: str | None = None
    owner: Mail | None = None  # collision: the earlier message whose Message-ID it reuses
    about: str | None = None  # DSN: the acknowledgement's Message-ID
    extra: list[tuple[str, str]] = field(default_factory=list)
    index: int = -1
    raw: bytes = b""

    def truth(self) -> dict[str, Any]:
        return {"index": self.index, "thread": self.thread, "kind": self.kind, "sender": self.sender.email,
                "message_id": self.message_id, "parent": self.parent.index if self.parent else None,
                "broken": self.broken, "variant": self.variant, "lang": self.sender.lang,
                "about": self.about or (f"#{self.owner.index}" if self.owner else None),
                "attachment": self.attachment, "bytes": len(self.raw), "sha256": digest(self.raw)}

    def generated(self) -> Generated:
        """As bench/intake.py's generator describes a message (what bench/imap.py loads)."""
        return Generated(self.index, self.raw, self.message_id or "", self.sender.email, SUPPORT,
                         self.parent.index if self.parent else None, False, self.attachment)

    def label(self) -> str:
        extra = f", {self.broken}" if self.broken else ""
        return f"#{self.index} {self.kind}{extra} (thread {self.thread}, from {self.sender.email})"


def digest(raw: bytes) -> str:
    """SHA-256 of the message as IMAP serves it (CRLF line ends), as maild's store computes it."""
    return hashlib.sha256(crlf(raw)).hexdigest()


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _message_id(rng: random.Random, person: Person, date: datetime) -> str:
    domain = person.domain
    if domain == "gmail.com":
        return f"<CA{rng.getrandbits(200):050x}@mail.gmail.com>"
    if domain in ("outlook.com", "hotmail.com"):
        box = f"AM{rng.randint(0, 9)}PR{rng.randint(10, 99)}MB{rng.randint(1000, 9999)}"
        return f"<{box}{rng.getrandbits(64):016X}@{box}.eurprd0{rng.randint(1, 9)}.prod.outlook.com>"
    return f"<{date:%Y%m%d%H%M%S}.{rng.getrandbits(48):012x}@{domain}>"


def _letter(rng: random.Random, person: Person, paragraphs: int) -> str:
    if person.lang == "en":
        body = [" ".join(bench_intake._sentence(rng) for _ in range(rng.randint(2, 4))) for _ in range(paragraphs)]
        greeting, closing = rng.choice(bench_intake.GREETINGS), rng.choice(bench_intake.CLOSINGS)
    else:
        words = FOREIGN[person.lang]
        body = [" ".join(rng.sample(words["sentences"], 2)) for _ in range(paragraphs)]
        greeting, closing = words["greeting"], words["closing"]
    signature = f"{closing}\n{person.name}" + (f"\n{person.company}" if person.company else "")
    return "\n\n".join([greeting, *body, signature]) + "\n"


def _quoting(rng: random.Random, person: Person, parent: Mail) -> str:
    quoted = "\n".join(f"> {line}" if line else ">" for line in parent.text.splitlines())
    return (_letter(rng, person, rng.randint(1, 2))
            + f"\nOn {format_datetime(parent.date)}, {parent.sender.name} <{parent.sender.email}> wrote:\n{quoted}\n")


def _topic(rng: random.Random, person: Person) -> str:
    product, num = rng.choice(bench_intake.PRODUCTS), rng.randint(10000, 99999)
    if person.lang != "en":
        return str(rng.choice(FOREIGN[person.lang]["subjects"]).format(product=product, num=num))
    pattern = rng.choice(bench_intake.SUPPORT_SUBJECTS + bench_intake.BILLING_SUBJECTS)
    return pattern.format(product=product, num=num)


def _re(person: Person, subject: str) -> str:
    prefix = FOREIGN[person.lang]["re"] if person.lang != "en" else "Re: "
    return subject if subject.lower().startswith(prefix.lower().strip()) else prefix + subject


def _later(rng: random.Random, date: datetime, mean_minutes: float) -> datetime:
    return date + timedelta(minutes=2 + rng.expovariate(1 / mean_minutes))


class _Threads:
    """Builds the mailbox's threads, one after the other, with their dates spread over a span."""

    def __init__(self, rng: random.Random, world: World, span: timedelta, start: datetime) -> None:
        self.rng, self.world, self.span, self.start = rng, world, span, start
        self.count = 0

    def thread(self, budget: int) -> list[Mail]:
        rng = self.rng
        self.count += 1
        name = f"T{self.count:05d}"
        company_domain = rng.choice(list(self.world.companies)) if rng.random() < 0.6 else None
        staff = self.world.companies[company_domain] if company_domain else []
        customer = rng.choice(staff) if staff else rng.choice(self.world.public)
        others = [p for p in staff if p != customer]
        cc = rng.sample(others, 1) if others and rng.random() < 0.35 else []
        date = self.start + self.span * rng.random()
        first = Mail(name, FIRST, customer, [SUPPORT], [p.address() for p in cc], _topic(rng, customer),
                     _letter(rng, customer, rng.randint(2, 4)), date, _message_id(rng, customer, date),
                     attachment=rng.random() < 0.10)
        mails = [first]
        followups = min(budget - 1, rng.choices(range(7), weights=[34, 24, 16, 11, 7, 5, 3])[0])
        outsiders = [p for p in others if p not in cc]
        for _ in range(followups):
            mails.append(self._followup(name, mails, customer, cc, outsiders))
        return mails

    def _followup(self, name: str, mails: list[Mail], customer: Person, cc: list[Person],
                  outsiders: list[Person]) -> Mail:
        rng = self.rng
        colleague_mails = [m for m in mails if m.kind == COLLEAGUE_REPLY]
        choices = [REPLY] * 5 + [CC_REPLY] * (2 if cc else 0) + [COLLEAGUE_REPLY] * (2 if outsiders else 0) \
            + [REPLY_TO_COLLEAGUE] * (3 if colleague_mails else 0)
        kind = rng.choice(choices)
        date = _later(rng, mails[-1].date, 180)
        ccs = [p.address() for p in cc]
        if kind == REPLY:
            sender, parent, to = customer, mails[-1], [SUPPORT]
        elif kind == CC_REPLY:  # reply-all to the latest message the colleague got
            sender, parent, to = rng.choice(cc), mails[-1], [SUPPORT]
            ccs = [customer.address()] + [p.address() for p in cc if p is not sender]
        elif kind == COLLEAGUE_REPLY:  # the customer forwarded the thread internally; a colleague writes in
            sender = rng.choice(outsiders)
            parent = rng.choice([m for m in mails if m.sender == customer])
            to, ccs = [SUPPORT], [customer.address()] if rng.random() < 0.5 else []
        else:  # the customer answers the colleague's message
            parent = rng.choice(colleague_mails)
            sender, to, ccs = customer, [SUPPORT], [parent.sender.address()]
        return Mail(name, kind, sender, to, ccs, _re(sender, parent.subject), _quoting(rng, sender, parent), date,
                    _message_id(rng, sender, date), (*parent.references, _require_id(parent)), parent,
                    attachment=rng.random() < 0.03)


def _require_id(mail: Mail) -> str:
    assert mail.message_id is not None, "a message without Message-ID was chosen as a parent"
    return mail.message_id


def _away(rng: random.Random, person: Person, date: datetime, colleague: Person | None) -> str:
    until = (date + timedelta(days=rng.randint(2, 14))).strftime("%d.%m.%Y")
    if person.lang != "en":
        text = FOREIGN[person.lang]["away"].format(until=until)
    else:
        text = AWAY_EN.format(until=until, colleague=colleague.name if colleague else "the front desk")
    return f"{text}\n\n{person.name}\n"


def _auto_reply(rng: random.Random, thread: str, kind: str, sender: Person, to: list[str], cc: list[str],
                parent: Mail | None, date: datetime, colleague: Person | None) -> Mail:
    variant = rng.choices(list(AUTO_VARIANTS), weights=[30, 20, 20, 15, 15])[0]
    extra = [(name, value.format(sender=sender.email)) for name, value in AUTO_VARIANTS[variant]]
    prefix = FOREIGN[sender.lang]["auto"] if sender.lang != "en" else rng.choice(AUTO_SUBJECTS)
    if parent is not None:
        subject, references = prefix + parent.subject, (*parent.references, _require_id(parent))
    else:
        subject = rng.choice(STANDALONE_SUBJECTS)
        # Half answer mail maild never saw (a newsletter, an agent's mail from another system).
        references = (f"<news.{rng.getrandbits(40):010x}@mailer.example-news.test>",) if rng.random() < 0.5 else ()
    return Mail(thread, kind, sender, to, cc, subject, _away(rng, sender, date, colleague), date,
                _message_id(rng, sender, date), references, parent, variant=variant, extra=extra)


def generate(n: int, seed: int) -> tuple[list[Mail], set[str]]:
    """The mailbox's N messages in delivery order (each after what it answers), and the
    threads whose acknowledgement will bounce in phase 2."""
    rng = random.Random(seed)
    world = make_world(rng, n)
    start = datetime(2026, 11, 2, 7, 0, tzinfo=UTC)
    threads = _Threads(rng, world, timedelta(seconds=40 * n), start)
    autos, collisions = round(n * AUTO_SHARE), round(n * COLLISION_SHARE)
    mails: list[Mail] = []
    while len(mails) < n - autos - collisions:
        mails += threads.thread(n - autos - collisions - len(mails))
    mails += _auto_replies(rng, world, mails, autos, threads)
    mails.sort(key=lambda m: m.date)
    mails += _collisions(rng, world, mails, collisions, threads)
    mails.sort(key=lambda m: m.date)
    _break_headers(rng, mails)
    for i, mail in enumerate(mails):
        mail.index = i
        mail.raw = serialise(mail, rng)
    firsts = sorted({m.thread for m in mails if m.kind == FIRST and m.message_id})
    bouncing = set(rng.sample(firsts, min(len(firsts), max(1, round(n * DSN_SHARE)))))
    return mails, bouncing


def _auto_replies(rng: random.Random, world: World, mails: list[Mail], count: int, threads: _Threads) -> list[Mail]:
    out = []
    # Answering a customer's message: a colleague on it (or to whom it was forwarded) is away,
    # and their auto-responder answers everyone, the support address included.
    answerable = [m for m in mails if m.sender.company and m.kind in (FIRST, REPLY)]
    for _ in range(count // 2 if answerable else 0):
        parent = rng.choice(answerable)
        staff = [p for p in world.companies[parent.sender.domain] if p != parent.sender]
        sender = rng.choice(staff)
        out.append(_auto_reply(rng, parent.thread, AUTO_REPLY, sender, [parent.sender.address()], [SUPPORT], parent,
                               _later(rng, parent.date, 1), parent.sender))
    for k in range(count - len(out)):
        sender = rng.choice(rng.choice(list(world.companies.values())) if rng.random() < 0.5 else world.public)
        date = threads.start + threads.span * rng.random()
        out.append(_auto_reply(rng, f"S{k + 1:05d}", AUTO_STANDALONE, sender, [SUPPORT], [], None, date, None))
    return out


def _collisions(rng: random.Random, world: World, mails: list[Mail], count: int, threads: _Threads) -> list[Mail]:
    """New messages from other senders whose (sloppy) software reused a Message-ID already seen."""
    out = []
    owners = [m for m in mails if m.message_id and m.kind not in AUTOMATIC]
    for k in range(count if owners else 0):
        owner = rng.choice(owners)
        sender = rng.choice([p for p in world.public if p.email != owner.sender.email])
        date = _later(rng, owner.date, 240)
        out.append(Mail(f"C{k + 1:05d}", COLLISION, sender, [SUPPORT], [], _topic(rng, sender),
                        _letter(rng, sender, rng.randint(1, 3)), date, owner.message_id, owner=owner))
    return out


def _break_headers(rng: random.Random, mails: list[Mail]) -> None:
    """About 1% each: no Message-ID (only on mail nothing answers or copies), no Date, a bad charset."""
    count = max(1, round(len(mails) * BROKEN_SHARE))
    referenced = {m.parent.message_id for m in mails if m.parent} | {m.message_id for m in mails if m.kind == COLLISION}
    humans = [m for m in mails if m.kind in (FIRST, *HUMAN_REPLIES)]
    leaves = [m for m in humans if m.message_id not in referenced]
    for mail in rng.sample(leaves, min(count, len(leaves))):
        mail.broken, mail.message_id = NO_MESSAGE_ID, None
    for flaw in (NO_DATE, BAD_CHARSET):
        whole = [m for m in humans if m.broken is None]
        for mail in rng.sample(whole, min(count, len(whole))):
            mail.broken = flaw
            if flaw == BAD_CHARSET:
                mail.variant, mail.attachment = rng.choice(list(BAD_CHARSETS)), False


def serialise(mail: Mail, rng: random.Random) -> bytes:
    """bench/intake.py's serialiser (text, ~45% with an HTML alternative, attachments, trace
    headers), then this mailbox's own headers: Cc, auto-reply markers, the broken ones."""
    customer = bench_intake.Customer(mail.sender.name, mail.sender.email, mail.sender.company or "")
    draft = bench_intake._Draft(customer, ", ".join(mail.to), mail.subject, mail.text,
                                mail.message_id or "<dropped@invalid>", mail.references, mail.date)  # see drop
    raw = bench_intake._serialise(draft, rng, False, mail.attachment, SHAPE)
    add = ([("Cc", ", ".join(mail.cc))] if mail.cc else []) + mail.extra
    drop = {"message-id"} if mail.broken == NO_MESSAGE_ID else {"date"} if mail.broken == NO_DATE else set()
    body = None
    if mail.broken == BAD_CHARSET:
        # Latin-1 bytes under a label that does not say so (or says nothing, or names no charset).
        drop |= {"mime-version", "content-type", "content-transfer-encoding"}
        add += [("MIME-Version", "1.0"), ("Content-Type", BAD_CHARSETS[mail.variant or ""]),
                ("Content-Transfer-Encoding", "8bit")]
        body = (mail.text.replace("\n\n", "\n\nGrüße aus Köln, à bientôt, señor.\n\n", 1)
                .encode("latin-1", "replace"))
    return edit_headers(raw, add, drop, body)


def edit_headers(raw: bytes, add: Iterable[tuple[str, str]] = (), drop: Iterable[str] = (),
                 body: bytes | None = None) -> bytes:
    """``raw`` with the fields named in ``drop`` (lower case) removed, folded lines and all,
    ``add`` appended to the header block, and the body replaced if ``body`` is given."""
    head, _, rest = raw.partition(b"\n\n")
    gone, kept, skipping = set(drop), [], False
    for line in head.split(b"\n"):
        if line[:1] not in (b" ", b"\t"):
            skipping = line.partition(b":")[0].strip().lower().decode("ascii", "replace") in gone
        if not skipping:
            kept.append(line + b"\n")
    added = [f"{name}: {value}\n".encode("ascii") for name, value in add]
    return b"".join(kept + added) + b"\n" + (rest if body is None else body)


# Phase 2: DSNs for some acknowledgements ------------------------------------------------------


def outgoing(install: Install) -> list[tuple[str, bytes]]:
    """What maild's Maildir transport wrote, each file one sent message: (Message-ID, bytes)."""
    files = []
    for sub in ("new", "cur"):
        folder = install.path / "outgoing" / sub
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            raw = path.read_bytes()
            msgid = BytesHeaderParser(policy=compat32).parsebytes(raw).get("Message-ID")
            files.append((str(msgid).strip() if msgid else "", raw))
    return files


def make_dsns(engine: sa.Engine, install: Install, mails: list[Mail], bouncing: set[str],
              rng: random.Random) -> tuple[list[Mail], list[str]]:
    """A DSN for the acknowledgement of each bouncing thread's case, as sent; and why some
    planned ones could not be made (the thread got no case, or no acknowledgement left)."""
    from maild.models import OutboundMessage

    cases = message_cases(engine)
    sent: dict[str, bytes] = {}
    for msgid, raw in outgoing(install):
        sent.setdefault(msgid, raw)
    with engine.connect() as conn:
        acks = conn.execute(sa.select(OutboundMessage.case_id, OutboundMessage.message_id,
                                      OutboundMessage.mail_from, OutboundMessage.recipient)
                            .where(OutboundMessage.kind == "acknowledgement")
                            .order_by(OutboundMessage.id)).all()
    by_case = {case_id: (msgid, mail_from, rcpt) for case_id, msgid, mail_from, rcpt in acks}
    dsns: list[Mail] = []
    missing: list[str] = []
    for first in (m for m in mails if m.kind == FIRST and m.thread in bouncing):
        case_id = cases.get(digest(first.raw))
        ack = by_case.get(case_id) if case_id is not None else None
        if ack is None or ack[0] not in sent:
            missing.append(f"{first.label()}: " + ("no case" if case_id is None else "no acknowledgement sent"))
            continue
        msgid, mail_from, rcpt = ack
        date = datetime.now(UTC).replace(microsecond=0)
        dsn = Mail(first.thread, DSN, Person("Mail Delivery System", "MAILER-DAEMON@mx.example.test", None, "en"),
                   [mail_from], [], "Undelivered Mail Returned to Sender", "", date,
                   f"<{date:%Y%m%d%H%M%S}.{rng.getrandbits(40):010X}@mx.example.test>", about=msgid,
                   index=len(mails) + len(dsns))
        dsn.raw = dsn_bytes(dsn, rcpt, sent[msgid], rng)
        dsns.append(dsn)
    return dsns, missing


def dsn_bytes(dsn: Mail, recipient: str, original: bytes, rng: random.Random) -> bytes:
    """An RFC 3464 report as Postfix writes it: the acknowledgement's headers in text/rfc822-headers."""
    boundary = f"{rng.getrandbits(40):010X}.{int(dsn.date.timestamp())}/mx.example.test"
    headers = crlf(original).partition(b"\r\n\r\n")[0].replace(b"\r\n", b"\n").decode("ascii", "replace")
    domain = recipient.rpartition("@")[2]
    queue_id = f"{rng.getrandbits(40):010X}"
    diagnostic = (f"smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown in virtual "
                  "mailbox table")
    when = format_datetime(dsn.date)
    return f"""Return-Path: <>
Received: by mx.example.test (Postfix)
\tid {queue_id}; {when}
Date: {when}
From: MAILER-DAEMON@mx.example.test (Mail Delivery System)
Subject: {dsn.subject}
To: {dsn.to[0]}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit
Message-Id: {dsn.message_id}

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

                   The mail system

<{recipient}>: host mx.{domain}[192.0.2.{rng.randint(1, 254)}] said: 550 5.1.1
    <{recipient}>: Recipient address rejected: User unknown in virtual mailbox
    table (in reply to RCPT TO command)

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.test
X-Postfix-Queue-ID: {queue_id}
X-Postfix-Sender: rfc822; {dsn.to[0]}
Arrival-Date: {when}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.{domain}
Diagnostic-Code: {diagnostic}

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{headers}
--{boundary}--
""".encode()


def append(account: bench_imap.Account, mails: list[Mail]) -> None:
    client = account.login()
    try:
        for mail in mails:
            client.append("INBOX", crlf(mail.raw), msg_time=mail.date)
    finally:
        client.logout()


# Draining ------------------------------------------------------------------------------------


@dataclass
class Drain:
    what: str
    seconds: float
    kills: list[dict[str, float]] = field(default_factory=list)  # kill mode: progress when each SIGKILL hit


PROGRESS = sa.text("""
SELECT (SELECT count(*) FROM inbound_message),
       (SELECT count(*) FROM inbound_message WHERE state <> 'received'),
       (SELECT count(*) FROM outbound_message WHERE state IN ('pending', 'sending'))
""")


def progress(engine: sa.Engine) -> tuple[int, int, int]:
    """(stored, processed, outbound still to send), or the last figures' stand-in on a busy SQLite."""
    for _ in range(20):
        try:
            with engine.connect() as conn:
                stored, processed, open_ = conn.execute(PROGRESS).one()
            return int(stored), int(processed), int(open_)
        except sa.exc.OperationalError:
            time.sleep(0.05)
    raise BenchError("cannot read maild's progress from the database")


def wait_drained(engine: sa.Engine, account: bench_imap.Account, procs: dict[Path, subprocess.Popen[bytes]],
                 deadline: Deadline) -> None:
    """Until INBOX is empty, every stored message processed and nothing left to send, three
    polls in a row; ``procs``, the daemons by log file, must keep running meanwhile."""
    calm = 0
    while calm < 3:
        for log, proc in procs.items():
            if proc.poll() is not None:
                raise BenchError(f"maild run exited {proc.returncode} while draining:\n{bench_intake.tail(log)}")
        stored, processed, open_ = progress(engine)
        done = processed == stored and open_ == 0 and account.counts()["INBOX"] == 0
        calm = calm + 1 if done else 0
        deadline.check(f"waiting for the drain ({processed}/{stored} processed, {open_} to send)")
        time.sleep(0.3)


def drain_daemons(install: Install, engine: sa.Engine, account: bench_imap.Account, workers: int, first_log: int,
                  stack: ExitStack, deadline: Deadline) -> Drain:
    """``workers`` ``maild run`` daemons until the mailbox is drained, then SIGTERM (each must exit 0)."""
    bench_imap.sync_registry(install)
    started = time.monotonic()
    procs = {install.path / f"maild-{first_log + k}.log": bench_imap.spawn_daemon(install, first_log + k, stack)
             for k in range(workers)}
    wait_drained(engine, account, procs, deadline)
    seconds = time.monotonic() - started
    for log, proc in procs.items():
        code, _ = bench_intake.stop_daemon(proc, deadline)
        if code != 0:
            raise BenchError(f"maild run ({log.name}) exited {code} after SIGTERM:\n{bench_intake.tail(log)}")
    return Drain(f"{workers} maild run daemon(s)", seconds)


def drain_with_kills(install: Install, engine: sa.Engine, account: bench_imap.Account, kills: int, expected: int,
                     rng: random.Random, stack: ExitStack, deadline: Deadline) -> Drain:
    """A ``maild run`` daemon killed with SIGKILL ``kills`` times, each at a random point of the
    drain (measured as rows stored + rows processed, out of 2N), restarted at once; then one
    left to finish. A point the restarted daemon starts beyond moves to its first step of
    progress; one the drain never reaches (it finished first) ends the killing."""
    bench_imap.sync_registry(install)
    targets = sorted(rng.uniform(0.02, 0.98) * 2 * expected for _ in range(kills))
    started = time.monotonic()
    records: list[dict[str, float]] = []
    for k, planned in enumerate(targets):
        stored, processed, _ = progress(engine)
        target = max(planned, stored + processed + 1)
        proc = bench_imap.spawn_daemon(install, k, stack)
        checked = time.monotonic()
        while True:
            stored, processed, open_ = progress(engine)
            if stored + processed >= target:
                break
            if proc.poll() is not None:
                raise BenchError(f"maild run exited {proc.returncode} before kill {k + 1}:\n"
                                 f"{bench_intake.tail(install.path / f'maild-{k}.log')}")
            if time.monotonic() - checked > 2:  # finished before the target: nothing left to interrupt
                checked = time.monotonic()
                if processed == stored and open_ == 0 and account.counts()["INBOX"] == 0:
                    break
            deadline.check(f"waiting for kill point {k + 1} ({stored} stored, {processed} processed)")
            time.sleep(0.01)
        bench_imap.kill(proc)  # SIGKILL
        records.append({"at_seconds": round(time.monotonic() - started, 2), "stored": stored,
                        "processed": processed, "to_send": open_})
    drain_daemons(install, engine, account, 1, kills, stack, deadline)
    return Drain(f"maild run killed {len(records)} times, then left to finish", time.monotonic() - started, records)


def drain_once(install: Install, engine: sa.Engine, expected: int, stack: ExitStack, deadline: Deadline) -> Drain:
    run = bench_imap.run_once(install, engine, expected, stack, deadline)
    return Drain("maild run --once", run.seconds)


# Judging ------------------------------------------------------------------------------------


def message_cases(engine: sa.Engine) -> dict[str, int]:
    """The case of each stored message, by its SHA-256 (for phase 2, before judging)."""
    from maild.models import Activity, InboundMessage

    with engine.connect() as conn:
        rows = conn.execute(sa.select(InboundMessage.sha256, sa.func.coalesce(Activity.case_id, InboundMessage.case_id))
                            .outerjoin(Activity, Activity.inbound_id == InboundMessage.id)).all()
    return {sha: case for sha, case in rows if case is not None}


@dataclass
class Stored:
    """What the database holds about one generated message."""

    rows: list[int] = field(default_factory=list)  # inbound_message ids
    cases: list[int] = field(default_factory=list)  # its activities' cases (or the row's case)
    states: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    """The judgement of one run: counts, each failure named, and the criteria."""

    database: str
    messages: int  # N, plus phase 2's DSNs
    kinds: dict[str, dict[str, int]]  # kind -> what happened to its messages
    cases: int
    lost: list[str]
    duplicated: list[str]
    replies: int
    replies_on_right_case: int
    misthreaded: list[str]  # replies not on their thread's case, with where they went
    mixed_cases: list[str]
    automatic_cases: list[str]  # cases opened by auto-replies or DSNs
    quarantined: list[str]
    wrongly_quarantined: int  # quarantined people's mail (not auto-replies or DSNs)
    acks_not_sent: list[str]
    acks_sent_twice: list[str]
    openers_without_case: list[str]
    unprocessed: list[str]
    unmatched_rows: list[str]  # stored rows that are none of the generated messages
    bounces_recorded: int
    dsn_missing: list[str] = field(default_factory=list)  # planned DSNs that could not be made
    partition_differences: list[str] | None = None  # --workers: against one worker
    criteria: dict[str, bool] = field(default_factory=dict)

    def failures(self) -> dict[str, list[str]]:
        """Each failed criterion with the messages or cases that make it fail."""
        details = {"lost": self.lost, "duplicated": self.duplicated, "replies_on_right_case": self.misthreaded,
                   "mixed_cases": self.mixed_cases, "automatic_cases": self.automatic_cases,
                   "same_cases_as_one_worker": self.partition_differences or []}
        return {name: details[name] for name, met in self.criteria.items() if not met}

    def explain(self, limit: int = 25) -> str:
        """The failures in words: what failed, and which messages and cases."""
        lines = []
        for name, items in self.failures().items():
            lines.append(f"{CRITERIA[name]}: {len(items)} failing")
            lines += [f"  {item}" for item in items[:limit]]
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")
        return "\n".join(lines)


CRITERIA = {
    "lost": "messages lost (never stored)",
    "duplicated": "messages stored or filed more than once",
    "replies_on_right_case": "replies not on their thread's case",
    "mixed_cases": "cases mixing two threads",
    "automatic_cases": "cases opened by auto-replies or DSNs",
    "same_cases_as_one_worker": "messages grouped into cases differently than by one worker",
}


def judge(engine: sa.Engine, mails: list[Mail], install: Install, database: str) -> Verdict:
    from maild.models import Activity, Bounce, Case, InboundMessage, OutboundMessage

    index = {digest(m.raw): m for m in mails}
    with engine.connect() as conn:
        inbound = conn.execute(sa.select(InboundMessage.id, InboundMessage.sha256, InboundMessage.state,
                                         InboundMessage.outcome, InboundMessage.case_id, InboundMessage.error,
                                         InboundMessage.message_id).order_by(InboundMessage.id)).all()
        activities = conn.execute(sa.select(Activity.id, Activity.case_id, Activity.inbound_id)
                                  .where(Activity.inbound_id.is_not(None)).order_by(Activity.id)).all()
        cases = {r.id: r for r in conn.execute(sa.select(Case.id, Case.reference, Case.previous_case_id))}
        acks = conn.execute(sa.select(OutboundMessage.case_id, OutboundMessage.message_id, OutboundMessage.state)
                            .where(OutboundMessage.kind == "acknowledgement")).all()
        bounces = conn.scalar(sa.select(sa.func.count()).select_from(Bounce))
    stored: dict[int, Stored] = defaultdict(Stored)
    owner: dict[int, Mail] = {}  # inbound id -> generated message
    unmatched = []
    for row in inbound:
        mail = index.get(row.sha256)
        if mail is None:
            unmatched.append(f"inbound {row.id} (Message-ID {row.message_id}, {row.state}, {row.outcome})")
            continue
        owner[row.id] = mail
        s = stored[mail.index]
        s.rows.append(row.id)
        s.states.append(row.state)
        s.outcomes.append(row.outcome or "")
        if row.error:
            s.errors.append(row.error)
    on_case: dict[int, list[int]] = defaultdict(list)  # inbound id -> its activities' cases
    creator: dict[int, Mail] = {}  # case -> the message whose activity is its first
    for act in activities:
        on_case[act.inbound_id].append(act.case_id)
        if act.case_id not in creator and act.inbound_id in owner:
            creator[act.case_id] = owner[act.inbound_id]
    for row in inbound:
        if row.id in owner:
            stored[owner[row.id].index].cases += on_case.get(row.id) or ([row.case_id] if row.case_id else [])

    def case_of(mail: Mail) -> int | None:
        found = stored[mail.index].cases
        return found[0] if found else None

    def ref(case_id: int | None, opener: bool = True) -> str:
        if case_id is None:
            return "no case"
        case = cases[case_id]
        follow = f" (a follow-up of {cases[case.previous_case_id].reference})" if case.previous_case_id else ""
        made = creator.get(case_id) if opener else None
        return f"{case.reference}{follow}" + (f", opened by #{made.index} {made.kind}" if made else "")

    thread_case = {m.thread: case_of(m) for m in mails if m.kind in OPENERS}
    kinds: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    lost, duplicated, misthreaded, quarantined, unprocessed, without_case = [], [], [], [], [], []
    wrongly_quarantined = 0
    for mail in mails:
        s, tally = stored[mail.index], kinds[mail.kind]
        tally["messages"] += 1
        tally["stored"] += bool(s.rows)
        if not s.rows:
            lost.append(f"{mail.label()} Message-ID {mail.message_id}: not stored")
        if len(s.rows) > 1 or len(s.cases) > 1:
            tally["duplicated"] += 1
            duplicated.append(f"{mail.label()}: {len(s.rows)} inbound rows {s.rows}, on "
                              + ", ".join(ref(c) for c in s.cases))
        if "quarantined" in s.states:
            tally["quarantined"] += 1
            wrongly_quarantined += mail.kind not in AUTOMATIC
            quarantined.append(f"{mail.label()}: {'; '.join(s.errors) or 'no reason recorded'}")
        if "received" in s.states:
            unprocessed.append(f"{mail.label()}: still 'received' after the drains")
        case = case_of(mail)
        opened = case is not None and creator.get(case) is mail
        tally["opened a case"] += opened
        tally["on a case"] += case is not None
        if mail.kind in OPENERS and not opened:
            without_case.append(f"{mail.label()}: {ref(case)}; outcome {', '.join(s.outcomes) or '-'}")
        if mail.kind in HUMAN_REPLIES or mail.kind in (AUTO_REPLY, DSN):
            expected = thread_case.get(mail.thread)
            right = case is not None and case == expected
            tally["on its thread's case"] += right
            if mail.kind in HUMAN_REPLIES and not right:
                where = ref(case) if s.rows else "not stored"
                misthreaded.append(f"{mail.label()} In-Reply-To #{mail.parent.index if mail.parent else '-'}: "
                                   f"on {where}; expected {ref(expected)}")
    mixed, automatic = [], []
    members: dict[int, list[Mail]] = defaultdict(list)
    for mail in mails:
        for case in set(stored[mail.index].cases):
            members[case].append(mail)
    for case, on in sorted(members.items()):
        threads = sorted({m.thread for m in on})
        if len(threads) > 1:
            mixed.append(f"{cases[case].reference}: threads {', '.join(threads)}: "
                         + ", ".join(f"#{m.index} {m.kind} {m.thread}" for m in on))
        made = creator.get(case)
        if made is not None and made.kind in AUTOMATIC:
            automatic.append(f"{ref(case, opener=False)} opened by {made.label()}"
                             + (f" [{made.variant}]" if made.variant else ""))
    acks_by_case = defaultdict(list)
    for case_id, msgid, state in acks:
        acks_by_case[case_id].append((msgid, state))
    files = Counter(msgid for msgid, _ in outgoing(install))  # a Message-ID twice: sent twice
    not_sent, twice = [], []
    for mail in mails:
        case = case_of(mail)
        if mail.kind not in OPENERS or case is None or creator.get(case) is not mail:
            continue
        written = [msgid for msgid, _ in acks_by_case.get(case, []) if files[msgid]]
        if not written:
            states = ", ".join(state for _, state in acks_by_case.get(case, [])) or "none queued"
            not_sent.append(f"{mail.label()} on {cases[case].reference}: acknowledgement {states}, none in the Maildir")
        if len(written) > 1 or any(files[msgid] > 1 for msgid in written):
            rows = "; ".join(f"{msgid} ({state}) in {files[msgid]} file(s)" for msgid, state in acks_by_case[case])
            twice.append(f"{mail.label()} on {cases[case].reference}: {len(acks_by_case[case])} acknowledgement "
                         f"row(s): {rows}")
    replies = sum(kinds[k]["messages"] for k in HUMAN_REPLIES)
    on_right = sum(kinds[k]["on its thread's case"] for k in HUMAN_REPLIES)
    verdict = Verdict(
        database=database, messages=len(mails), kinds={k: dict(v) for k, v in kinds.items() if v},
        cases=len(cases), lost=lost, duplicated=duplicated, replies=replies, replies_on_right_case=on_right,
        misthreaded=misthreaded, mixed_cases=mixed, automatic_cases=automatic, quarantined=quarantined,
        wrongly_quarantined=wrongly_quarantined, acks_not_sent=not_sent, acks_sent_twice=twice,
        openers_without_case=without_case, unprocessed=unprocessed, unmatched_rows=unmatched,
        bounces_recorded=int(bounces or 0))
    verdict.criteria = {"lost": not lost, "duplicated": not duplicated, "replies_on_right_case": on_right == replies,
                        "mixed_cases": not mixed, "automatic_cases": not automatic}
    return verdict


def partition(engine: sa.Engine, mails: list[Mail]) -> dict[frozenset[int], str]:
    """The messages grouped by case (as generated indexes), each group with its case's reference."""
    from maild.models import Case

    where = message_cases(engine)
    with engine.connect() as conn:
        refs = dict(conn.execute(sa.select(Case.id, Case.reference)).all())
    groups: dict[int, set[int]] = defaultdict(set)
    for mail in mails:
        case = where.get(digest(mail.raw))
        if case is not None:
            groups[case].add(mail.index)
    return {frozenset(members): refs[case] for case, members in groups.items()}


def compare_partitions(many: dict[frozenset[int], str], one: dict[frozenset[int], str]) -> list[str]:
    out = [f"workers' {ref} holds #{sorted(group)}, which one worker did not group so" for group, ref in many.items()
           if group not in one]
    out += [f"one worker's {ref} holds #{sorted(group)}, which the workers did not group so"
            for group, ref in one.items() if group not in many]
    return out


# A whole run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    messages: int = 2000
    seed: int = 1
    db: str = "sqlite"
    database_url: str = DEFAULT_PG
    workers: int = 0
    kill: int = 0
    batch: int = 100
    timeout: float = 1500.0
    output: Path | None = None
    truth: Path | None = None
    maild: Path = Path(sys.executable).with_name("maild")
    keep: bool = False
    show: int = 10


def imap_options(opts: Options, messages: int) -> bench_imap.Options:
    """bench/imap.py's options for its installation: the acknowledgement limit above the message count."""
    return bench_imap.Options(messages=messages, small=0, customers=1, database_url=opts.database_url
                              if opts.db == "postgresql" else None, workers=opts.workers, batch=opts.batch,
                              seed=opts.seed, timeout=opts.timeout, output=None, maild=opts.maild, keep=opts.keep)


@dataclass
class Run:
    """One mailbox drained on one installation, and its verdict."""

    drains: list[Drain]
    verdict: Verdict
    mails: list[Mail]
    partition: dict[frozenset[int], str]


def run_mailbox(opts: Options, account: bench_imap.Account, mails: list[Mail], bouncing: set[str], mode: str,
                deadline: Deadline, db_url: str | None = None) -> Run:
    """Load, drain (``mode``: once, workers, single or kill), add the DSNs, drain again, judge."""
    n = len(mails)
    rng = random.Random(opts.seed * 7919 + 1)
    with ExitStack() as stack:
        install, engine = bench_imap.make_install(imap_options(opts, n + n // 20 + 10), account, n, stack, deadline,
                                                  db_url=db_url)
        print(f"[{mode}] loading {n} messages into the mailbox, then draining it", flush=True)
        bench_imap.load_mailbox(account, [m.generated() for m in mails])
        drains = [_drain(mode, opts, install, engine, account, n, rng, stack, deadline, phase=0)]
        dsns, missing = make_dsns(engine, install, mails, bouncing, rng)
        print(f"[{mode}] phase 2: {len(dsns)} DSNs on acknowledgements appended, draining again", flush=True)
        append(account, dsns)
        everything = mails + dsns
        drains.append(_drain(mode, opts, install, engine, account, len(everything), rng, stack, deadline, phase=1))
        verdict = judge(engine, everything, install, install.database)
        verdict.dsn_missing = missing
        return Run(drains, verdict, everything, partition(engine, everything))


def _drain(mode: str, opts: Options, install: Install, engine: sa.Engine, account: bench_imap.Account,
           expected: int, rng: random.Random, stack: ExitStack, deadline: Deadline, phase: int) -> Drain:
    if mode == "kill" and phase == 0:
        return drain_with_kills(install, engine, account, opts.kill, expected, rng, stack, deadline)
    if mode in ("kill", "workers", "single"):
        workers = opts.workers if mode == "workers" else 1
        return drain_daemons(install, engine, account, workers, 100 * (phase + 1), stack, deadline)
    return drain_once(install, engine, expected, stack, deadline)


@dataclass
class Report:
    mode: str
    database: str
    maild_version: str
    seed: int
    messages: int
    date: str
    corpus: dict[str, int]
    drains: list[dict[str, Any]]
    seconds: float
    verdict: dict[str, Any]
    criteria: dict[str, bool]


def check_mailbox(opts: Options, server: Any, user: str, db_url: str | None = None) -> Verdict:
    """The default mode on an account of a running Dovecot and, if given, a ready database:
    what tests/test_realworld_mailbox.py runs."""
    deadline = Deadline(opts.timeout)
    mails, bouncing = generate(opts.messages, opts.seed)
    return run_mailbox(opts, bench_imap.Account(server, user), mails, bouncing, "once", deadline, db_url).verdict


def benchmark(opts: Options, deadline: Deadline) -> tuple[Report, Verdict, list[Mail]]:
    started = time.monotonic()
    print(f"generating {opts.messages} messages (seed {opts.seed})", flush=True)
    mails, bouncing = generate(opts.messages, opts.seed)
    mode = "kill" if opts.kill else "workers" if opts.workers >= 2 else "once"
    with ExitStack() as stack:
        accounts = bench_imap.start_dovecot(imap_options(opts, opts.messages), 2 if mode == "workers" else 1, stack)
        run = run_mailbox(opts, next(accounts), mails, bouncing, mode, deadline)
        drains = [asdict(d) for d in run.drains]
        if mode == "workers":
            single = run_mailbox(opts, next(accounts), mails, bouncing, "single", deadline)
            run.verdict.partition_differences = compare_partitions(run.partition, single.partition)
            run.verdict.criteria["same_cases_as_one_worker"] = not run.verdict.partition_differences
            drains += [{**asdict(d), "what": f"comparison: {d.what}"} for d in single.drains]
    v = run.verdict
    report = Report(
        mode=mode, database=v.database, maild_version=bench_imap.version([str(opts.maild), "--version"], deadline),
        seed=opts.seed, messages=opts.messages, date=datetime.now(UTC).isoformat(timespec="seconds"),
        corpus=dict(Counter(m.kind for m in run.mails)) | {f"broken:{b}": c for b, c in
                                                          Counter(m.broken for m in run.mails if m.broken).items()},
        drains=drains, seconds=time.monotonic() - started, verdict=_capped(asdict(v)), criteria=v.criteria)
    return report, v, run.mails


def _capped(value: dict[str, Any], limit: int = 200) -> dict[str, Any]:
    """Detail lists cut to ``limit`` entries for the JSON (counts stay exact in the report)."""
    return {k: v[:limit] + ([f"... {len(v) - limit} more"] if len(v) > limit else []) if isinstance(v, list) else v
            for k, v in value.items()}


# Report ---------------------------------------------------------------------------------------


def print_report(r: Report, v: Verdict, show: int) -> None:
    print(f"\nmaild {r.maild_version} on a real-world support mailbox: {r.messages} messages + "
          f"{r.corpus.get(DSN, 0)} DSNs, seed {r.seed}, database={r.database}, mode={r.mode}")
    print("  corpus: " + ", ".join(f"{k} {c}" for k, c in r.corpus.items()))
    for d in r.drains:
        print(f"  drain: {d['what']}: {d['seconds']:.1f} s")
        for k, kill in enumerate(d["kills"]):
            print(f"    SIGKILL {k + 1} at {kill['at_seconds']:.1f} s: {kill['stored']} stored, "
                  f"{kill['processed']} processed, {kill['to_send']} to send")
    print(f"  total {r.seconds:.1f} s; {v.cases} cases")
    columns = ["messages", "stored", "duplicated", "opened a case", "on its thread's case", "quarantined"]
    print(f"\n  {'kind':<22}" + "".join(f"{c:>{len(c) + 2}}" for c in columns))
    for kind, tally in v.kinds.items():
        cells = [str(tally.get(c, 0)) if _applies(kind, c) else "-" for c in columns]
        print(f"  {kind:<22}" + "".join(f"{cell:>{len(c) + 2}}" for cell, c in zip(cells, columns)))
    print("\n  criterion                                                  result            target   verdict")
    pct = 100.0 * v.replies_on_right_case / v.replies if v.replies else 100.0
    rows = [("lost", f"{len(v.lost)} of {v.messages}", "0"), ("duplicated", str(len(v.duplicated)), "0"),
            ("replies_on_right_case", f"{pct:.1f}% ({v.replies_on_right_case}/{v.replies})", "100%"),
            ("mixed_cases", str(len(v.mixed_cases)), "0"), ("automatic_cases", str(len(v.automatic_cases)), "0")]
    if v.partition_differences is not None:
        rows.append(("same_cases_as_one_worker", f"{len(v.partition_differences)} groups differ", "0"))
    for name, value, target in rows:
        label = "replies on their thread's case" if name == "replies_on_right_case" else CRITERIA[name]
        print(f"  {label:<58} {value:<17} {target:<8} {'met' if v.criteria[name] else 'FAILED'}")
    reported = [("quarantined", len(v.quarantined)),
                ("of which people's mail (wrongly quarantined)", v.wrongly_quarantined),
                ("acknowledgements not sent (opening messages)", len(v.acks_not_sent)),
                ("acknowledgements sent twice", len(v.acks_sent_twice)),
                ("opening messages that opened no case", len(v.openers_without_case)),
                ("messages left unprocessed", len(v.unprocessed)),
                ("stored rows matching no message", len(v.unmatched_rows)),
                ("planned DSNs not made (no acknowledgement)", len(v.dsn_missing))]
    print("\n  also reported:")
    for what, count in reported:
        print(f"    {what:<52} {count}")
    print(f"    {'bounce rows recorded':<52} {v.bounces_recorded}")
    for name, items in [*v.failures().items(), ("quarantined", v.quarantined), ("acks_not_sent", v.acks_not_sent),
                        ("acks_sent_twice", v.acks_sent_twice), ("openers_without_case", v.openers_without_case),
                        ("unprocessed", v.unprocessed), ("unmatched_rows", v.unmatched_rows),
                        ("planned_DSNs_not_made", v.dsn_missing)]:
        if items:
            print(f"\n  {CRITERIA.get(name, name.replace('_', ' '))} ({len(items)}), first {min(show, len(items))}:")
            for item in items[:show]:
                print(f"    {item}")


def _applies(kind: str, column: str) -> bool:
    if column == "on its thread's case":
        return kind in (*HUMAN_REPLIES, AUTO_REPLY, DSN)
    return True


def write_truth(path: Path, mails: list[Mail], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(json.dumps(m.truth(), ensure_ascii=False) for m in mails)  # a message a line
    path.write_text(f'{{"seed": {seed},\n "messages": [\n{lines}\n]}}\n')
    print(f"  ground truth written to {path}")


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=2000, help="messages in the mailbox (default 2000)")
    p.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--database-url", default=DEFAULT_PG, help=f"PostgreSQL base URL (default {DEFAULT_PG}); "
                   "a fresh schema per installation, dropped afterwards")
    p.add_argument("--workers", type=int, default=0, help="PostgreSQL: this many maild run daemons side by side, "
                   "compared with one on a copy of the mailbox (default: one run --once)")
    p.add_argument("--kill", type=int, default=0, metavar="N", help="SIGKILL the maild run daemon N times at random "
                   "points of the drain, restarting it each time")
    p.add_argument("--batch", type=int, default=100, help="UIDs per FETCH (imap.batch, default 100)")
    p.add_argument("--timeout", type=float, default=1500.0, help="budget for the whole run (default 1500 s)")
    p.add_argument("--output", type=Path, help="also write the report as JSON")
    p.add_argument("--truth", type=Path, help="write the ground truth (every message's thread and kind) as JSON")
    p.add_argument("--maild", type=Path, default=Path(sys.executable).with_name("maild"))
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (Dovecot, maild's config, logs, Maildir)")
    p.add_argument("--show", type=int, default=10, help="failing messages or cases listed per criterion (default 10)")
    a = p.parse_args(argv)
    if a.messages < 20 or a.timeout <= 0 or a.kill < 0 or a.workers < 0:
        p.error("--messages must be >= 20, --timeout > 0, --kill and --workers >= 0")
    if a.workers >= 2 and a.db != "postgresql":
        p.error("--workers needs --db postgresql (SQLite takes one maild run at a time)")
    if a.workers >= 2 and a.kill:
        p.error("--workers and --kill are separate modes")
    return Options(a.messages, a.seed, a.db, a.database_url, a.workers, a.kill, a.batch, a.timeout, a.output,
                   a.truth, a.maild, a.keep, a.show)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    deadline = Deadline(opts.timeout)
    done = bench_imap.guarded(lambda: benchmark(opts, deadline))
    if done is None:
        return 1
    report, verdict, mails = done
    print_report(report, verdict, opts.show)
    if opts.output:
        bench_imap.write_json(opts.output, report)
    if opts.truth:
        write_truth(opts.truth, mails, opts.seed)
    if verdict.failures():
        print("bench: FAILED: " + ", ".join(CRITERIA[name] for name in verdict.failures()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
