"""The Message-ID the inbound store records, read from the header block without the email
package's parser where the block is plain: always what that parser would have given."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maild import inbound
from maild.inbound import header_message_id, parsed_message_id
from maild.msgids import normalise_message_id

MAIL_DIR = Path(__file__).parent / "data" / "mail"


def by_the_email_package(raw: bytes) -> str | None:
    """header_message_id as it was: the email package's parse of the header block, which
    ended at the first match of the old pattern."""
    end = re.search(rb"\r?\n\r?\n", raw)
    value = parsed_message_id(raw[:end.end()] if end else raw)
    return normalise_message_id(value) if value else None


@pytest.mark.parametrize("name", sorted(path.name for path in MAIL_DIR.glob("*.eml")))
def test_the_corpus_gets_the_email_package_s_message_id(name: str) -> None:
    raw = (MAIL_DIR / name).read_bytes()
    assert header_message_id(raw) == by_the_email_package(raw)
    assert header_message_id(raw.replace(b"\r\n", b"\n")) == by_the_email_package(raw.replace(b"\r\n", b"\n"))


LINES = [
    b"Message-ID: <a@x.test>", b"Message-Id:<b@x.test>", b"message-id:   <c@x.test>", b"Message-ID :<d@x.test>",
    b"MESSAGE-ID: <e@x.test> (comment)", b"Message-ID:", b"Message-ID: <f@x", b" .test>", b"\t<g@x.test>", b" ",
    b"Received: from a by b; Mon, 23 Nov 2026 10:00:00 +0000", b"Subject: hello", b"X-Empty:", b": no name",
    b"no colon here", b"From someone@x.test Mon Nov 23 10:00:00 2026", b"Subject: caf\xc3\xa9",
    b"Message-ID: <h\xc3\xa9@x.test>", b"", b"Message-ID: <i@x.test>\rX-Lone: cr",
]


@settings(max_examples=500)
@given(st.lists(st.sampled_from(LINES), max_size=8), st.sampled_from([b"\r\n", b"\n"]), st.booleans())
def test_any_header_block_gets_the_email_package_s_message_id(lines: list[bytes], ending: bytes, body: bool) -> None:
    raw = ending.join(lines) + (ending + ending + b"the body\r\n<j@x.test>" if body else b"")
    assert header_message_id(raw) == by_the_email_package(raw)


def test_a_plain_header_block_is_read_without_the_email_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # The point of the plain reading: real mail, a dozen Received lines and folds included,
    # never goes through the parser.
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the email package's parser ran")

    monkeypatch.setattr(inbound, "BytesHeaderParser", refuse)
    received = b"".join(b"Received: from relay%d.x.test (relay%d.x.test [192.0.2.%d])\r\n\tby mx.x.test with ESMTPS;\r\n"
                        b"\tMon, 23 Nov 2026 10:00:0%d +0000\r\n" % (i, i, i, i) for i in range(9))
    raw = received + b"From: Jane <jane@x.test>\r\nMessage-ID:\r\n <k@x.test>\r\nSubject: hi\r\n\r\nbody\r\n"
    assert header_message_id(raw) == "<k@x.test>"
    assert header_message_id(b"Subject: none\r\n\r\nMessage-ID: <in-the-body@x.test>\r\n") is None
