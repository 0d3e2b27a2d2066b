"""The intake writer alone: CPU per message of writing parsed mail into cases, in-process.

Each repetition makes a fresh installation (bench/intake.py's: temp dir, config, SQLite or
a fresh PostgreSQL schema), stores the corpus in the inbound table, claims it in batches
and parses every message first, untimed, writing attachments to the store as maild's parse
workers do (before 2026-11-27 the timed writer wrote them, as it does only without
workers). Then only ``IntakeRunner.process_batch`` runs, timed with ``time.process_time``:
rules, threading, cases, activities, acknowledgements rendered and composed into the
outbox, the batch's commits. Nothing is sent. The SQL statements the writing sends are
counted too (an executemany counts once).

No network, no daemon, no parse worker and no other process: this is the steadiest figure
for comparing two versions of the writer on a shared machine, where whole-run benchmarks
vary by 15% or more. Take the best of the repetitions, and alternate the versions:

    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/writer.py
    .venv/bin/python bench/writer.py [--messages 1000] [--reps 3] [--batch 20]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import intake as bench_intake  # noqa: E402  (its corpus and throw-away installation)


def installed(opts: bench_intake.Options, corpus: list[bench_intake.Generated], stack: ExitStack) -> tuple[Any, Any]:
    """A fresh installation (closed with ``stack``) with ``corpus`` stored, loaded as
    ``maild run`` loads it: its App and intake context. Shared with dispatch.py and pgcost.py."""
    from maild.app import load_app

    install = bench_intake.create_install(opts, stack, bench_intake.Deadline(opts.timeout))
    bench_intake.store_all(install, corpus)
    app = load_app(install.config)
    stack.callback(app.close)
    return app, app.intake_context()


def parsed_batches(app: Any, ctx: Any, runner: Any) -> list[tuple[Any, Any]]:
    """Every stored message claimed in ``runner``'s batches and parsed, untimed, with
    attachments written to the store as a parse worker writes them (ctx.data_dir): in
    ``maild run`` the writer never does that itself."""
    from maild import inbound
    from maild.parsepool import parse_all_and_store

    batches = []
    while claimed := inbound.claim(app.factory, now=app.clock(), lease=timedelta(hours=1), max_attempts=5,
                                   limit=runner.batch, worker=runner.worker, sweep=False):
        batches.append((claimed, parse_all_and_store([item.raw for item in claimed], ctx.data_dir)))
    return batches


class Statements:
    """Counts the SQL statements ``engine`` sends inside the ``with`` (an executemany counts once)."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.count = engine, 0

    def _seen(self, *_args: object) -> None:
        self.count += 1

    def __enter__(self) -> Statements:
        from sqlalchemy import event

        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._seen)


def send_all(app: Any) -> int:
    """Run a dispatcher until the outbox is empty, as ``maild run``'s dispatch thread does
    (to the installation's outgoing Maildir); how many it sent."""
    from maild.dispatch import DispatchRunner
    from maild.transport import from_config

    dispatch = DispatchRunner(app.factory, from_config(app.config.outgoing), app.config.outgoing, clock=app.clock)
    sent = 0
    while n := dispatch.run_once():
        sent += n
    return sent


def one_run(opts: bench_intake.Options, corpus: list[bench_intake.Generated], batch: int,
            calls: bool = False) -> tuple[float, int]:
    """CPU seconds per message of writing ``corpus`` on a fresh installation, and the SQL
    statements the writing sent (an executemany counts once). With ``calls``, the first
    figure is the function calls per message instead (Python's and C's, counted with
    ``sys.setprofile``): slow, but the same on every run of the same code."""
    from maild.processing import IntakeRunner

    with ExitStack() as stack:
        app, ctx = installed(opts, corpus, stack)
        runner = IntakeRunner(app.factory, lambda: ctx, clock=app.clock, batch=batch)
        batches = parsed_batches(app, ctx, runner)
        called = 0

        def profile(_frame: object, what: str, _arg: object) -> None:
            nonlocal called
            if what in ("call", "c_call"):
                called += 1

        with Statements(app.engine) as statements:
            if calls:
                sys.setprofile(profile)
            start = time.process_time()
            for claimed, mails in batches:
                runner.process_batch(claimed, ctx, mails)
            cpu = time.process_time() - start
            sys.setprofile(None)
        runner.close()
    return (called if calls else cpu) / len(corpus), statements.count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=1000, help="messages in the corpus (default 1000)")
    p.add_argument("--reps", type=int, default=3, help="fresh installations to write it into (default 3)")
    p.add_argument("--batch", type=int, default=20, help="messages per batch, as maild's intake runner (default 20)")
    p.add_argument("--database-url", help="PostgreSQL base URL (default: SQLite in a temp dir)")
    p.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    p.add_argument("--output", type=Path, help="also write the figures as JSON to this file")
    p.add_argument("--calls", action="store_true",
                   help="count function calls per message instead of timing (one run; the same on every run)")
    a = p.parse_args(argv)
    if a.messages < 2 or a.reps < 1 or a.batch < 1:
        p.error("--messages must be >= 2, --reps and --batch >= 1")
    opts = bench_intake.parse_args(["--mode", "store", "--messages", str(a.messages), "--seed", str(a.seed)]
                                   + (["--database-url", a.database_url] if a.database_url else []))
    corpus = bench_intake.generate(a.messages, opts.customers, opts.seed)
    database = "postgresql" if a.database_url else "sqlite"
    if a.calls:
        calls, statements = one_run(opts, corpus, a.batch, calls=True)
        print(f"maild intake writer, {database}, {a.messages} messages in batches of {a.batch}: "
              f"{calls:,.0f} function calls a message; {statements} SQL statements")
        return 0
    runs = [one_run(opts, corpus, a.batch) for _ in range(a.reps)]
    per_message = [cpu * 1000 for cpu, _ in runs]
    statements = runs[0][1]  # the same corpus, the same statements: every run sends as many
    print(f"maild intake writer, {database}, {a.messages} messages in batches of {a.batch}: "
          f"best {min(per_message):.3f} ms of CPU a message (runs: {', '.join(f'{x:.3f}' for x in per_message)}); "
          f"{statements} SQL statements")
    if a.output:
        a.output.write_text(json.dumps({"database": database, "messages": a.messages, "batch": a.batch,
                                        "ms_per_message": per_message, "best": min(per_message),
                                        "statements": statements}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
