"""Which stored message a new one is: only a true redelivery is a duplicate.

The same bytes, the same source key, or the same Message-ID with the same sender and body
(relays add headers and rewrite line ends). A different message under a stored Message-ID
(broken clients, list software, forgeries reuse them) is kept as a message of its own:
stored without the Message-ID, which stays the stored one's key, and pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from conftest import Env, mail
from maild import inbound
from maild.app import App
from maild.db import transaction
from maild.inbound import Stored

MSGID = "<same@client.test>"


@pytest.fixture
def app(env: Env) -> Iterator[App]:
    app = env.app()
    try:
        yield app
    finally:
        app.close()


def add(app: App, raw: bytes) -> Stored:
    [stored] = inbound.add(app.factory, [app.registry.queue_id("support")], raw, source="inject",
                           now=datetime.now(timezone.utc))
    return stored


def relayed(raw: bytes, hop: str = "relay1") -> bytes:
    """``raw`` as another path delivers it: a Received header more, and LF line ends."""
    return (f"Received: from {hop}.example.test by mx.example.test; Mon, 23 Nov 2026 10:00:01 +0000\r\n".encode()
            + raw).replace(b"\r\n", b"\n")


def stored_rows(env: Env) -> list[tuple[int, str | None, int | None]]:
    return [tuple(r) for r in env.rows("SELECT id, message_id, collides_with FROM inbound_message ORDER BY id")]


ORIGINAL = mail(message_id=MSGID)


def test_the_same_bytes_are_a_duplicate(env: Env, app: App) -> None:
    first = add(app, ORIGINAL)
    assert add(app, ORIGINAL) == Stored(first.id, first.queue_id, duplicate=True)
    assert stored_rows(env) == [(first.id, MSGID, None)]


def test_the_same_message_by_another_path_is_a_duplicate(env: Env, app: App) -> None:
    """Other Received headers, other line ends, a trailing blank line: the same sender and body."""
    first = add(app, ORIGINAL)
    again = relayed(ORIGINAL).rstrip(b"\n") + b"  \n\n"
    assert again != ORIGINAL
    assert add(app, again) == Stored(first.id, first.queue_id, duplicate=True)
    assert stored_rows(env) == [(first.id, MSGID, None)]


@pytest.mark.parametrize("other", [
    mail(message_id=MSGID, sender="Mallory <mallory@elsewhere.test>"),
    mail(message_id=MSGID, body="A different question altogether.\n"),
], ids=["other-sender", "other-body"])
def test_a_different_message_under_a_stored_message_id_is_kept(env: Env, app: App, other: bytes) -> None:
    first = add(app, ORIGINAL)
    second = add(app, other)
    assert not second.duplicate and second.id != first.id
    assert stored_rows(env) == [(first.id, MSGID, None), (second.id, None, first.id)]
    # Its own redelivery is a duplicate of it; a third message under the ID is kept too.
    assert add(app, relayed(other, "relay2")) == Stored(second.id, second.queue_id, duplicate=True)
    third = add(app, mail(message_id=MSGID, body="And a third one.\n"))
    assert not third.duplicate
    assert stored_rows(env)[-1] == (third.id, None, first.id)


def test_a_fetched_chunk_with_one_message_id_twice_is_judged_the_same_way(env: Env, app: App) -> None:
    queue = app.registry.queue_id("support")
    stored = add(app, mail(message_id="<held@client.test>"))
    held_again = relayed(mail(message_id="<held@client.test>", sender="Other <o@x.test>"))
    redelivered = relayed(ORIGINAL)
    collider = mail(message_id=MSGID, sender="Mallory <mallory@elsewhere.test>")
    chunk = [(ORIGINAL, "INBOX/1/1"), (redelivered, "INBOX/1/2"), (collider, "INBOX/1/3"),
             (relayed(collider), "INBOX/1/4"), (held_again, "INBOX/1/5")]
    with transaction(app.factory) as session:
        duplicates = inbound.store_batch(session, queue, chunk, source="imap", now=datetime.now(timezone.utc),
                                         acked=True)
    assert duplicates == [False, True, False, True, False]
    rows = stored_rows(env)
    first, kept, other = rows[1][0], rows[2][0], rows[3][0]
    assert rows == [(stored.id, "<held@client.test>", None), (first, MSGID, None), (kept, None, first),
                    (other, None, stored.id)]


def test_inject_reports_a_colliding_message_stored_and_it_is_processed(env: Env) -> None:
    assert "duplicate" not in env.inject(ORIGINAL)
    output = env.inject(mail(message_id=MSGID, sender="Bob <bob@other.test>", subject="Not the same at all"))
    assert "stored as inbound 2 in queue support" in output and "duplicate" not in output
    assert "(duplicate, already stored)" in env.inject(relayed(ORIGINAL))

    shown = env.json("inbound", "show", "2")
    assert shown["message_id"] == MSGID
    assert shown["collision"] == "Message-ID collides with inbound 1: kept as a message of its own"
    assert "collides with inbound 1" in env.ok("inbound", "show", "2")
    assert "collision" not in env.json("inbound", "show", "1")

    env.ok("run", "--once")
    assert [r["state"] for r in env.json("inbound", "list")] == ["processed", "processed"]
    assert len(env.json("cases", "list")) == 2, "a message of its own: a case of its own"
