"""Tests for maild.parse: raw bytes to ParsedMail."""

from __future__ import annotations

import dataclasses
import os
import re._constants as sre
import re._parser as sre_parse
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maild.errors import ParseError
from mailparser_reply import EmailMessage as ReplyText  # type: ignore[import-untyped, unused-ignore]

from maild.parse import (
    _REPLY_LANGUAGES,
    Address,
    ParsedMail,
    _first_reply,
    _may_hold_quote_header,
    _quote_header_regex,
    _quote_headers,
    _strip_quoted,
    normalise_message_id,
    parse,
    split_message_ids,
)

MAIL_DIR = Path(__file__).parent / "data" / "mail"
CORPUS = sorted(path.name for path in MAIL_DIR.glob("*.eml"))


def load(name: str) -> bytes:
    return (MAIL_DIR / name).read_bytes()


def parse_file(name: str) -> ParsedMail:
    return parse(load(name))


def parse_text(body: str, headers: str = "From: a@example.com\n") -> ParsedMail:
    raw = headers + "Content-Type: text/plain; charset=utf-8\n\n" + body
    return parse(raw.encode("utf-8"))


# --- corpus -------------------------------------------------------------------


def test_corpus_is_complete() -> None:
    expected = {
        "plain.eml", "reply_with_key.eml", "encoded_folded_subject.eml", "html_only.eml",
        "alternative.eml", "attachment.eml", "auto_reply.eml", "bounce.eml", "list.eml",
        "bad_charset.eml", "no_message_id.eml", "outlook_reply.eml",
    }
    assert expected <= set(CORPUS)


def test_plain_message_fields() -> None:
    mail = parse_file("plain.eml")
    assert mail.message_id == "<20250106101500.1234@laptop.example.com>"
    assert mail.subject == "Printer on floor 3 is jammed"
    assert mail.sender == Address(name="Alice Example", email="alice@example.com")
    assert mail.sender_email == "alice@example.com"
    assert mail.sender_domain == "example.com"
    assert mail.to == (Address(name="Support", email="support@example.test"),)
    assert mail.cc == (Address(name="", email="bob@example.com"),)
    assert mail.reply_to == ()
    assert mail.return_path == "alice@example.com"
    assert mail.in_reply_to == () and mail.references == ()
    assert mail.text.startswith("Hello,\n\nthe printer on floor 3")
    assert mail.text_stripped.endswith("Alice")
    assert mail.html is None
    assert mail.attachments == ()
    assert mail.content_type == "text/plain"


def test_date_is_converted_to_utc() -> None:
    # The raw header says 10:15:00 +0100.
    assert parse_file("plain.eml").date == datetime(2025, 1, 6, 9, 15, tzinfo=UTC)
    reply_date = parse_file("reply_with_key.eml").date  # 08:30 -0500
    assert reply_date is not None and reply_date.utcoffset() is not None
    assert reply_date == datetime(2025, 1, 7, 13, 30, tzinfo=UTC)


def test_unparseable_date_is_none() -> None:
    assert parse_text("x", "From: a@example.com\nDate: next Tuesday-ish\n").date is None


def test_repeated_headers_keep_every_value_in_order() -> None:
    mail = parse_file("plain.eml")
    received = mail.headers["received"]
    assert len(received) == 2
    assert received[0].startswith("from mx.example.com")
    assert received[1].startswith("from laptop.example.com")
    assert "\n" not in received[0]  # unfolded


def test_header_lookup_is_case_insensitive() -> None:
    mail = parse_file("plain.eml")
    assert mail.header("SUBJECT") == mail.header("subject") == "Printer on floor 3 is jammed"
    assert mail.header("X-Not-There") is None


def test_parsed_mail_is_frozen_and_hashable() -> None:
    mail = parse_file("plain.eml")
    assert hash(mail) == hash(parse_file("plain.eml"))
    assert mail == parse_file("plain.eml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        mail.subject = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        mail.headers["subject"] = ("changed",)  # type: ignore[index]


# --- threading headers --------------------------------------------------------


def test_reply_with_case_key() -> None:
    mail = parse_file("reply_with_key.eml")
    assert mail.subject == "Re: Printer on floor 3 is jammed [CAS-00042-AB12CD]"
    assert mail.message_id == "<CAF.reply.42@mail.example.com>"
    assert mail.in_reply_to == ("<case-42-ack@example.test>",)
    # References is folded over two lines in the file.
    assert mail.references == (
        "<20250106101500.1234@laptop.example.com>",
        "<case-42-ack@example.test>",
    )
    assert mail.text_stripped == "Thanks, it works again now \u2014 great service."
    assert "wrote:" in mail.text and "> Your request" in mail.text


def test_missing_message_id_and_date_are_none() -> None:
    mail = parse_file("no_message_id.eml")
    assert mail.message_id is None
    assert mail.date is None
    assert mail.sender_email == "ivan@example.com"


def test_empty_message_id_is_none() -> None:
    assert parse_text("x", "From: a@example.com\nMessage-ID:   \n").message_id is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a@b.example>", "<a@b.example>"),
        ("a@b.example", "<a@b.example>"),
        ("  <a@b.example>  ", "<a@b.example>"),
        ("<a@\r\n b.example>", "<a@b.example>"),
        ("<a@b.example> (added by a gateway)", "<a@b.example>"),
        ("<<a@b.example>>", "<a@b.example>"),
        ("", None),
        ("   ", None),
        ("<>", None),
    ],
)
def test_normalise_message_id(value: str, expected: str | None) -> None:
    assert normalise_message_id(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a@x> <b@x>", ("<a@x>", "<b@x>")),
        ("<a@x>,<b@x>, <c@x>", ("<a@x>", "<b@x>", "<c@x>")),
        ("<a@x>\r\n <b@x>\r\n\t<c@x>", ("<a@x>", "<b@x>", "<c@x>")),
        ("a@x b@x", ("<a@x>", "<b@x>")),
        ("a@x, <b@x>", ("<a@x>", "<b@x>")),
        ("<a@x> (Jane's message of Mon, 6 Jan 2025 from jane@example.com)", ("<a@x>",)),
        ('Your message of "Mon, 6 Jan 2025" <a@x>', ("<a@x>",)),
        ("<a@x> <a@x>", ("<a@x>", "<a@x>")),
        ("", ()),
        ("<>", ()),
    ],
)
def test_split_message_ids(value: str, expected: tuple[str, ...]) -> None:
    assert split_message_ids(value) == expected


# --- subjects, names and charsets -----------------------------------------------


def test_encoded_folded_subject_keeps_the_fold_space() -> None:
    mail = parse_file("encoded_folded_subject.eml")
    assert mail.subject == "Re: H\u00e9llo [CAS-00001-ABCDEF]"
    assert mail.sender == Address(name="J\u00f6rg M\u00fcller", email="joerg@example.com")
    assert mail.to == (Address(name="Andr\u00e9 Support", email="support@example.test"),)


def test_adjacent_encoded_words_join_without_the_fold() -> None:
    mail = parse_text("x", "From: a@example.com\nSubject: =?utf-8?b?SGVs?=\n =?utf-8?b?bG8=?= World\n")
    assert mail.subject == "Hello World"


def test_subject_whitespace_is_collapsed() -> None:
    mail = parse_text("x", "From: a@example.com\nSubject:   Re:  help\n\t  needed   \n")
    assert mail.subject == "Re: help needed"


def test_missing_subject_is_empty() -> None:
    assert parse_text("x").subject == ""


def test_wrong_and_unknown_charsets_give_readable_text() -> None:
    mail = parse_file("bad_charset.eml")
    # Body declared iso-8859-1 but written in UTF-8.
    assert mail.text == "Gr\u00fc\u00dfe aus K\u00f6ln \u2013 bitte um R\u00fcckruf.\n"
    # Subject in raw 8-bit UTF-8, sender name in an encoded word of unknown charset.
    assert mail.subject == "R\u00fcckfrage zur Rechnung"
    assert mail.sender == Address(name="Hanna K\u00f6nig", email="hanna@example.com")


def test_unknown_body_charset_is_decoded_and_reported() -> None:
    raw = (
        b"From: a@example.com\nContent-Type: text/plain; charset=x-unknown\n"
        b"Content-Transfer-Encoding: base64\n\nR3LDvMOfZQ==\n"
    )
    mail = parse(raw)
    assert mail.text == "Gr\u00fc\u00dfe"
    assert "CharsetDecodeDefect" in mail.defects


def test_genuine_latin1_body_is_not_mangled() -> None:
    raw = b"From: a@example.com\nContent-Type: text/plain; charset=iso-8859-1\n\nGr\xfc\xdfe\n"
    assert parse(raw).text == "Gr\u00fc\u00dfe\n"


def test_raw_latin1_header_bytes_are_decoded() -> None:
    raw = b"From: a@example.com\nSubject: Gr\xfc\xdfe\n\nx"
    assert parse(raw).subject == "Gr\u00fc\u00dfe"


# --- senders --------------------------------------------------------------------


@pytest.mark.parametrize(
    "from_header",
    ["", "From: Undisclosed recipients:;\n", "From: <>\n", "From: \n"],
)
def test_missing_or_empty_from_gives_no_sender(from_header: str) -> None:
    mail = parse_text("x", from_header + "Subject: hi\n")
    assert mail.sender is None
    assert mail.sender_email is None
    assert mail.sender_domain is None


def test_reply_to_is_parsed() -> None:
    mail = parse_text("x", "From: a@example.com\nReply-To: Team <Team@Example.com>, b@example.com\n")
    assert mail.reply_to == (
        Address(name="Team", email="team@example.com"),
        Address(name="", email="b@example.com"),
    )


# --- bodies ---------------------------------------------------------------------


def test_html_only_mail_is_converted_and_sanitised() -> None:
    mail = parse_file("html_only.eml")
    assert mail.text == "The login page shows an error.\n\nclick me or read the help"
    assert "alert" not in mail.text and "ignored title" not in mail.text
    assert mail.html is not None
    assert "<b>login page</b>" in mail.html
    assert 'href="https://example.com/help"' in mail.html
    for forbidden in ("<script", "alert", "onclick", "onerror", "javascript:", "<style", "title"):
        assert forbidden not in mail.html


def test_alternative_takes_text_from_plain_and_html_from_html() -> None:
    mail = parse_file("alternative.eml")
    assert mail.text == 'The VPN client says "authentication failed" (plain version).\n'
    assert mail.html is not None
    assert "<i>authentication failed</i> (HTML version)" in mail.html
    assert "plain version" not in mail.html
    # Inline-image references must survive sanitising.
    assert 'src="cid:logo@example.com"' in mail.html


def test_message_without_body_has_empty_text() -> None:
    mail = parse(b"From: a@example.com\nSubject: only headers\n")
    assert mail.text == "" and mail.text_stripped == "" and mail.html is None


@pytest.mark.parametrize("name", CORPUS)
def test_crlf_and_lf_parse_identically(name: str) -> None:
    lf = load(name).replace(b"\r\n", b"\n")
    crlf = lf.replace(b"\n", b"\r\n")
    from_lf, from_crlf = parse(lf), parse(crlf)
    assert from_lf == from_crlf
    assert "\r" not in from_crlf.text


# --- quoted history -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Thanks!\n\nOn Mon, 6 Jan 2025 at 10:20, Support <support@example.test> wrote:\n> old\n", "Thanks!"),
        ("Thanks!\n\nOn Mon, Jan 6, 2025 at 10:20 AM Support <support@example.test> wrote:\n> old\n> older\n", "Thanks!"),
        ("Danke, erledigt.\n\nAm 06.01.2025 um 10:20 schrieb Support <support@example.test>:\n> Ihre Anfrage\n", "Danke, erledigt."),
        ("Merci !\n\nLe lun. 6 janv. 2025 \u00e0 10:20, Support <support@example.test> a \u00e9crit :\n> Votre demande\n", "Merci !"),
        (
            (
                "Sure, will do.\n\n-----Original Message-----\n"
                "From: Support <support@example.test>\n"
                "Sent: Monday, January 6, 2025 10:20 AM\n"
                "To: Dave <dave@example.com>\nSubject: Help\n\nold text\n"
            ),
            "Sure, will do.",
        ),
    ],
    ids=["en", "en-gmail", "de", "fr", "outlook"],
)
def test_quoted_history_is_stripped(body: str, expected: str) -> None:
    mail = parse_text(body)
    assert mail.text_stripped == expected
    assert mail.text.startswith(expected)


def test_outlook_reply_corpus_is_stripped() -> None:
    mail = parse_file("outlook_reply.eml")
    assert mail.text_stripped == "Yes, please close the case.\n\nDave"
    assert "-----Original Message-----" in mail.text


def test_stripped_text_falls_back_to_full_text() -> None:
    # Nothing before the quote header: the stripper returns nothing useful.
    mail = parse_text("   \n\n")
    assert mail.text_stripped == mail.text


def test_long_text_without_quotes_is_kept_whole() -> None:
    body = "".join(f"log line {number}: all fine\n" for number in range(5000))
    mail = parse_text(body)
    assert len(mail.text) > 100_000
    assert mail.text_stripped == mail.text


def test_long_text_is_stripped_at_a_quote_near_the_top() -> None:
    quote = "".join(f"> old line {number}\n" for number in range(5000))
    mail = parse_text("Got it.\n\nOn Mon, 6 Jan 2025 at 10:20, Support <s@example.test> wrote:\n" + quote)
    assert mail.text_stripped == "Got it."


QUOTE_HEADERS = [
    "On Mon, 6 Jan 2025 at 10:20, Support <s@example.test> wrote:",
    "Am 06.01.2025 um 10:20 schrieb Support <s@example.test>:",
    "Le lun. 6 janv. 2025 \u00e0 10:20, Support <s@example.test> a \u00e9crit :",
    "From: Support <s@example.test>\nSent: Monday, January 6, 2025 10:20 AM",
    "> > From: Support <s@example.test>\n> > Sent: Monday",
    "** Von: ** Support\n** Gesendet: ** Montag",
    "-----Original Message-----",
    "2025\u5e741\u67086\u65e5(\u6708) 10:20 Support <s@example.test>:",
    "2025\ub144 1\uc6d4 6\uc77c (\uc6d4) \uc624\uc804 10:20, Support <s@example.test>\ub2d8\uc774 \uc791\uc131\ud558\uc600\uc2b5\ub2c8\ub2e4:",
    "2025\u5e741\u67086\u65e5 10:20\uff0cSupport <s@example.test> \u5199\u9053\uff1a",
]
PLAIN_LETTERS = [
    "Hello,\n\n  my printer stopped working   \n\tafter the update.\n\nRegards,\nJane\n--\nJane Doe",
    "Hi\r\n\r\nwe were charged twice (see invoice 4711)\r\n\r\n____________________________________\r\nAcme",
    "Short.",
]


@pytest.mark.parametrize("header", QUOTE_HEADERS)
def test_every_quote_header_form_goes_to_the_reply_parser(header: str) -> None:
    # The shortcut may only skip the reply parser when no quote header can be in the text.
    assert _may_hold_quote_header(f"Thanks!\n\n{header}\n> old text")


@pytest.mark.parametrize("text", PLAIN_LETTERS + [f"Thanks!\n\n{h}\n> old" for h in QUOTE_HEADERS])
def test_skipping_the_reply_parser_changes_nothing(text: str) -> None:
    by_parser = ReplyText(text=text, languages=list(_REPLY_LANGUAGES)).read().latest_reply or text
    assert _strip_quoted(text) == by_parser


def test_a_letter_without_quote_headers_skips_the_reply_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: object) -> None:
        raise AssertionError("the reply parser ran")

    monkeypatch.setattr(ReplyText, "read", fail)
    for text in PLAIN_LETTERS:
        assert not _may_hold_quote_header(ReplyText(text=text).text)
        assert _strip_quoted(text)


def _by_reader(text: str) -> tuple[str, bool]:
    """What mailparser_reply's read() gives: the first reply, and whether more follow."""
    message = ReplyText(text=text, languages=list(_REPLY_LANGUAGES))
    message.read()
    return message.latest_reply, len(message.replies) > 1


FIRST_REPLY_TEXTS = [
    *PLAIN_LETTERS,
    *(f"Thanks!\n\n{h}\n> old" for h in QUOTE_HEADERS),
    *(f"{h}\n> only a quote" for h in QUOTE_HEADERS),  # a header on the first line: that part is empty
    *(f"   \n\n{h}\nold\n\n{QUOTE_HEADERS[0]}\nolder" for h in QUOTE_HEADERS),  # a blank first part
    "New text.\n\n-----Original Message-----\nFrom: A <a@x.test>\nSent: Monday\n\nold\n"
    "-----Original Message-----\nolder",
    "Same header twice.\n" + QUOTE_HEADERS[0] + "\nold\n" + QUOTE_HEADERS[0] + "\nolder",
    "",
]


@pytest.mark.parametrize("text", FIRST_REPLY_TEXTS)
def test_the_first_reply_is_what_the_reply_parser_reads(text: str) -> None:
    normalised = ReplyText(text=text, languages=list(_REPLY_LANGUAGES)).text
    assert _first_reply(normalised) == _by_reader(normalised)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([*QUOTE_HEADERS, "text", "", "  ", "> quoted", "Regards,\nJane", "wrote:",
                                 "From: x", "-----"]), max_size=8))
def test_the_first_reply_matches_the_reply_parser_on_any_mix(lines: list[str]) -> None:
    normalised = ReplyText(text="\n".join(lines), languages=list(_REPLY_LANGUAGES)).text
    assert _first_reply(normalised) == _by_reader(normalised)


def test_received_headers_are_kept_but_not_parsed_by_mail_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # mail-parser would parse every Received header into hops, dates and defects, which maild
    # never reads: a third of its time. It gets the message without them.
    import mailparser.core  # type: ignore[import-untyped, unused-ignore]

    seen: list[list[str]] = []
    real = mailparser.core.receiveds_parsing
    monkeypatch.setattr(mailparser.core, "receiveds_parsing",
                        lambda received, **kwargs: seen.append(list(received)) or real(received, **kwargs))
    hops = ["from mx.example.test by mail.example.test; Mon, 6 Jan 2025 10:20:00 +0000",
            "from laptop by mx.example.test; Mon, 6 Jan 2025 10:19:58 +0000"]
    raw = ("".join(f"Received: {hop}\r\n" for hop in hops)
           + "From: Jane <jane@example.test>\r\nTo: support@example.test\r\nSubject: Hi\r\n\r\nHello\r\n").encode()
    mail = parse(raw)
    assert mail.headers["received"] == tuple(hops)
    assert mail.subject == "Hi" and mail.text.strip() == "Hello"
    assert seen == [[]]


DASHES_MID_LINE = "see below -----Oprindelig meddelelse-----\nFra: A\nSendt: mandag"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([*QUOTE_HEADERS, "text", "", "  ", "> quoted", "wrote:", "From: x", "-----",
                                 "x------", DASHES_MID_LINE, "Fra: B\nTil: C"]), max_size=8))
def test_quote_headers_are_found_where_finditer_finds_them(lines: list[str]) -> None:
    # _quote_headers tries the expression only where a match can start; what it finds must
    # be exactly what trying it everywhere finds.
    text = ReplyText(text="\n".join(lines), languages=list(_REPLY_LANGUAGES)).text
    expected = [match.span() for match in _quote_header_regex().finditer(text)]
    assert [match.span() for match in _quote_headers(text)] == expected


def test_a_danish_header_in_the_middle_of_a_line_is_found() -> None:
    text = ReplyText(text=DASHES_MID_LINE, languages=list(_REPLY_LANGUAGES)).text
    assert [match.start() for match in _quote_headers(text)] == [text.index("-----")]


def _starts_anchored(items: list[tuple[object, object]]) -> bool:
    """Whether every match of the parsed sequence ``items`` starts at a line start, at a
    line break, or at five dashes (the places _quote_headers tries)."""
    if not items:
        return False  # an empty match could be anywhere
    (op, av), rest = items[0], items[1:]
    if op is sre.AT:
        return av is sre.AT_BEGINNING
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return av[0] == 1 and _starts_anchored(rest)  # a lookahead consumes nothing; a lookbehind fails
    if op is sre.LITERAL:
        return av == ord("\n") or items[:5] == [(sre.LITERAL, ord("-"))] * 5
    if op is sre.SUBPATTERN:
        return _starts_anchored([*av[3], *rest])
    if op is sre.BRANCH:
        return all(_starts_anchored([*alternative, *rest]) for alternative in av[1])
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        low, _, body = av
        return _starts_anchored([*body, *rest]) and (low > 0 or _starts_anchored(rest))
    return False


def test_every_quote_header_alternative_starts_where_quote_headers_looks() -> None:
    # If a newer mailparser_reply adds a form that can start mid-line, _match_starts must learn it.
    regex = _quote_header_regex()
    assert _starts_anchored(list(sre_parse.parse(regex.pattern, regex.flags)))
    assert not _starts_anchored(list(sre_parse.parse(r"^a|b\s+wrote:", regex.flags)))


def test_stripping_a_quote_never_runs_the_whole_reply_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # read() ran two more expressions over every part and found every header of the text,
    # for the first part only: most of the cost of parsing a reply.
    def fail(self: object) -> None:
        raise AssertionError("the reply parser's read() ran")

    monkeypatch.setattr(ReplyText, "read", fail)
    assert _strip_quoted(f"Thanks!\n\n{QUOTE_HEADERS[0]}\n> old text") == "Thanks!"


# --- attachments ----------------------------------------------------------------


def test_attachments_are_decoded_and_keep_raw_filenames() -> None:
    mail = parse_file("attachment.eml")
    assert mail.text == "Please find the invoice attached.\n"
    pdf, notes, image = mail.attachments
    assert pdf.filename == "../../etc/passwd"  # data only, never a path
    assert pdf.content_type == "application/pdf"
    assert pdf.content.startswith(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    assert pdf.content.endswith(b"%%EOF\n")
    assert (pdf.content_id, pdf.inline) == (None, False)
    assert notes.filename == "notes.txt"
    assert notes.content == "Serial number: 12345 \u2014 \u00dcbersicht".encode()
    assert image.filename == ""  # mail-parser would report the Content-ID here
    assert image.content_type == "image/png"
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert (image.content_id, image.inline) == ("pixel.1@example.com", True)


def test_nameless_attachment_gets_empty_filename_every_time() -> None:
    raw = (
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=X\n\n"
        b"--X\nContent-Type: text/plain\n\nbody\n"
        b"--X\nContent-Type: application/octet-stream\nContent-Disposition: attachment\n"
        b"Content-Transfer-Encoding: base64\n\nAAEC\n--X--\n"
    )
    first, second = parse(raw), parse(raw)
    assert first == second
    assert first.attachments[0].filename == ""
    assert first.attachments[0].content == b"\x00\x01\x02"


def test_damaged_base64_padding_still_decodes() -> None:
    raw = (
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=X\n\n"
        b"--X\nContent-Type: text/plain\n\nbody\n"
        b"--X\nContent-Type: application/octet-stream; name=x.bin\n"
        b"Content-Transfer-Encoding: base64\n\nAAECA\n--X--\n"
    )
    assert parse(raw).attachments[0].content == b"\x00\x01\x02"


def test_attached_message_is_kept_as_bytes() -> None:
    inner = EmailMessage()
    inner["From"] = "x@example.com"
    inner["Subject"] = "inner"
    inner.set_content("inner body")
    outer = EmailMessage()
    outer["From"] = "a@example.com"
    outer.set_content("see attached")
    outer.add_attachment(inner)
    (attachment,) = parse(outer.as_bytes()).attachments
    assert attachment.content_type == "message/rfc822"
    assert b"Subject: inner" in attachment.content


def test_large_attachment_parses() -> None:
    payload = os.urandom(5 * 1024 * 1024)
    message = EmailMessage()
    message["From"] = "a@example.com"
    message["Subject"] = "big"
    message.set_content("see attachment")
    message.add_attachment(payload, maintype="application", subtype="octet-stream", filename="big.bin")
    mail = parse(message.as_bytes())
    assert [a.filename for a in mail.attachments] == ["big.bin"]
    assert mail.attachments[0].content == payload


# --- bounces, lists, auto-replies -------------------------------------------------


def test_bounce_is_recognisable() -> None:
    mail = parse_file("bounce.eml")
    assert mail.content_type == "multipart/report"
    assert mail.return_path == ""
    assert mail.sender_email == "mailer-daemon@mx.example.test"
    assert "could not\nbe delivered" in mail.text


def test_return_path_absent_is_none() -> None:
    assert parse_file("alternative.eml").return_path is None


def test_list_and_auto_reply_headers_are_exposed() -> None:
    listed = parse_file("list.eml")
    assert listed.header("List-Id") == "Users discussion <users.lists.example.com>"
    assert listed.header("precedence") == "list"
    assert listed.header("list-unsubscribe") == (
        "<mailto:users-leave@lists.example.com>, <https://lists.example.com/unsubscribe/users>"
    )
    auto = parse_file("auto_reply.eml")
    assert auto.subject == "Out of office"
    assert auto.header("auto-submitted") == "auto-replied"


# --- what is and is not mail ------------------------------------------------------


def _deeply_nested() -> bytes:
    parts = [b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b0\n\n"]
    parts += [b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(3000)]
    return b"".join(parts)


@pytest.mark.parametrize(
    "raw",
    [b"", b"   \r\n\r\n", b"\x00\x01\x02 not mail", b"just some text\nwith: a colon later\n", _deeply_nested()],
    ids=["empty", "blank", "binary", "no-header-block", "nested-too-deep"],
)
def test_non_mail_raises_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError) as error:
        parse(raw)
    assert str(error.value)


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_parses_deterministically(name: str) -> None:
    assert parse_file(name) == parse_file(name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from([b"", b"From: a@example.com\n", b"Content-Type: multipart/mixed; boundary=z\n\n--z\n"]),
    noise=st.binary(max_size=400),
)
def test_arbitrary_bytes_only_ever_raise_parse_error(prefix: bytes, noise: bytes) -> None:
    try:
        mail = parse(prefix + noise)
    except ParseError:
        return
    assert isinstance(mail.text, str) and isinstance(mail.subject, str)
