"""What storing a fetched chunk costs the IMAP poller's thread, per message.

``maild.inbound.store_batch`` on bench/imap.py's corpus (17 KB on average, 10% with
attachments), in chunks of ``--chunk`` as the poller fetches them, each chunk in its own
transaction and committed as the poller commits it: identity (SHA-256, Message-ID), the
duplicate lookup, the INSERT and the commit. Each repetition stores the corpus into a
fresh installation (bench/intake.py's: temp dir, config, SQLite or a fresh PostgreSQL
schema); CPU time (``time.process_time``), best of ``--reps``. On a PostgreSQL on this
host, the server's CPU for the same stores is read from /proc too (bench/imap.py's
service_cpu: compressing the stored bytes is its largest part). No network and no Dovecot:
the steadiest figure for comparing two versions of the store on a shared machine.
Alternate the versions:

    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/store.py
    .venv/bin/python bench/store.py [--messages 2000] [--reps 3] [--chunk 100]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import imap  # noqa: E402  (bench/imap.py: the IMAP corpus's shape)
import intake as bench_intake  # noqa: E402  (its corpus generator and throw-away installation)


def one_run(opts: bench_intake.Options, raws: list[bytes], chunk: int) -> tuple[float, float, int]:
    """CPU seconds per message of storing ``raws`` in chunks on a fresh installation: the
    poller's, and PostgreSQL's (0 on SQLite); and on PostgreSQL the bytes the stored
    messages' table takes, compressed (0 on SQLite)."""
    import sqlalchemy as sa

    from maild import inbound
    from maild.app import load_app
    from maild.db import transaction
    from maild.models import InboundMessage, Queue

    with ExitStack() as stack:
        install = bench_intake.create_install(opts, stack, bench_intake.Deadline(opts.timeout))
        app = load_app(install.config)
        stack.callback(app.close)
        app.prepare()
        with app.factory() as session:
            queue_id = session.scalar(sa.select(Queue.id).where(Queue.name == "support"))
        assert queue_id is not None
        server, start = imap.service_cpu()["postgresql"], time.process_time()
        for first in range(0, len(raws), chunk):
            items = [(raw, f"INBOX/1/{first + i + 1}") for i, raw in enumerate(raws[first:first + chunk])]
            with transaction(app.factory) as session:
                duplicates = inbound.store_batch(session, queue_id, items, source="imap", now=datetime.now(UTC),
                                                 acked=False)
            assert not any(duplicates)
        cpu, server = time.process_time() - start, imap.service_cpu()["postgresql"] - server
        with app.factory() as session:
            stored = session.scalar(sa.select(sa.func.count()).select_from(InboundMessage))
        assert stored == len(raws), f"{stored} stored of {len(raws)}"
        size = 0
        if opts.database_url:
            with app.factory() as session:
                size = int(session.scalar(sa.text("SELECT pg_total_relation_size('inbound_raw')")) or 0)
    return cpu / len(raws), server / len(raws), size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--chunk", type=int, default=100, help="messages per fetched chunk (default 100, as bench/imap.py)")
    p.add_argument("--database-url", help="PostgreSQL base URL (default: SQLite in a temp dir)")
    a = p.parse_args()
    opts = bench_intake.parse_args(["--mode", "store", "--messages", str(a.messages)]
                                   + (["--database-url", a.database_url] if a.database_url else []))
    raws = [g.raw for g in bench_intake.generate(a.messages, 200, 1, shape=imap.SHAPE)]
    results = [one_run(opts, raws, a.chunk) for _ in range(a.reps)]
    runs = [cpu * 1e6 for cpu, _, _ in results]
    database = "postgresql" if a.database_url else "sqlite"
    print(f"storing fetched chunks, {database}, {a.messages} messages in chunks of {a.chunk}: best {min(runs):.1f} µs "
          f"of CPU a message (runs: {', '.join(f'{x:.1f}' for x in runs)})")
    if a.database_url:
        servers = [server * 1e6 for _, server, _ in results]
        print(f"  PostgreSQL's CPU for them: best {min(servers):.1f} µs a message "
              f"(runs: {', '.join(f'{x:.1f}' for x in servers)}); the stored bytes take "
              f"{results[-1][2] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
