"""``maild inject``: store one message from an MTA pipe (exit codes follow sysexits.h)."""

from __future__ import annotations

import os
import sys

from collections.abc import Mapping

import click

from maild import inbound
from maild.cli.state import State, pass_state
from maild.errors import ConfigError, SchemaOutOfDate, TemporaryFailure, UnknownQueue
from maild.intake.inject import EX_CONFIG, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, choose_queue
from maild import db


def _fail(message: str, code: int) -> None:
    click.echo(f"maild inject: {message}", err=True)
    sys.exit(code)


def envelope_sender(option: str | None, environ: Mapping[str, str]) -> str | None:
    """The envelope sender given (-f, else $SENDER), "" for the null sender, None if neither.

    Postfix's pipe(8) writes the null sender as MAILER-DAEMON unless the transport sets
    null_sender=; an address without an @ can be nothing else."""
    value = option if option is not None else environ.get("SENDER")
    if value is None:
        return None
    value = value.strip().strip("<>").strip()
    return value if "@" in value else ""


@click.command("inject")
@click.option("--queue", "-q", help="Queue name; default: from the recipient addresses.")
@click.option("--sender", "-f", metavar="ADDRESS",
              help="The envelope sender, as sendmail's -f (Postfix: -f ${sender}); default: $SENDER. "
                   "'<>', '' or MAILER-DAEMON is the null sender: no automatic answer goes back.")
@click.argument("source", type=click.File("rb"), default="-")
@pass_state
def command(state: State, queue: str | None, sender: str | None, source: click.utils.LazyFile) -> None:
    """Store a message read from FILE (or standard input) for processing.

    Exits 0 only after the message is committed to the database; 75 (EX_TEMPFAIL) when
    the database is busy or unreachable, so the MTA keeps the message and retries; 65
    (EX_DATAERR) for an empty message, 67 (EX_NOUSER) for an unknown queue, 78 (EX_CONFIG)
    for a bad config file (see the README for the full list).
    """
    raw = source.read()
    if not raw.strip():
        _fail("empty message", EX_DATAERR)
    try:
        app = state.app
        db.check_schema(app.engine)
        name = choose_queue(app.config, raw, queue, os.environ)
        stored = inbound.add(app.factory, [app.registry.queue_id(name)], raw, source="inject",
                             now=app.clock(), envelope_from=envelope_sender(sender, os.environ))
    except ConfigError as exc:
        _fail(str(exc), EX_CONFIG)
    except UnknownQueue as exc:
        _fail(str(exc), EX_NOUSER)
    except (TemporaryFailure, SchemaOutOfDate) as exc:
        # An out-of-date schema is the admin's to fix; the MTA should hold the mail meanwhile.
        _fail(f"{exc} (temporary failure; the MTA will retry)", EX_TEMPFAIL)
    except Exception as exc:  # nothing may be lost: any surprise means "try again later"
        _fail(f"unexpected error, message not stored: {type(exc).__name__}: {exc}", EX_TEMPFAIL)
    else:
        s = stored[0]
        click.echo(f"stored as inbound {s.id} in queue {name}{' (duplicate, already stored)' if s.duplicate else ''}")
