"""``maild run``: the daemon, or one pass of all pending work with ``--once``."""

from __future__ import annotations

import click

from maild import logs
from maild.cli.state import State, pass_state


@click.command("run")
@click.option("--once", is_flag=True, help="Process everything pending, send the outbox, and exit.")
@pass_state
def command(state: State, once: bool) -> None:
    """Run maild: listen for mail, turn it into cases, and send what is due."""
    from maild.daemon import Daemon, run_once  # the runners and the SMTP server: only `run` needs them

    app = state.app
    logs.setup(app.config.logging)
    app.lock_single_process()
    app.prepare()
    if once:
        processed, sent = run_once(app)
        click.echo(f"processed {processed} inbound message(s), sent {sent} outgoing message(s)")
        return
    Daemon(app).serve_forever()
