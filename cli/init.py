"""``maild init DIR``: set up a new site (config, rules, templates, its own secret)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from maild import scaffold


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite existing config, rule and template files.")
@click.option("--database-url", help="Database URL for the config (default: SQLite in DIR/var/maild.db), "
                                     "e.g. postgresql+psycopg://maild@db.example.test/maild.")
def command(directory: Path, force: bool, database_url: str | None) -> None:
    """Write a starter config.toml, rules/ and templates/ into DIRECTORY."""
    site = scaffold.init_site(directory.absolute(), force=force, database_url=database_url)
    key = "created" if site.key_created else "kept (it signs the Reply-To of mail already sent)"
    click.echo(f"wrote {site.config} and {len(site.files)} rule and template file(s) under {site.config.parent}")
    click.echo(f"reply-token key {site.key}: {key}")
    maild = f"maild --config {shlex.quote(str(site.config))}"
    click.echo("next steps:\n"
               f"  1. edit {site.config}: queues and their addresses, agents, [outgoing] (transport = \"smtp\")\n"
               f"  2. {maild} db upgrade\n"
               f"  3. {maild} rules check\n"
               f"  4. {maild} run        (as a service: deploy/maild.service, see README \"Deployment\")")
