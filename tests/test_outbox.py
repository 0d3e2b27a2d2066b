"""The outgoing composer: well-formed MIME on the wire, and no way for customer input to add headers."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.policy import default

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maild import outbox
from maild.outbox import Draft, FileAttachment, as_bytes, compose, message_bytes, one_line

NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)


def draft(**changes: object) -> Draft:
    fields: dict[str, object] = dict(
        kind="acknowledgement", from_name="Example Support", from_addr="support@example.test",
        to_name="J\u00fcrgen M\u00fcller", to_addr="jm@customer.test", subject="Re: Drucker kaputt \u2014 gro\u00dfes Problem",
        text="Hello J\u00fcrgen,\n\nwe have your message.\n" + "x" * 1200 + "\n", html="<p>Hello</p>",
        reply_to="support+CAS-1.abc@example.test", in_reply_to="<q@customer.test>",
        references=("<p@customer.test>", "<q@customer.test>"), auto_submitted=True,
    )
    fields.update(changes)
    return Draft(**fields)  # type: ignore[arg-type]


def wire(d: Draft) -> bytes:
    return message_bytes(d, "<m1@example.test>", NOW)


def test_the_message_reads_back_as_written() -> None:
    raw = wire(draft(attachments=(FileAttachment("r\u00e4port.pdf", "application/pdf", b"%PDF-1.4 data"),)))
    msg = email.message_from_bytes(raw, policy=default)
    assert msg["From"].addresses[0].display_name == "Example Support"
    assert msg["To"].addresses[0].display_name == "J\u00fcrgen M\u00fcller"
    assert msg["To"].addresses[0].addr_spec == "jm@customer.test"
    assert msg["Reply-To"].addresses[0].addr_spec == "support+CAS-1.abc@example.test"
    assert msg["Subject"] == "Re: Drucker kaputt \u2014 gro\u00dfes Problem"
    assert msg["Message-ID"] == "<m1@example.test>"
    assert msg["In-Reply-To"] == "<q@customer.test>"
    assert msg["References"] == "<p@customer.test> <q@customer.test>"
    assert msg["Auto-Submitted"] == "auto-replied" and msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Date"].datetime == NOW
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == draft().text
    assert msg.get_body(("html",)).get_content().strip() == "<p>Hello</p>"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "r\u00e4port.pdf"
    assert attachment.get_content() == b"%PDF-1.4 data"
    assert not msg.defects


def test_lines_end_in_crlf_and_stay_short() -> None:
    raw = wire(draft())
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert raw.isascii()


def test_plain_text_alone_is_a_single_part() -> None:
    msg = email.message_from_bytes(wire(draft(html=None, auto_submitted=False)), policy=default)
    assert msg.get_content_type() == "text/plain"
    assert msg["Auto-Submitted"] is None


def test_customer_text_cannot_start_a_header() -> None:
    raw = wire(draft(subject="hi\r\nBcc: victim@evil.test", to_name="Eve\nX-Evil: 1"))
    headers = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert not any(line.startswith((b"Bcc:", b"X-Evil:")) for line in headers)
    msg = email.message_from_bytes(raw, policy=default)
    assert msg["Subject"] == "hi Bcc: victim@evil.test"


@pytest.mark.parametrize(("value", "line"), [
    ("hi\r\nBcc: victim@evil.test", "hi Bcc: victim@evil.test"),
    ("\t tabs\tand  runs \n", "tabs and runs"),
    ("no\x00nul\x07bell\x1bescape", "nonulbellescape"),  # control characters are dropped, not spaced
    ("vertical\x0btab\x0cfeed\x1cseparators\x1f", "verticaltabfeedseparators"),
    ("Jörg €\u00a0Zoë\x7f", "Jörg € Zoë\x7f"),  # text above space is kept (a no-break space is whitespace)
    ("", ""),
])
def test_one_line_collapses_whitespace_and_drops_control_characters(value: str, line: str) -> None:
    assert one_line(value) == line


@pytest.mark.parametrize("address", ["a b@customer.test", "x@y.test\r\nBcc: z@evil.test", "<x@y.test>",
                                     "j\u00f6rg@customer.test", "no-at-sign"])
def test_an_address_that_cannot_be_written_safely_is_refused(address: str) -> None:
    with pytest.raises(ValueError):
        wire(draft(to_addr=address))


@pytest.mark.parametrize("address", [
    "support+CAS-01234-AB12CD.abcdefghjk@example.test", "o'brien.smith@mail.customer.test", "x@a-b.test",
    "a..b@customer.test", ".a@customer.test", "a@localhost", "a@x_y.test", "\"quoted\"@customer.test",
])
def test_a_bare_address_is_written_as_the_email_package_writes_it(address: str) -> None:
    """Plain addresses (a signed Reply-To) skip the email package's parser; what is written
    must be what it writes, and what it refuses still raises."""
    from maild.outbox import _address, _checked_address

    try:
        expected = _checked_address("", address)
    except ValueError:
        with pytest.raises(ValueError):
            _address("", address)
    else:
        assert _address("", address) == expected


@pytest.mark.parametrize("changes", [
    {}, {"html": None}, {"subject": "Re: " + "a fairly long plain subject line " * 4},
    {"subject": "ASCII only", "to_name": "Plain Name", "references": tuple(f"<r{i}@x.test>" for i in range(30))},
    {"subject": "  spaced  ", "attachments": (FileAttachment("notes.txt", "text/plain", b"=_ hello\n" * 50),)},
])
def test_headers_are_written_as_compat32_writes_them(changes: dict[str, object]) -> None:
    """maild's wire policy writes short ASCII headers without compat32's Header.encode; the
    bytes must be the ones compat32 itself writes."""
    from email.policy import compat32

    msg = compose(draft(**changes), "<m1@example.test>", NOW)
    assert as_bytes(msg) == msg.as_bytes(policy=compat32.clone(linesep="\r\n"))


def test_multipart_boundaries_are_fresh_and_absent_from_the_parts() -> None:
    attachment = FileAttachment("data.bin", "application/octet-stream", bytes(range(256)) * 20)
    raws = [wire(draft(attachments=(attachment,))) for _ in range(2)]
    boundaries = [email.message_from_bytes(raw).get_boundary() for raw in raws]
    assert boundaries[0] != boundaries[1], "a new boundary for every message"
    for raw, boundary in zip(raws, boundaries):
        assert boundary is not None and raw.count(boundary.encode()) == 4, \
            "in its header, before each of the two parts and at the end: nowhere else"
        parsed = email.message_from_bytes(raw, policy=default)
        assert [p.get_content_type() for p in parsed.walk()] == [
            "multipart/mixed", "multipart/alternative", "text/plain", "text/html", "application/octet-stream"]


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)  # what a template can render
_LINES = st.lists(st.sampled_from(["", "From here", "a=b", "tab\there ", "\u00fcber", "x" * 90, ".", "\r", " "]),
                  max_size=8).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT | _LINES, html=st.none() | _TEXT | _LINES, subject=_TEXT, to_name=_TEXT,
       from_name=st.sampled_from(["Example Support", "Soporte T\u00e9cnico", ""]),
       reply_to=st.none() | st.just("support+CAS-1.abc@example.test"),
       in_reply_to=st.none() | st.just("<q@customer.test>"),
       references=st.lists(st.sampled_from(["<p@customer.test>", "", "<r" + "9" * 80 + "@x.test>"]), max_size=25),
       auto_submitted=st.booleans())
def test_written_directly_as_the_email_package_writes_it(text: str, html: str | None, subject: str, to_name: str,
                                                         from_name: str, reply_to: str | None,
                                                         in_reply_to: str | None, references: list[str],
                                                         auto_submitted: bool) -> None:
    """A message without attachments is written without the email package's objects; its
    bytes must be exactly those that composing it with them writes."""
    d = draft(text=text, html=html, subject=subject, to_name=to_name, from_name=from_name, reply_to=reply_to,
              in_reply_to=in_reply_to, references=tuple(references), auto_submitted=auto_submitted)
    boundaries = iter(["=_" + "0123456789abcdef" * 2] * 2)
    original = outbox._boundary
    outbox._boundary = lambda: next(boundaries)  # the same boundary for both (hypothesis forbids monkeypatch)
    try:
        assert message_bytes(d, "<m1@example.test>", NOW) == as_bytes(compose(d, "<m1@example.test>", NOW))
    finally:
        outbox._boundary = original
