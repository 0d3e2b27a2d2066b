"""``maild kb``: the knowledge base: write, publish, search and send articles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from maild.cli.state import State, actor, pass_state, print_json, print_rows, print_table
from maild.db import transaction

if TYPE_CHECKING:
    from maild.knowledge import Text


@click.group("kb")
def command() -> None:
    """Knowledge articles: versions, search, sending them to customers."""


def _text(title: str | None, body: str | None, body_file: Path | None, keywords: str | None, subject: str | None,
          language: str | None) -> Text:
    from maild import knowledge

    if body is not None and body_file is not None:
        raise click.UsageError("give --body or --body-file, not both")
    if body_file is not None:
        body = body_file.read_text(encoding="utf-8")
    return knowledge.Text(title=title, body=body, keywords=keywords, subject=subject, language=language)


_TEXT_OPTIONS = [
    click.option("--body", help="The article text (Markdown)."),
    click.option("--body-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="Read the article text (Markdown) from this file."),
    click.option("--keywords", help="Comma-separated keywords."),
    click.option("--subject", help="A subject path, e.g. \"Billing > Invoice\" (see `maild subjects list`)."),
    click.option("--language", help="The article's language, e.g. en."),
]


def text_options(f):  # type: ignore[no-untyped-def]
    for option in reversed(_TEXT_OPTIONS):
        f = option(f)
    return f


@command.command("add")
@click.option("--title", required=True, help="The article's title.")
@text_options
@pass_state
def add(state: State, title: str, body: str | None, body_file: Path | None, keywords: str | None,
        subject: str | None, language: str | None) -> None:
    """Write a new draft article."""
    from maild import knowledge

    t = _text(title, body, body_file, keywords, subject, language)
    state.app.prepare()  # the subject tree comes from the rule files
    with transaction(state.app.factory) as session:
        art = knowledge.add(session, t, author=actor(), now=state.app.clock())
        click.echo(f"article {art.number} added as a draft (`maild kb publish {art.number}` to publish it)")


@command.command("edit")
@click.argument("number", type=int)
@click.option("--title", help="A new title.")
@text_options
@pass_state
def edit(state: State, number: int, title: str | None, body: str | None, body_file: Path | None,
         keywords: str | None, subject: str | None, language: str | None) -> None:
    """Change an article; a published one keeps its old version and gets a new one."""
    from maild import knowledge

    t = _text(title, body, body_file, keywords, subject, language)
    state.app.prepare()
    with transaction(state.app.factory) as session:
        click.echo(knowledge.edit(session, knowledge.article(session, number, lock=True), t, author=actor(),
                                  now=state.app.clock()))


def _set_state(state: State, number: int, to: str) -> None:
    from maild import knowledge

    with transaction(state.app.factory) as session:
        click.echo(knowledge.set_state(session, knowledge.article(session, number, lock=True), to,
                                       now=state.app.clock()))


@command.command("publish")
@click.argument("number", type=int)
@pass_state
def publish(state: State, number: int) -> None:
    """Publish an article: search finds it, and it can be sent."""
    _set_state(state, number, "published")


@command.command("archive")
@click.argument("number", type=int)
@pass_state
def archive(state: State, number: int) -> None:
    """Archive an article: search no longer finds it, and it can no longer be sent."""
    _set_state(state, number, "archived")


@command.command("rate")
@click.argument("number", type=int)
@click.option("--helpful/--not-helpful", required=True, help="Did the article help?")
@pass_state
def rate(state: State, number: int, helpful: bool) -> None:
    """Record a helpful (or unhelpful) rating; ratings weigh in the search ranking."""
    from maild import knowledge

    with transaction(state.app.factory) as session:
        click.echo(knowledge.rate(session, knowledge.article(session, number, lock=True), helpful))


@command.command("list")
@click.option("--state", "only", type=click.Choice(["draft", "published", "archived"]), help="Only this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, only: str | None, as_json: bool) -> None:
    """List the articles."""
    from maild import knowledge

    with transaction(state.app.factory) as session:
        rows = knowledge.listing(session, only)
    print_rows(rows, ["number", "state", "version", "title", "keywords", "subject", "updated_at"],
               "no articles", as_json)


@command.command("show")
@click.argument("number", type=int)
@click.option("--version", type=int, help="An older version (default: the current one).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def show(state: State, number: int, version: int | None, as_json: bool) -> None:
    """Show an article (its current version, or --version N)."""
    from maild import knowledge

    with transaction(state.app.factory) as session:
        view = knowledge.view(session, knowledge.article(session, number), version)
    if as_json:
        print_json(view)
        return
    click.echo(f"article {view['number']} ({view['state']}), version {view['version']} of {view['current_version']}"
               f" by {view['author']} at {view['version_created_at']}")
    for key in ("title", "keywords", "subject", "language"):
        if view[key]:
            click.echo(f"{key + ':':<10} {view[key]}")
    click.echo(f"usage:     linked {view['times_linked']}, sent {view['times_sent']}, "
               f"resolved {view['times_resolved']}, helpful {view['helpful_yes']}/{view['helpful_no']}")
    click.echo("")
    click.echo(view["body"].rstrip())


@command.command("search")
@click.argument("query")
@click.option("--limit", default=10, show_default=True)
@click.option("--all-states", is_flag=True, help="Search drafts and archived articles too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def search(state: State, query: str, limit: int, all_states: bool, as_json: bool) -> None:
    """Full-text search of the published articles, best first."""
    from maild import knowledge

    with transaction(state.app.factory) as session:
        rows = [{k: v for k, v in row.items() if k != "id"}  # the database's id is nobody's business
                for row in knowledge.search(session, query, limit=limit, state=None if all_states else "published")]
    print_rows(rows, ["number", "title", "keywords", "score", "times_resolved"], "no matching articles", as_json)


@command.command("send")
@click.argument("number", type=int)
@click.option("--case", "reference", required=True, help="The case whose customer gets the article.")
@pass_state
def send(state: State, number: int, reference: str) -> None:
    """Mail a published article to a case's customer and link it to the case."""
    from maild import knowledge

    state.change(reference, lambda s, ctx, case, now: knowledge.send(s, ctx, case, number, actor=actor(), now=now))


@command.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@pass_state
def import_(state: State, directory: Path) -> None:
    """Import Markdown files with front matter (title, id, keywords, subject, language, state);
    a second run updates the same articles."""
    from rich.progress import Progress

    from maild import knowledge

    app = state.app
    app.prepare()
    total = sum(1 for _ in directory.rglob("*.md"))
    with Progress(transient=True) as bar:
        task = bar.add_task("importing", total=total)
        results = knowledge.import_dir(app.factory, directory, author=actor(), now=app.clock,
                                       progress=lambda _path: bar.advance(task))
    counts = {k: sum(1 for r in results if r.outcome == k) for k in ("created", "updated", "unchanged", "error")}
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items()))
    errors = [r for r in results if r.error]
    for r in errors:
        click.echo(f"maild: {r.error}", err=True)
    if errors:
        raise click.exceptions.Exit(1)


@command.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def stats(state: State, as_json: bool) -> None:
    """Which articles are linked, sent and resolve cases; which subjects have no published article."""
    from maild import knowledge

    state.app.prepare()
    with transaction(state.app.factory) as session:
        data = knowledge.stats(session)
    if as_json:
        print_json(data)
        return
    print_table(data["articles"], ["number", "state", "title", "linked", "sent", "resolved", "helpful_yes",
                                   "helpful_no"], "no articles")
    gaps = data["subjects_without_articles"]
    click.echo(f"\nsubjects without a published article: {', '.join(gaps) if gaps else 'none'}")
