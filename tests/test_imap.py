"""IMAP intake against a real Dovecot: exactly once, after-processing actions, faults, TLS."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from conftest import Env, Mailbox, mail


def _cases(env: Env) -> list[dict]:  # type: ignore[type-arg]
    return env.json("cases", "list")  # type: ignore[no-any-return]


def test_poll_stores_moves_and_creates_cases(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra=mailbox.toml())
    mailbox.append(*(mail(subject=f"imap {i}", sender=f"c{i}@customer.test") for i in range(3)))
    assert "processed 3 inbound" in env.ok("run", "--once")
    assert sorted(c["title"] for c in _cases(env)) == ["imap 0", "imap 1", "imap 2"]
    assert len(env.peer.wait_for(3)) == 3
    assert mailbox.uids("INBOX") == {}
    moved = mailbox.uids("Processed")
    assert len(moved) == 3
    assert all(b"\\Seen" not in flags for flags in moved.values()), "BODY.PEEK[] must not mark mail read"
    # A second run finds nothing new and creates nothing.
    assert "processed 0 inbound" in env.ok("run", "--once")
    [box] = env.json("mailboxes", "list")
    assert box["status"] == "ok" and box["backlog"] == 0 and box["last_success"]


def test_seen_mode_flags_and_leaves_messages(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra=mailbox.toml(after="seen"))
    mailbox.append(mail(subject="one"), mail(subject="two"))
    env.ok("run", "--once")
    flags = mailbox.uids("INBOX")
    assert len(flags) == 2 and all(b"\\Seen" in f for f in flags.values())
    mailbox.append(mail(subject="three"))
    env.ok("run", "--once")
    assert len(_cases(env)) == 3


def test_delete_mode_removes_only_what_was_stored(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra=mailbox.toml(after="delete"))
    mailbox.append(mail(subject="gone"))
    env.ok("run", "--once")
    assert mailbox.uids("INBOX") == {}
    assert len(_cases(env)) == 1


def test_changed_uidvalidity_does_not_reimport(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra=mailbox.toml(folder="Support", after="seen"))
    old = [mail(subject=f"old {i}") for i in range(3)]
    mailbox.append(*old, folder="Support")
    env.ok("run", "--once")
    assert len(_cases(env)) == 3
    # The server rebuilds the folder: same messages, new UIDVALIDITY, plus one new message.
    client = mailbox.client()
    client.delete_folder("Support")
    client.logout()
    mailbox.append(*old, mail(subject="new"), folder="Support")
    env.ok("run", "--once")
    assert sorted(c["title"] for c in _cases(env)) == ["new", "old 0", "old 1", "old 2"]
    assert all(b"\\Seen" in f for f in mailbox.uids("Support").values())


def test_after_action_lost_in_a_crash_is_finished_on_the_next_poll(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra=mailbox.toml())
    mailbox.append(mail(subject="stored but not moved"))
    env.ok("run", "--once")
    # Rewind to the moment after the commit and before the MOVE: the message is back in the
    # INBOX under a new UID, and the row says the server was never told.
    client = mailbox.client()
    client.select_folder("Processed")
    client.move(client.search(), "INBOX")
    client.logout()
    with env.engine().begin() as conn:
        conn.execute(sa.text("UPDATE inbound_message SET source_acked = false"))
    env.ok("run", "--once")
    assert len(_cases(env)) == 1, "recognised as already stored"
    assert mailbox.uids("INBOX") == {}


def test_a_lost_record_of_the_after_action_only_repeats_the_action(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    """The record that a message was moved commits lazily, so a power cut can take it after
    the move: the next poll moves a UID the folder no longer holds, which the server ignores."""
    env: Env = make_env(extra=mailbox.toml())
    mailbox.append(mail(subject="moved, record lost"))
    env.ok("run", "--once")
    with env.engine().begin() as conn:
        conn.execute(sa.text("UPDATE inbound_message SET source_acked = false"))
    assert "processed 0 inbound" in env.ok("run", "--once")
    assert len(_cases(env)) == 1
    assert mailbox.uids("INBOX") == {} and len(mailbox.uids("Processed")) == 1
    assert env.count("SELECT count(*) FROM inbound_message WHERE NOT source_acked") == 0
    [box] = env.json("mailboxes", "list")
    assert box["status"] == "ok" and not box["last_error"]


def test_login_failure_is_reported_and_other_mailboxes_keep_working(make_env, mailbox: Mailbox,
                                                                   dovecot_server) -> None:  # type: ignore[no-untyped-def]
    from conftest import fresh_mailbox

    good = fresh_mailbox(dovecot_server)
    env: Env = make_env(extra=mailbox.toml(password="wrong") + good.toml(queue="billing"))
    good.append(mail(subject="for billing", to="billing@example.test"))
    result = env.maild("run", "--once")
    assert result.returncode == 0, result.stderr
    assert b"login as" in result.stderr and b"failed" in result.stderr and b"Traceback" not in result.stderr
    assert [c["queue"] for c in _cases(env)] == ["billing"]
    boxes = {b["queue"]: b for b in env.json("mailboxes", "list")}
    assert boxes["support"]["status"] == "failing" and "login" in boxes["support"]["last_error"]
    assert boxes["billing"]["status"] == "ok"
    check = env.maild("mailboxes", "check")
    assert check.returncode == 1
    assert b"support: FAILED: login as" in check.stdout and b"billing: ok" in check.stdout


def test_check_succeeds_over_starttls_and_ssl_with_a_ca_file(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    server = mailbox.server
    extra = (mailbox.toml(security="starttls", ca_file=str(server.ca_file))
             + mailbox.toml(queue="billing", security="ssl", port=server.tls_port, ca_file=str(server.ca_file)))
    env: Env = make_env(extra=extra)
    check = env.maild("mailboxes", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert b"support: ok" in check.stdout and b"billing: ok" in check.stdout and b"IDLE" in check.stdout
    mailbox.append(mail(subject="over tls"))
    env.ok("run", "--once")
    assert len(_cases(env)) == 1


def test_untrusted_certificate_fails_the_check(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra=mailbox.toml(security="ssl", port=mailbox.server.tls_port))
    check = env.maild("mailboxes", "check")
    assert check.returncode == 1 and b"CERTIFICATE_VERIFY_FAILED" in check.stdout


def test_oauth2_token_command_prints_the_access_token() -> None:
    import pytest

    from maild.errors import ConfigError
    from maild.intake.imap import oauth2_token

    assert oauth2_token("printf 'ya29.token-123\\nignored\\n'") == "ya29.token-123"
    with pytest.raises(ConfigError, match="token_command exited 3 without a token: expired"):
        oauth2_token("sh -c 'echo expired >&2; exit 3'")
    with pytest.raises(ConfigError, match="exited 0 without a token"):
        oauth2_token("true")
    with pytest.raises(ConfigError, match="token_command failed"):
        oauth2_token("/nonexistent/oauth-helper")


def test_a_poll_hands_each_chunk_over_once_it_is_stored_and_moved(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    from maild.daemon import make_pollers
    from maild.models import InboundMessage

    env: Env = make_env(extra=mailbox.toml(batch=3))
    mailbox.append(*(mail(subject=f"chunk {i}") for i in range(7)))
    app = env.app()
    seen: list[tuple[int, int, int]] = []

    def between(count: int) -> None:  # new messages, stored rows, left in the INBOX
        with app.factory() as session:
            stored = session.scalar(sa.select(sa.func.count()).select_from(InboundMessage))
        seen.append((count, int(stored or 0), len(mailbox.uids("INBOX"))))

    [poller] = make_pollers(app)
    try:
        assert poller.run_once(between_chunks=between) == 7
    finally:
        poller.close()
        app.close()
    assert seen == [(3, 3, 4), (3, 6, 1), (1, 7, 0)]


def test_a_failure_between_chunks_is_not_the_mailbox_s(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    # What runs between chunks (run --once writing cases) is outside the poll's error
    # handling: a disk error there must reach the caller, not mark the mailbox as failing.
    from maild.daemon import make_pollers

    env: Env = make_env(extra=mailbox.toml(batch=2))
    mailbox.append(*(mail(subject=f"chunk {i}") for i in range(4)))
    app = env.app()

    def broken(count: int) -> None:
        raise OSError("No space left on device")

    [poller] = make_pollers(app)
    try:
        with pytest.raises(OSError, match="No space left"):
            poller.run_once(between_chunks=broken)
        assert poller.failures == 0
    finally:
        poller.close()
        app.close()
    [box] = env.json("mailboxes", "list")
    assert box["status"] != "failing" and not box["last_error"]
    assert len(mailbox.uids("INBOX")) == 2, "the first chunk was stored and moved; the next poll takes the rest"
    assert "processed 4 inbound" in env.ok("run", "--once")


def test_run_once_writes_cases_while_the_mailbox_is_still_being_fetched(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    # Polling a whole mailbox before writing any of it left the parse worker idle during
    # the poll. The first cases are written, a batch behind the poll, before its last chunk.
    from maild.daemon import run_once
    from maild.models import InboundMessage
    from maild.transport import MemoryTransport

    env: Env = make_env(extra=mailbox.toml(batch=5))
    env.config.write_text(env.config.read_text().replace("[intake]\n", "[intake]\nbatch = 5\n", 1))
    mailbox.append(*(mail(subject=f"behind {i}", sender=f"c{i}@customer.test") for i in range(30)))
    app = env.app()
    try:
        assert run_once(app, MemoryTransport()) == (30, 30)
        with app.factory() as session:
            rows = session.execute(sa.select(InboundMessage.received_at, InboundMessage.processed_at)).all()
    finally:
        app.close()
    last_stored = max(received for received, _ in rows)
    assert all(processed is not None for _, processed in rows)
    assert sum(1 for _, processed in rows if processed < last_stored) >= 15
    assert len(_cases(env)) == 30
