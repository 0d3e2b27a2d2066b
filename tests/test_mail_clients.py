"""Replies as real mail clients write them, on SQLite and PostgreSQL.

Every reply answers the acknowledgement maild really sent (its Message-ID, its subject key,
its signed Reply-To). mutt is Debian's own binary, answering with the keys a user presses
(tests/mutt.py); Thunderbird and Outlook replies are built below in their exact shapes:
prefixes, thread headers, quote headers and HTML quoting. Each client is used by the
customer (the reply is appended, and the case view shows only the new text) and by an agent
(relayed to the customer only through the signed address); a sender who shows an agent's
address as display name is never appended.
"""

from __future__ import annotations

import base64
import copy
import html
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr, parsedate_to_datetime
from functools import partial
from typing import Any

import pytest

import mutt
from conftest import Env, mail, require

CUSTOMER = "Jane Doe <jane@customer.test>"
AGENT = "Alice Agent <alice@example.test>"
QUEUE = "support@example.test"

Client = Callable[..., bytes]  # (ack, *, sender, to, text) -> the reply's raw bytes


# What maild sent -------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """A case opened by the customer's first mail, and the acknowledgement maild sent her."""

    reference: str
    ack: EmailMessage
    agent_address: str  # the agents' signed address (on notices to agents), from `cases show`

    @property
    def signed_address(self) -> str:
        """The customer's signed address: it threads, but proves no agent."""
        return reply_to_of(self.ack)


def open_case(env: Env) -> Opened:
    env.inject(mail(message_id="<printer@customer.test>"))
    env.ok("run", "--once")
    [ack] = env.peer.wait_for(1)
    [case] = env.json("cases", "list")
    assert case["reference"] in ack.message["Subject"]
    return Opened(case["reference"], ack.message, env.json("cases", "show", case["reference"])["agent_reply_to"])


def deliver(env: Env, raw: bytes) -> dict[str, Any]:
    """Inject one message, process it, and return its inbound row."""
    env.inject(raw)
    env.ok("run", "--once")
    message_id = message_from_bytes(raw, policy=policy.default)["Message-ID"]
    [row] = [r for r in env.json("inbound", "list") if r["message_id"] == message_id]
    return row  # type: ignore[no-any-return]


def activities(env: Env, reference: str) -> list[dict[str, Any]]:
    return env.json("cases", "show", reference)["activities"]  # type: ignore[no-any-return]


def squash(text: str) -> str:
    """Text with every run of white space made one space: format=flowed and CRLF do not matter."""
    return " ".join(text.split())


def plain_body(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def html_inner(msg: EmailMessage) -> str:
    """The message's HTML as a client quotes it: what is inside <body> (maild's relayed HTML
    is a sanitised fragment, so all of it), or the plain text if there is no HTML part."""
    body = msg.get_body(("html",))
    if body is None:
        return f"<pre>{html.escape(plain_body(msg))}</pre>"
    content = str(body.get_content())
    found = re.search(r"<body[^>]*>(.*)</body>", content, re.DOTALL | re.IGNORECASE)
    return (found.group(1) if found else content).strip()


def reply_to_of(msg: EmailMessage) -> str:
    return str(msg["Reply-To"].addresses[0].addr_spec)


def sender_of(msg: EmailMessage) -> Address:
    return msg["From"].addresses[0]  # type: ignore[no-any-return]


def sent_at(msg: EmailMessage) -> datetime:
    return parsedate_to_datetime(str(msg["Date"]))


def quoted(text: str) -> str:
    """Quote each line with "> " (an empty line becomes ">"), as Thunderbird does."""
    return "\n".join(f"> {line}" if line.strip() else ">" for line in text.rstrip("\n").split("\n"))


def paragraphs_html(text: str) -> str:
    return "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>\n" for p in text.strip().split("\n\n"))


def reply_subject(msg: EmailMessage, prefix: str) -> str:
    """The client's reply prefix on the original subject; an existing Re:/RE:/AW: is not doubled."""
    return f"{prefix}: " + re.sub(r"^\s*(re|aw)\s*:\s*", "", str(msg["Subject"]), flags=re.IGNORECASE)


# mutt -------------------------------------------------------------------------------


def require_mutt() -> None:
    """Fail where the mutt tests are required (CI), skip elsewhere: as for Dovecot (conftest)."""
    require("mutt", mutt.missing_reason())


def mutt_reply(ack: EmailMessage, *, sender: str, to: str, text: str, above_quote: bool = True) -> bytes:
    """mutt's own reply (``r``): to the signed Reply-To, or to From if ``to`` is the plain address.

    An agent answers the copy maild sent agents (a notice), which carries the agents' signed
    address: given that address as ``to``, mutt answers such a copy of ``ack``.
    """
    require_mutt()
    if "+" in to and to != reply_to_of(ack):
        ack = copy.deepcopy(ack)
        ack.replace_header("Reply-To", to)
    raw = mutt.reply(ack.as_bytes(), sender=sender, text=text, to_reply_to=to == reply_to_of(ack),
                     above_quote=above_quote)
    written = message_from_bytes(raw, policy=policy.default)
    assert [a.addr_spec for a in written["To"].addresses] == [to], "mutt chose the address itself"
    return raw


# Thunderbird ------------------------------------------------------------------------


def thunderbird(ack: EmailMessage, *, sender: str, to: str, text: str, above_quote: bool = True,
                subject: str | None = None) -> bytes:
    """A recent Thunderbird's HTML reply with its generated format=flowed plain part.

    Thunderbird's default puts the reply below the quote; ``above_quote`` is the
    "start my reply above the quote" setting. ``subject``: the user retyped it.
    """
    cite = f"On {sent_at(ack):%d/%m/%Y %H:%M}, {sender_of(ack).display_name} wrote:"
    msg = EmailMessage()
    msg["Message-ID"] = f"<{uuid.uuid4()}@{parseaddr(sender)[1].rpartition('@')[2]}>"
    msg["Date"] = format_datetime(sent_at(ack) + timedelta(minutes=7))
    msg["MIME-Version"] = "1.0"
    msg["User-Agent"] = "Mozilla Thunderbird"
    msg["Subject"] = subject or reply_subject(ack, "Re")
    msg["To"] = to
    msg["References"] = " ".join([*str(ack.get("References", "")).split(), str(ack["Message-ID"])])
    msg["From"] = sender
    msg["In-Reply-To"] = str(ack["Message-ID"])
    new_plain, old_plain = _flowed(text), f"{cite}\n{quoted(plain_body(ack))}\n"
    plain = f"{new_plain}\n\n{old_plain}" if above_quote else f"{old_plain}\n{new_plain}\n"
    msg.set_content(plain, charset="utf-8", cte="8bit", params={"format": "flowed"})
    new_html = paragraphs_html(text)
    old_html = (f'<div class="moz-cite-prefix">{html.escape(cite)}<br>\n</div>\n'
                f'<blockquote type="cite" cite="mid:{str(ack["Message-ID"]).strip("<>")}">\n'
                f"{html_inner(ack)}\n</blockquote>\n")
    body = new_html + old_html if above_quote else old_html + new_html
    msg.add_alternative('<!DOCTYPE html>\n<html>\n  <head>\n    <meta http-equiv="Content-Type" '
                        f'content="text/html; charset=UTF-8">\n  </head>\n  <body>\n{body}  </body>\n</html>\n',
                        subtype="html", charset="utf-8", cte="8bit")
    msg.preamble = "This is a multi-part message in MIME format."
    return finished(msg, f"------------{secrets.token_hex(12)}", {"Content-Language": "en-GB"})


def finished(msg: EmailMessage, boundary: str, content_headers: dict[str, str]) -> bytes:
    """The client's bytes: its boundary style, and the Content-* headers that ``set_content``
    clears; the email package's extra MIME-Version in a part is no client's."""
    for name, value in content_headers.items():
        msg[name] = value
    if msg.is_multipart():
        msg.set_boundary(boundary)
        for part in msg.iter_parts():
            del part["MIME-Version"]
    return msg.as_bytes()


def _flowed(text: str, width: int = 72) -> str:
    """RFC 3676 format=flowed: long lines break after a space, which stays at the line's end."""
    out: list[str] = []
    for line in text.rstrip("\n").split("\n"):
        while len(line) > width and " " in line[:width]:
            cut = line.rindex(" ", 0, width) + 1
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return "\n".join(out)


# Outlook / Microsoft 365 ------------------------------------------------------------

# Outlook's words for the reply prefix and its quote header, by the sender's language.
_OUTLOOK = {
    "en": {"prefix": "RE", "from": "From", "sent": "Sent", "to": "To", "subject": "Subject", "lang": "en-US"},
    "de": {"prefix": "AW", "from": "Von", "sent": "Gesendet", "to": "An", "subject": "Betreff", "lang": "de-DE"},
}
_DE_DAYS = ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag")
_DE_MONTHS = ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September", "Oktober",
              "November", "Dezember")


def _outlook_date(when: datetime, lang: str) -> str:
    if lang == "de":
        return f"{_DE_DAYS[when.weekday()]}, {when.day}. {_DE_MONTHS[when.month - 1]} {when:%Y %H:%M}"
    hour = when.hour % 12 or 12
    return f"{when:%A, %B} {when.day}, {when:%Y} {hour}:{when:%M %p}"


def outlook(ack: EmailMessage, *, sender: str, to: str, text: str, lang: str = "en", html_body: bool = True,
            thread_headers: bool = True, subject: str | None = None) -> bytes:
    """Outlook for Microsoft 365 (desktop), replying above its quote header.

    ``html_body=False``: classic Outlook writing plain text ("-----Original Message-----").
    ``thread_headers=False``: In-Reply-To and References are gone, as some Outlook setups and
    Exchange relays send them; only the subject key or the signed To can thread the reply.
    """
    words = _OUTLOOK[lang]
    subject = subject or reply_subject(ack, words["prefix"])
    tenant = f"AM0PR04MB{secrets.randbelow(10_000):04d}"
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = f'"{to}" <{to}>'  # Outlook writes a bare address as its own display name
    msg["Subject"] = subject
    msg["Thread-Topic"] = re.sub(r"^(RE|AW):\s*", "", subject)
    msg["Thread-Index"] = base64.b64encode(secrets.token_bytes(22)).decode()
    msg["Date"] = format_datetime(sent_at(ack) + timedelta(minutes=12))
    msg["Message-ID"] = f"<{tenant}{secrets.token_hex(16).upper()}@{tenant}.eurprd04.prod.outlook.com>"
    if thread_headers:
        msg["References"] = str(ack["Message-ID"])
        msg["In-Reply-To"] = str(ack["Message-ID"])
    msg["Accept-Language"] = words["lang"]
    msg["X-MS-Has-Attach"] = ""
    msg["X-MS-TNEF-Correlator"] = ""
    msg["x-ms-publictraffictype"] = "Email"
    msg["x-ms-office365-filtering-correlation-id"] = str(uuid.uuid4())
    msg["x-ms-exchange-senderadcheck"] = "1"
    msg["x-ms-exchange-antispam-relay"] = "0"
    msg["X-MS-Exchange-CrossTenant-AuthAs"] = "Internal"
    msg["X-MS-Exchange-CrossTenant-AuthSource"] = f"{tenant}.eurprd04.prod.outlook.com"
    msg["X-MS-Exchange-Transport-CrossTenantHeadersStamped"] = tenant
    original = sender_of(ack)
    header = [f"{words['from']}: {original.display_name} <{original.addr_spec}>",
              f"{words['sent']}: {_outlook_date(sent_at(ack), lang)}",
              f"{words['to']}: {ack['To']}", f"{words['subject']}: {ack['Subject']}"]
    separator = "________________________________" if html_body else "-----Original Message-----"
    cte = "base64" if lang == "de" else "quoted-printable"
    msg.set_content(f"{text.rstrip()}\n\n{separator}\n" + "\n".join(header) + f"\n\n{plain_body(ack)}",
                    charset="utf-8", cte=cte)
    if html_body:
        msg.add_alternative(_outlook_html(text, header, html_inner(ack)), subtype="html", charset="utf-8", cte=cte)
    return finished(msg, f"_000_{tenant}{secrets.token_hex(8).upper()}_", {"Content-Language": words["lang"]})


def _outlook_html(text: str, header: list[str], original: str) -> str:
    labelled = "<br>\n".join(f"<b>{html.escape(label)}:</b> {html.escape(value)}"
                             for label, _, value in (line.partition(": ") for line in header))
    return (
        '<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\n'
        '<style type="text/css" style="display:none;"> P {margin-top:0;margin-bottom:0;} </style>\n'
        '</head>\n<body dir="ltr">\n<div class="elementToProof" style="font-family: Aptos, Aptos_EmbeddedFont, '
        'Aptos_MSFontService, Calibri, Helvetica, sans-serif; font-size: 12pt; color: rgb(0, 0, 0);">\n'
        f"{paragraphs_html(text)}</div>\n"
        '<div id="appendonsend"></div>\n<hr style="display:inline-block;width:98%" tabindex="-1">\n'
        '<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif" style="font-size:11pt" '
        f'color="#000000">{labelled}</font>\n<div>&nbsp;</div>\n</div>\n<div>{original}</div>\n</body>\n</html>\n'
    )


# The clients -------------------------------------------------------------------------

CLIENTS: dict[str, Client] = {
    "mutt": mutt_reply,
    "thunderbird": thunderbird,  # with "start my reply above the quote"
    "outlook": outlook,
    "outlook-de": partial(outlook, lang="de"),
    "outlook-plain-via-exchange": partial(outlook, html_body=False, thread_headers=False),
    # The user retyped the subject and the relay dropped the thread headers: only the signed To is left.
    "subject-key-removed": partial(outlook, subject="RE: my printer", thread_headers=False),
}
# Replies that still carry something of the case when not sent to the signed address.
KEYED = [name for name in CLIENTS if name != "subject-key-removed"]
# Sent to the plain queue address (the user picked it, or the client ignored Reply-To): what threads
# is the subject key, or with the retyped subject the thread headers alone.
TO_QUEUE: dict[str, Client] = {
    **{name: CLIENTS[name] for name in KEYED},
    "thunderbird-subject-retyped": partial(thunderbird, subject="Re: my printer"),
}
# The clients' own defaults: mutt's editor opens on the quote, Thunderbird replies below it.
BELOW_QUOTE: dict[str, Client] = {
    "mutt": partial(mutt_reply, above_quote=False),
    "thunderbird": partial(thunderbird, above_quote=False),
}

CUSTOMER_TEXT = ("It is out now, thanks \u2014 the fuse had blown, and the replacement one is the same type as "
                 "the one in the manual.\n\nJane")
AGENT_TEXT = "Please unplug it and leave it unplugged until our technician has been.\n\nAlice"


def assert_only_new_text(activity: dict[str, Any], text: str, reference: str) -> None:
    """The case view shows the reply's own text; the quote (which names the case) is kept in the full text."""
    assert squash(activity["text"]) == squash(text)
    assert reference in activity["full_text"], "the client quoted the acknowledgement"


# Customers --------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_a_customer_reply_is_appended_with_only_its_new_text(env: Env, client: str) -> None:
    case = open_case(env)
    row = deliver(env, CLIENTS[client](case.ack, sender=CUSTOMER, to=case.signed_address, text=CUSTOMER_TEXT))
    assert row["outcome"] == "threaded"
    assert [c["reference"] for c in env.json("cases", "list")] == [case.reference], "no new case"
    acts = activities(env, case.reference)
    assert [a["kind"] for a in acts] == ["incoming_email", "outgoing_email", "incoming_email"]
    assert_only_new_text(acts[-1], CUSTOMER_TEXT, case.reference)
    assert len(env.peer.received) == 1, "a reply is not acknowledged again"


@pytest.mark.parametrize("client", TO_QUEUE)
def test_a_customer_reply_to_the_plain_queue_address_threads(env: Env, client: str) -> None:
    case = open_case(env)
    row = deliver(env, TO_QUEUE[client](case.ack, sender=CUSTOMER, to=QUEUE, text=CUSTOMER_TEXT))
    assert (row["outcome"], len(env.json("cases", "list"))) == ("threaded", 1)
    assert_only_new_text(activities(env, case.reference)[-1], CUSTOMER_TEXT, case.reference)


@pytest.mark.parametrize("client", CLIENTS)
def test_the_customer_answers_the_relayed_reply(env: Env, client: str) -> None:
    case = open_case(env)
    deliver(env, CLIENTS[client](case.ack, sender=AGENT, to=case.agent_address, text=AGENT_TEXT))
    relayed = env.peer.wait_for(2)[1].message
    answer = "Done, it is unplugged.\n\nJane"
    row = deliver(env, CLIENTS[client](relayed, sender=CUSTOMER, to=case.signed_address, text=answer))
    assert (row["outcome"], len(env.json("cases", "list"))) == ("threaded", 1)
    last = activities(env, case.reference)[-1]
    assert squash(last["text"]) == squash(answer)
    assert "technician" in last["full_text"] and "technician" not in last["text"]


@pytest.mark.parametrize("client", BELOW_QUOTE)
def test_a_reply_below_the_quote_threads(env: Env, client: str) -> None:
    case = open_case(env)
    row = deliver(env, BELOW_QUOTE[client](case.ack, sender=CUSTOMER, to=case.signed_address, text=CUSTOMER_TEXT))
    assert row["outcome"] == "threaded"
    assert squash(CUSTOMER_TEXT) in squash(activities(env, case.reference)[-1]["full_text"])


@pytest.mark.parametrize("client", BELOW_QUOTE)
def test_a_reply_below_the_quote_shows_only_its_new_text(env: Env, client: str) -> None:
    case = open_case(env)
    deliver(env, BELOW_QUOTE[client](case.ack, sender=CUSTOMER, to=case.signed_address, text=CUSTOMER_TEXT))
    assert_only_new_text(activities(env, case.reference)[-1], CUSTOMER_TEXT, case.reference)


# Agents -----------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_an_agent_reply_through_the_signed_address_is_relayed(env: Env, client: str) -> None:
    case = open_case(env)
    row = deliver(env, CLIENTS[client](case.ack, sender=AGENT, to=case.agent_address, text=AGENT_TEXT))
    assert row["outcome"] == "relayed"
    _, relay = env.peer.wait_for(2)
    msg = relay.message
    assert relay.rcpt_tos == ["jane@customer.test"]
    assert f"[{case.reference}]" in msg["Subject"]
    assert msg["Reply-To"].addresses[0].addr_spec == case.signed_address
    assert msg["In-Reply-To"] == "<printer@customer.test>"
    assert "alice@example.test" not in str(msg["From"]) + str(msg["Reply-To"])
    assert plain_body(msg).lstrip().startswith("Please unplug it"), "the agent's text comes first"
    if msg.get_body(("html",)) is not None:
        assert "technician" in html_inner(msg)
    shown = env.json("cases", "show", case.reference)
    assert shown["first_response_at"] is not None
    sent = shown["activities"][-1]
    assert (sent["kind"], sent["message_id"]) == ("outgoing_email", msg["Message-ID"])
    assert_only_new_text(sent, AGENT_TEXT, case.reference)


@pytest.mark.parametrize("client", KEYED)
def test_an_agent_reply_to_the_plain_queue_address_is_an_unverified_note(env: Env, client: str) -> None:
    case = open_case(env)
    row = deliver(env, CLIENTS[client](case.ack, sender=AGENT, to=QUEUE, text=AGENT_TEXT))
    assert row["outcome"] == "unverified_note"
    env.peer.wait_for(2)  # the acknowledgement, and the agent's notice that it was not relayed
    assert [m.rcpt_tos for m in env.peer.received] == [["jane@customer.test"], ["alice@example.test"]], \
        "nothing is relayed to the customer; the agent is told"
    shown = env.json("cases", "show", case.reference)
    note = shown["activities"][-1]
    assert note["kind"] == "note" and note["subject"].startswith("[unverified]")
    assert squash(note["text"]) == squash(AGENT_TEXT)
    assert shown["first_response_at"] is None


# Forged senders ---------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_an_agent_address_as_display_name_is_not_appended(env: Env, client: str) -> None:
    case = open_case(env)
    # The customer forwarded the acknowledgement, so the forger even has the signed address.
    forged = CLIENTS[client](case.ack, sender='"alice@example.test" <evil@attacker.test>', to=case.signed_address,
                             text="Refund approved, send your bank details to evil@attacker.test.")
    row = deliver(env, forged)
    assert row["outcome"] == "follow_up"
    assert len(activities(env, case.reference)) == 2, "nothing appended to the customer's case"
    follow_up = next(c for c in env.json("cases", "list") if c["reference"] != case.reference)
    assert follow_up["customer_email"] == "evil@attacker.test"
    assert env.json("cases", "show", follow_up["reference"])["previous_case"] == case.reference
    assert [m.rcpt_tos for m in env.peer.received] == [["jane@customer.test"], ["evil@attacker.test"]]


def test_a_customer_address_as_display_name_is_quarantined_when_so_configured(make_env: Any) -> None:
    env: Env = make_env()
    config = env.config.read_text()
    assert "[cases]\n" in config
    env.config.write_text(config.replace("[cases]\n", '[cases]\nunknown_participant = "quarantine"\n'))
    case = open_case(env)
    forged = outlook(case.ack, sender='"jane@customer.test" <evil@attacker.test>', to=case.signed_address,
                     text="Please send the replacement to my new address instead.")
    env.inject(forged)
    env.ok("run", "--once")
    [held] = env.json("inbound", "list", "--quarantined")
    assert f"evil@attacker.test is not a participant of {case.reference}" in held["error"]
    assert len(env.json("cases", "list")) == 1
    assert len(activities(env, case.reference)) == 2
    assert len(env.peer.received) == 1


# mutt itself ------------------------------------------------------------------------


def test_mutt_writes_the_reply_headers_itself(env: Env) -> None:
    case = open_case(env)
    reply = message_from_bytes(mutt_reply(case.ack, sender=CUSTOMER, to=case.signed_address, text="Thanks."),
                               policy=policy.default)
    assert reply["Subject"] == f"Re: Printer on fire [{case.reference}]"
    assert reply["In-Reply-To"] == case.ack["Message-ID"]
    assert reply["References"].split() == ["<printer@customer.test>", case.ack["Message-ID"]]
    body = plain_body(reply)
    assert re.search(r"^On .+, Example Support wrote:$", body, re.MULTILINE)
    assert re.search(rf"^> .*{case.reference}", body, re.MULTILINE), "the acknowledgement is quoted"


def test_the_customer_cannot_pass_as_the_agent_through_her_own_signed_address(env: Env) -> None:
    case = open_case(env)
    # Any client lets its user type another From; SMTP does not check it.
    forged = thunderbird(case.ack, sender=AGENT, to=case.signed_address, text="#resolve Problem Solved\n\nAll done.")
    row = deliver(env, forged)
    assert row["outcome"] == "unverified_note", "kept as a note: her own address proves no agent"
    assert env.json("cases", "show", case.reference)["status"] == "Active"
    env.peer.wait_for(2)  # the acknowledgement, and the notice to the agent the mail claims to be from
    assert [m.rcpt_tos for m in env.peer.received] == [["jane@customer.test"], ["alice@example.test"]], \
        "nothing relayed"
