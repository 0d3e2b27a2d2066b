"""IMAP intake against a real Dovecot: exactly once, after-processing actions, faults, TLS."""

from __future__ import annotations

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
