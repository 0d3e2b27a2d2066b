"""Where PostgreSQL's CPU goes, statement by statement, for writing cases and sending their mail.

bench/writer.py's run (the corpus stored, claimed and parsed untimed, then
``IntakeRunner.process_batch`` batch by batch), then bench/dispatch.py's (every queued
acknowledgement sent to a Maildir), on a fresh PostgreSQL schema. Around each statement
and each COMMIT it reads the server process's CPU time from ``/proc/<pid>/schedstat``
(nanoseconds; ``/proc/<pid>/stat`` counts in 10 ms ticks, too coarse for one statement), so
the server must run on this host. Prints the statements by the server CPU they took. No
pg_stat_statements needed (it needs a server restart to load).

    .venv/bin/python bench/pgcost.py [--messages 1000] [--top 25] [--lazy-commits]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

``--lazy-commits`` is an experiment, not a way to run maild: every connection commits with
``synchronous_commit = off``, durable commits included, to show what durability costs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import intake as bench_intake  # noqa: E402  (its corpus and throw-away installation)
import writer  # noqa: E402  (bench/writer.py: the installation and batches it shares)


def server_ns(conn: Any) -> int:
    """The CPU time so far of the server process behind ``conn`` (a psycopg connection, or
    the pool's proxy of one)."""
    pid = getattr(conn, "dbapi_connection", conn).info.backend_pid
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


class Costs:
    """Server nanoseconds and count by statement (its first 80 characters) and for COMMIT."""

    def __init__(self) -> None:
        self.by_statement: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, key: str, ns: int) -> None:
        entry = self.by_statement[key]
        entry[0] += 1
        entry[1] += ns

    def watch(self, engine: Any) -> None:
        from sqlalchemy import event

        def before(conn: Any, *_args: Any) -> None:
            conn.info["maild.bench.ns"] = server_ns(conn.connection)

        def after(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            started = conn.info.pop("maild.bench.ns")
            self.add(" ".join(statement.split())[:80], server_ns(conn.connection) - started)

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        do_commit: Callable[[Any], None] = engine.dialect.do_commit

        def timed_commit(dbapi_conn: Any) -> None:  # this engine's dialect only
            started = server_ns(dbapi_conn)
            do_commit(dbapi_conn)
            self.add("COMMIT", server_ns(dbapi_conn) - started)

        engine.dialect.do_commit = timed_commit


def one_run(opts: bench_intake.Options, corpus: list[bench_intake.Generated],
            lazy_commits: bool = False) -> tuple[Costs, int]:
    from sqlalchemy import event

    from maild.processing import IntakeRunner

    costs = Costs()
    with ExitStack() as stack:
        app, ctx = writer.installed(opts, corpus, stack)
        if lazy_commits:
            app.engine.dispose()  # every connection from here on is a new one

            @event.listens_for(app.engine, "connect")
            def _lazy(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute("SET synchronous_commit = off")
                dbapi_conn.commit()

        runner = IntakeRunner(app.factory, lambda: ctx, clock=app.clock)
        batches = writer.parsed_batches(app, ctx, runner)
        costs.watch(app.engine)
        for claimed, mails in batches:
            runner.process_batch(claimed, ctx, mails)
        runner.close()
        sent = writer.send_all(app)
    return costs, sent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=1000, help="messages in the corpus (default 1000)")
    p.add_argument("--top", type=int, default=25, help="statements to list (default 25)")
    p.add_argument("--lazy-commits", action="store_true",
                   help="experiment: every commit with synchronous_commit = off, to show what durability costs")
    p.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                   help="PostgreSQL base URL, a server on this host (default: the local test server)")
    a = p.parse_args(argv)
    if not re.match(r"postgresql(\+psycopg)?://", a.database_url):
        p.error("--database-url must be a PostgreSQL URL (psycopg)")
    opts = bench_intake.parse_args(["--mode", "store", "--messages", str(a.messages),
                                    "--database-url", a.database_url])
    costs, sent = one_run(opts, bench_intake.generate(a.messages, opts.customers, opts.seed), a.lazy_commits)
    total = sum(ns for _, ns in costs.by_statement.values())
    print(f"PostgreSQL's CPU in statements and commits: {total / 1e6:.0f} ms for {a.messages} messages "
          f"({sent} acknowledgements sent), {total / 1e3 / a.messages:.0f} µs a message")
    ranked = sorted(costs.by_statement.items(), key=lambda item: -item[1][1])
    for key, (count, ns) in ranked[:a.top]:
        print(f"  {ns / 1e6:8.1f} ms {ns / total:6.1%}  {count:5d} x {ns / count / 1e3:7.1f} µs  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
