"""Turn the raw bytes of one mail message into an immutable ParsedMail."""

from __future__ import annotations

import base64
import binascii
import email
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from email.headerregistry import HeaderRegistry, UnstructuredHeader
from email.message import Message
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import mailparser  # type: ignore[import-untyped, unused-ignore]
import nh3
from mailparser_reply import EmailMessage as ReplyText  # type: ignore[import-untyped, unused-ignore]

from maild.errors import ParseError
from maild.msgids import normalise_message_id, split_message_ids

__all__ = ["Address", "ParsedAttachment", "ParsedMail", "normalise_message_id", "parse", "split_message_ids"]

# Every language mailparser_reply ships a quote-header pattern for ("pt" has none;
# "david" is a vendor format, not a language).
_REPLY_LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "sv", "da", "pl", "cs", "ja", "ko", "zh")

# The reply stripper costs ~2 µs per character and language; the latest reply sits at
# the top, so a pasted 1 MB log must not cost seconds.
_STRIP_LIMIT = 32_000
# Only the part of a line before a colon this far in can be a quote header's field name
# ("From:", "Organización:", "보낸 사람:"); the longest mailparser_reply knows is 12 characters.
_FIELD_NAME_REACH = 40

# Inline images are referenced as cid: URLs; nh3 would drop them by default.
_URL_SCHEMES = frozenset(nh3.ALLOWED_URL_SCHEMES | {"cid"})
# nh3 keeps the text of tags it removes; a <title> is not part of what the sender wrote.
_DROP_WITH_CONTENT = frozenset(nh3.CLEAN_CONTENT_TAGS | {"title"})

# Decode every header as unstructured text: the specialised stdlib header classes
# reinterpret values (and have raised on hostile input), we only want the words.
_UNSTRUCTURED = HeaderRegistry(default_class=UnstructuredHeader, use_default_map=False)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_OR_DASHES = re.compile(r"\n|(?=-----)")
_BRACKETED = re.compile(r"<([^<>]*)>")
# mail-parser names an unnamed part with ten random lower-case letters.
_INVENTED_NAME = re.compile(r"[a-z]{10}\.(?:txt|rtf)")


@dataclass(frozen=True)
class Address:
    """One mailbox: decoded display name and lower-cased addr-spec."""

    name: str
    email: str


@dataclass(frozen=True)
class ParsedAttachment:
    """One attachment; `filename` is sender-supplied data and never a path."""

    filename: str
    content_type: str
    content: bytes
    content_id: str | None
    inline: bool
    # Its SHA-256 when a parse worker has already written it to the attachment store
    # (maild.parsepool), so the writer need not.
    sha256: str | None = None


@dataclass(frozen=True)
class ParsedMail:
    """Everything maild reads from one message, decoded and normalised."""

    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    sender: Address | None
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    return_path: str | None
    date: datetime | None
    text: str
    text_stripped: str
    html: str | None
    attachments: tuple[ParsedAttachment, ...]
    # A mapping proxy cannot be hashed; equality still compares it.
    headers: Mapping[str, tuple[str, ...]] = field(hash=False)
    content_type: str
    defects: tuple[str, ...]
    # How many addresses the (first) From header names; ``sender`` is the first of them.
    sender_count: int = 1

    def __reduce__(self) -> tuple[Any, ...]:
        # For the parser's worker processes (maild.parsepool): a mapping proxy cannot be
        # pickled, so the headers travel as a dict and are wrapped again on arrival.
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["headers"] = dict(self.headers)
        return (_unpickle_mail, (values,))

    def header(self, name: str) -> str | None:
        """First decoded value of header `name` (any case), or None if absent."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def sender_email(self) -> str | None:
        """The From addr-spec, or None."""
        return self.sender.email if self.sender else None

    @property
    def sender_domain(self) -> str | None:
        """The lower-case domain of the From address, or None."""
        email_addr = self.sender_email
        if email_addr is None or "@" not in email_addr:
            return None
        return email_addr.rpartition("@")[2].lower() or None


def _unpickle_mail(values: dict[str, Any]) -> ParsedMail:
    return ParsedMail(**{**values, "headers": MappingProxyType(values["headers"])})


def parse(raw: bytes) -> ParsedMail:
    """Parse one message; raise ParseError only if `raw` is not mail at all.

    A message that is merely odd (missing Message-ID, bad charset, missing Date,
    undecodable bytes) parses with best-effort values.
    """
    parsed, headers = _read(raw)
    text, html = _bodies(parsed.text_plain, parsed.text_html)
    senders = _addresses(parsed.from_)
    return ParsedMail(
        message_id=normalise_message_id(_first(headers, "message-id")),
        in_reply_to=_ids(headers, "in-reply-to"),
        references=_ids(headers, "references"),
        subject=" ".join(_first(headers, "subject").split()),
        sender=senders[0] if senders else None,
        reply_to=_addresses(parsed.reply_to),
        to=_addresses(parsed.to),
        cc=_addresses(parsed.cc),
        return_path=_return_path(headers.get("return-path")),
        date=_utc(parsed.date),
        text=text,
        text_stripped=_strip_quoted(text),
        html=html,
        attachments=tuple(_attachment(item, raw) for item in parsed.attachments),
        headers=headers,
        content_type=parsed.message.get_content_type().lower(),
        defects=tuple(sorted(str(name) for name in parsed.defects_categories)),
        sender_count=len(senders),
    )


def _read(raw: bytes) -> tuple[Any, Mapping[str, tuple[str, ...]]]:
    """Run mail-parser, turning "this is not mail" into ParseError; with every header decoded.

    mail-parser is handed the message without its ``Received`` headers, which it would parse
    into hops, dates and defects maild never reads: 0.36 of its 1.0 ms a message on
    bench/imap.py's corpus (real mail has more of them). They stay in the header map."""
    if not raw or raw.isspace():
        raise ParseError("empty input: there is no message to parse")
    try:
        message = email.message_from_bytes(raw)  # what mailparser.parse_from_bytes starts with
        headers = _header_map(message)
        del message["received"]
        parsed = mailparser.MailParser(message)
    except Exception as exc:
        # Whatever the parser trips over, the caller must get the one error it can
        # quarantine on, not a crash of the intake worker.
        reason = f"{type(exc).__name__}: {exc}"[:200]
        raise ParseError(f"unreadable message ({reason})") from exc
    # No header at all means the bytes had no header block.
    if not headers:
        raise ParseError("no header block: the input does not start with mail headers")
    return parsed, headers


def _header_map(message: Message) -> Mapping[str, tuple[str, ...]]:
    """All headers, lower-cased name -> every decoded value in wire order."""
    collected: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        collected.setdefault(name.lower(), []).append(_decode_header(str(value)))
    return MappingProxyType({name: tuple(values) for name, values in collected.items()})


def _decode_header(raw: str) -> str:
    """Unfold and RFC 2047-decode one raw header value."""
    # Unfolding removes only the line break, so the space of the fold survives
    # (mail-parser drops it: "Héllo\r\n [CAS-1]" became "Héllo[CAS-1]").
    text = _recover_8bit(raw).replace("\r", "").replace("\n", "")  # str.replace: a fifth of re.sub's cost
    if "=?" not in text:
        return text.strip()
    try:
        return str(_UNSTRUCTURED("x-maild", text)).strip()
    except Exception:  # noqa: BLE001
        # The stdlib header parser has had crash bugs on crafted encoded words;
        # the undecoded text is still a usable value.
        return text.strip()


def _recover_8bit(value: str) -> str:
    """Turn surrogate-escaped raw octets back into text (UTF-8, else Windows-1252)."""
    if value.isascii():
        return value
    return _decode_best_effort(value.encode("utf-8", "surrogateescape"))


def _decode_best_effort(data: bytes) -> str:
    """Decode bytes of unknown charset; Latin-1 accepts every byte, so it never fails."""
    for charset in ("utf-8", "cp1252"):
        try:
            return data.decode(charset)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _first(headers: Mapping[str, tuple[str, ...]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""


def _ids(headers: Mapping[str, tuple[str, ...]], name: str) -> tuple[str, ...]:
    return split_message_ids(" ".join(headers.get(name, ())))


def _return_path(values: tuple[str, ...] | None) -> str | None:
    """First Return-Path addr, lower-cased; "" for the null path "<>"."""
    if not values:
        return None
    match = _BRACKETED.search(values[0])
    return (match.group(1) if match else values[0]).strip().lower()


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # A naive value has no zone to convert from; treat it as UTC, as mail-parser does.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _addresses(pairs: Iterable[tuple[str, str]] | None) -> tuple[Address, ...]:
    """Convert mail-parser's (name, addr) pairs, skipping empty addresses."""
    found: list[Address] = []
    for name, addr in pairs or ():
        email_addr = _recover_8bit(str(addr)).strip().lower()
        if email_addr:
            # mail-parser leaves encoded words in an unknown charset undecoded.
            found.append(Address(name=_decode_header(str(name)), email=email_addr))
    return tuple(found)


def _bodies(plain: list[str], html_parts: list[str]) -> tuple[str, str | None]:
    """The text body (plain parts, else converted HTML) and the sanitised HTML."""
    texts = [_newlines(_repair_mojibake(part)) for part in plain]
    raw_html = "\n".join(_newlines(_repair_mojibake(part)) for part in html_parts)
    html = _sanitise(raw_html) if html_parts else None
    if texts:
        return "\n".join(texts), html
    # inscriptis only reads markup, so it gets the original document; sanitising is
    # for whoever renders `html`. Imported here: it brings lxml (6 MiB), which a daemon
    # whose parsing runs in a worker process would carry in its own for nothing.
    import inscriptis  # type: ignore[import-untyped, unused-ignore]

    return inscriptis.get_text(raw_html).strip() if raw_html else "", html


def _sanitise(html: str) -> str:
    return nh3.clean(html, clean_content_tags=_DROP_WITH_CONTENT, url_schemes=_URL_SCHEMES)


def _newlines(text: str) -> str:
    return _LINE_BREAK.sub("\n", text)


def _repair_mojibake(text: str) -> str:
    """Undo UTF-8 octets that were read as Latin-1/Windows-1252 under a wrong charset label.

    Genuine Latin-1 text practically never re-encodes to valid multi-byte UTF-8,
    so a successful round trip means the label was wrong.
    """
    if text.isascii():
        return text
    for legacy in ("latin-1", "cp1252"):
        try:
            return text.encode(legacy).decode("utf-8")
        except UnicodeError:
            continue
    return text


def _strip_quoted(text: str) -> str:
    """The latest reply of `text` without quoted history; `text` if nothing is left."""
    interleaved = _without_quote_lines(text[:_STRIP_LIMIT])
    if interleaved is not None:
        return interleaved
    head = text[:_STRIP_LIMIT]
    normalised = ReplyText(text=head, languages=list(_REPLY_LANGUAGES)).text
    # What read() finds, without its regular expression over every line, when no line can
    # start a quote header (most new messages): one reply, the text itself.
    latest, more = _first_reply(normalised) if _may_hold_quote_header(normalised) else (normalised.strip(), False)
    if len(text) > len(head) and not more:
        # No quote header in the head: the whole long text is the latest reply.
        return text
    return latest or text


def _first_reply(text: str) -> tuple[str, bool]:
    """The first reply mailparser_reply's ``read()`` would give for its normalised ``text``,
    and whether another follows it.

    ``read()`` finds every quote header of the whole text first, then runs two more
    expressions (signatures, disclaimers) over every part, and intake keeps only the first
    part: about 1.6 ms a reply, a quarter of all parsing on bench/imap.py's corpus. This
    reads the headers in order, as ``read()`` lists them (each match's non-empty groups, each
    found by its text from where the part before it began), and stops at the first that
    closes a non-empty part. Tested against ``read()``."""
    current = 0
    for match in _quote_headers(text):
        for header in match.groups() or (match.group(0),):
            if not header:
                continue
            position = text.find(header, current + 1 if current > 0 else current)
            part = text[current:position].strip()
            current = position if position >= 0 else 0
            if part:
                return part, True
    return text[current:].strip(), False


def _quote_headers(text: str) -> Iterator[re.Match[str]]:
    """The matches ``finditer`` gives for the quote-header expression, tried only where one
    can start: every alternative begins at a line start, at a line break, or (Danish
    "-----Oprindelig meddelelse-----") at five dashes, and tests/test_parse.py checks that
    of the installed pattern. ``finditer`` tries all 26 alternatives at every character: a
    reply's search cost 0.55 ms, a quarter of its parse, and takes a quarter of that here."""
    regex, resume = _quote_header_regex(), 0
    for start in _match_starts(text):
        if start < resume:
            continue
        match = regex.match(text, start)
        if match is not None:
            yield match
            resume = max(match.end(), start + 1)


def _match_starts(text: str) -> list[int]:
    """Where a quote header can start, in order: line starts, line breaks, runs of five dashes."""
    starts = {0}
    for found in _LINE_BREAK_OR_DASHES.finditer(text):
        starts.add(found.start())
        if found.group() == "\n":
            starts.add(found.end())
    return sorted(starts)


@lru_cache(maxsize=1)
def _quote_header_regex() -> re.Pattern[str]:
    """mailparser_reply's quote-header expression for our languages, built once (its
    property joins thirteen languages' patterns for every message)."""
    pattern: re.Pattern[str] = ReplyText(text="", languages=list(_REPLY_LANGUAGES)).HEADER_REGEX
    return pattern


def _may_hold_quote_header(text: str) -> bool:
    """False only if no line can start a quote header: every "X wrote:" form ends its line
    with a colon, every "From: ..." block starts a line (after quote marks) with a field name
    and a colon, and the separators have five dashes. Most new messages have none of these,
    and for them the reply parser's answer is the text itself."""
    for line in text.split("\n"):
        if line.endswith((":", "\uff1a")) or "-----" in line or ":" in line.lstrip("> *")[:_FIELD_NAME_REACH]:
            return True
    return False


def _without_quote_lines(text: str) -> str | None:
    """A reply written below or between ``>`` quotes (Thunderbird's and mutt's bottom-posting):
    every line that is not quoted, without the "On ..., X wrote:" line that introduces a quote.

    None when the text has no such quotes, or all new text stands above them (top-posting,
    Outlook's quote blocks): the reply parser handles those by cutting at the quote header.
    """
    lines = text.splitlines()
    quoted = [line.lstrip().startswith(">") for line in lines]
    if True not in quoted:
        return None
    first = quoted.index(True)
    if not any(line.strip() for line, q in zip(lines[first:], quoted[first:]) if not q):
        return None
    kept: list[str] = []
    for i, line in enumerate(lines):
        if quoted[i] or _introduces_quote(lines, quoted, i):
            continue
        if line.strip() or (kept and kept[-1].strip()):  # one blank line where a quote was
            kept.append(line)
    result = "\n".join(kept).strip()
    return result or None


def _introduces_quote(lines: list[str], quoted: list[bool], i: int) -> bool:
    """Whether line ``i`` is the attribution ("On ..., Jane wrote:") right before a quote."""
    if not lines[i].rstrip().endswith(":"):
        return False
    following = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), None)
    return following is not None and quoted[following]


def _attachment(item: Mapping[str, Any], raw: bytes) -> ParsedAttachment:
    """Convert one mail-parser attachment dict."""
    content_id = str(item.get("content-id") or "").strip().strip("<>").strip()
    disposition = str(item.get("content-disposition") or "").partition(";")[0]
    disposition = disposition.strip().lower()
    content_type = str(item.get("mail_content_type") or "application/octet-stream")
    return ParsedAttachment(
        filename=_original_filename(item, raw),
        content_type=content_type.lower(),
        content=_payload_bytes(item),
        content_id=content_id or None,
        inline=disposition == "inline" or (bool(content_id) and disposition != "attachment"),
    )


def _original_filename(item: Mapping[str, Any], raw: bytes) -> str:
    """The sender's filename, or "" where mail-parser made one up."""
    name = str(item.get("filename") or "")
    content_id = str(item.get("content-id") or "")
    # mail-parser names a nameless part after its Content-ID, or with random letters
    # (which would make parsing non-deterministic); neither is the sender's name.
    if content_id and name == content_id:
        return ""
    if _INVENTED_NAME.fullmatch(name) and name.encode() not in raw:
        return ""
    return name


def _payload_bytes(item: Mapping[str, Any]) -> bytes:
    """Decoded attachment bytes from mail-parser's base64 (binary) or text payload."""
    payload = str(item.get("payload") or "")
    if not item.get("binary"):
        # Non-binary payloads are flattened MIME entities (e.g. an attached message).
        return payload.encode("utf-8", "surrogateescape")
    try:
        return base64.b64decode(payload)
    except binascii.Error:
        return _decode_damaged_base64(payload)


def _decode_damaged_base64(payload: str) -> bytes:
    """Decode base64 leniently, as mail clients do, so broken padding loses no file."""
    data = re.sub(r"[^A-Za-z0-9+/]", "", payload.partition("=")[0])
    # A lone trailing character carries no whole byte.
    usable = len(data) - 1 if len(data) % 4 == 1 else len(data)
    return base64.b64decode(data[:usable] + "==")
