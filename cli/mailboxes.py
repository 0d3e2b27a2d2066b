"""``maild mailboxes``: the IMAP mailboxes behind the queues, their state, and a live check."""

from __future__ import annotations

import click

from maild import views
from maild.cli.state import State, pass_state, print_rows
from maild.db import transaction


@click.group("mailboxes")
def command() -> None:
    """Inspect and check the IMAP mailboxes that feed the queues."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, as_json: bool) -> None:
    """Each mailbox with its last successful poll, backlog and last error."""
    with transaction(state.app.factory) as session:
        rows = views.list_mailboxes(session, state.app.config)
    print_rows(rows, ["queue", "mailbox", "status", "last_success", "backlog", "last_error", "owner"],
               "no IMAP mailboxes are configured", as_json)


@command.command("check")
@click.option("--queue", help="Only this queue's mailbox.")
@pass_state
def check(state: State, queue: str | None) -> None:
    """Connect, log in and select each mailbox now; exit 1 if any fails."""
    from maild.intake.imap import MailboxError, check as check_mailbox  # imapclient: only here

    mailboxes = {n: q.imap for n, q in state.app.config.queues.items() if q.imap and (queue in (None, n))}
    if not mailboxes:
        raise click.UsageError(f"no IMAP mailbox configured{' for queue ' + queue if queue else ''}")
    failed = 0
    for name, cfg in mailboxes.items():
        try:
            info = check_mailbox(cfg)
        except MailboxError as exc:
            failed += 1
            click.echo(f"{name}: FAILED: {exc}")
            continue
        extras = ", ".join(f for f in ("IDLE", "MOVE") if info[f.lower()])
        click.echo(f"{name}: ok: {cfg.user}@{cfg.host}:{cfg.effective_port} {cfg.folder}: {info['messages']} "
                   f"message(s), UIDVALIDITY {info['uidvalidity']}{', ' + extras if extras else ''}")
    if failed:
        raise click.exceptions.Exit(1)
