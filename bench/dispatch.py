"""The dispatcher alone: what sending each queued message costs, in-process.

Each repetition makes a fresh installation (bench/intake.py's: temp dir, config, SQLite or a
fresh PostgreSQL schema, outgoing transport a Maildir in the temp dir), stores the corpus,
and lets the intake runner turn it into cases with their acknowledgements queued, untimed.
Then only ``DispatchRunner.run_once`` runs until the outbox is empty, as ``maild run``'s
dispatch thread does: each message marked sending in a durable commit, written to the
Maildir (which fsyncs it), its result recorded. Reported per message sent: the process's
CPU time, the wall time, the SQL statements, and on a PostgreSQL on this host the server's
CPU (bench/imap.py's service_cpu). No network and no other process: the steadiest figure
for comparing two versions of the dispatcher. Alternate the versions:

    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/dispatch.py
    .venv/bin/python bench/dispatch.py [--messages 1000] [--reps 3] [--profile]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

``--profile`` also runs the timed loop under cProfile, counting CPU time
(``time.process_time``), and prints the functions that took most of it themselves.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import imap  # noqa: E402  (bench/imap.py: service_cpu)
import intake as bench_intake  # noqa: E402  (its corpus and throw-away installation)
import writer  # noqa: E402  (bench/writer.py: the installation, statement count and sending it shares)


@dataclass(frozen=True)
class Run:
    sent: int
    cpu_ms: float  # per message sent, as the rest
    wall_ms: float
    server_ms: float  # PostgreSQL's; 0 on SQLite
    statements: float


def one_run(opts: bench_intake.Options, corpus: list[bench_intake.Generated], profile: bool = False) -> Run:
    from maild.processing import IntakeRunner

    with ExitStack() as stack:
        app, ctx = writer.installed(opts, corpus, stack)
        intake = IntakeRunner(app.factory, lambda: ctx, clock=app.clock)
        while intake.run_once():
            pass
        intake.close()
        with writer.Statements(app.engine) as statements:
            server, cpu, wall = imap.service_cpu()["postgresql"], time.process_time(), time.perf_counter()
            profiler = cProfile.Profile(time.process_time) if profile else None
            sent = writer.send_all(app) if profiler is None else profiler.runcall(writer.send_all, app)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            server = imap.service_cpu()["postgresql"] - server
    if sent == 0:
        raise bench_intake.BenchError("nothing was queued to send")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return Run(sent, cpu / sent * 1e3, wall / sent * 1e3, server / sent * 1e3, statements.count / sent)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=1000, help="messages in the corpus (default 1000)")
    p.add_argument("--reps", type=int, default=3, help="fresh installations (default 3)")
    p.add_argument("--database-url", help="PostgreSQL base URL (default: SQLite in a temp dir)")
    p.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    p.add_argument("--profile", action="store_true", help="also profile the last repetition's CPU by function")
    a = p.parse_args(argv)
    if a.messages < 2 or a.reps < 1:
        p.error("--messages must be >= 2, --reps >= 1")
    opts = bench_intake.parse_args(["--mode", "store", "--messages", str(a.messages), "--seed", str(a.seed)]
                                   + (["--database-url", a.database_url] if a.database_url else []))
    corpus = bench_intake.generate(a.messages, opts.customers, opts.seed)
    runs = [one_run(opts, corpus, profile=a.profile and k == a.reps - 1) for k in range(a.reps)]
    database = "postgresql" if a.database_url else "sqlite"

    def figures(values: list[float]) -> str:
        return f"best {min(values):.3f} ms (runs: {', '.join(f'{x:.3f}' for x in values)})"

    print(f"maild dispatcher, {database}, {runs[0].sent} messages sent to a Maildir, per message: "
          f"CPU {figures([r.cpu_ms for r in runs])}; wall {figures([r.wall_ms for r in runs])}; "
          f"{runs[0].statements:.2f} SQL statements")
    if a.database_url:
        print(f"  PostgreSQL's CPU: {figures([r.server_ms for r in runs])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
