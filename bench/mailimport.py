"""Benchmark ``maild import``: how fast a mail archive becomes history, with and without the
parse worker.

One run: bench/intake.py's corpus in bench/imap.py's mailbox weight (~17 KB a message,
~10% with attachments, trace headers), written to an mbox; then, for each setting of
``intake.parse_workers`` asked for, a fresh maild installation (SQLite in a temp dir, or a
fresh PostgreSQL schema) and one timed ``maild import mbox``. Afterwards each database is
checked: every message stored once, none quarantined, one case per non-reply, every reply
threaded, nothing queued to send. Runs alternate between the settings (``--runs``), since
a shared machine varies by tens of percent from one minute to the next.

    .venv/bin/python bench/mailimport.py [--messages 2000] [--workers auto,0] [--runs 2]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import mailbox
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]  # reuse bench/intake.py and bench/imap.py

import imap as bench_imap  # noqa: E402
import intake as bench_intake  # noqa: E402
from intake import BenchError, Deadline, Generated  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=2000, help="messages in the archive (default 2000)")
    p.add_argument("--workers", default="auto,0",
                   help="comma-separated intake.parse_workers settings to compare (default auto,0)")
    p.add_argument("--runs", type=int, default=2, help="timed imports per setting, alternating (default 2)")
    p.add_argument("--database-url", help="PostgreSQL base URL (default: SQLite in a temp dir)")
    p.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds (default 900)")
    p.add_argument("--maild", type=Path, default=Path(sys.executable).with_name("maild"),
                   help="the maild command to benchmark (default: next to this Python)")
    a = p.parse_args(argv)
    a.workers = [w.strip() for w in a.workers.split(",") if w.strip()]
    if a.messages < 2 or a.runs < 1 or not a.workers or any(w != "auto" and not w.isdigit() for w in a.workers):
        p.error("--messages must be >= 2, --runs >= 1, --workers a list of 'auto' or numbers")
    return a


def write_mbox(corpus: list[Generated], path: Path) -> Path:
    box = mailbox.mbox(str(path))
    box.lock()
    try:
        for msg in corpus:
            box.add(msg.raw)
        box.flush()
    finally:
        box.unlock()
    return path


def one_import(opts: argparse.Namespace, workers: str, archive: Path, corpus: list[Generated],
               deadline: Deadline) -> float:
    """A fresh installation, one timed ``maild import``; its seconds, after the checks."""
    install_opts = bench_intake.parse_args(["--mode", "store", "--messages", str(len(corpus)),
                                            "--maild", str(opts.maild)]
                                           + (["--database-url", opts.database_url] if opts.database_url else []))
    with ExitStack() as stack:
        install = bench_intake.create_install(install_opts, stack, deadline)
        setting = '"auto"' if workers == "auto" else workers
        install.config.write_text(install.config.read_text().replace(
            "[intake]\n", f"[intake]\nparse_workers = {setting}\n", 1))
        started = time.monotonic()
        done = subprocess.run(install.command("import", "mbox", str(archive), "--queue", "support"),
                              capture_output=True, text=True, timeout=deadline.remaining(), cwd=install.path)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise BenchError(f"maild import exited {done.returncode}:\n{done.stderr[-2000:]}")
        engine = sa.create_engine(install.db_url)
        try:
            problems = check(bench_intake.read_counts(engine), corpus)
        finally:
            engine.dispose()
    if problems:
        raise BenchError("the import is not trustworthy:\n  " + "\n  ".join(problems))
    return seconds


def check(counts: bench_intake.Counts, corpus: list[Generated]) -> list[str]:
    n, replies = len(corpus), sum(1 for m in corpus if m.parent is not None)
    expect = [
        ("inbound rows", counts.inbound, n),
        ("processed", counts.processed, n),
        ("quarantined", counts.quarantined, 0),
        ("cases", counts.cases, n - replies),
        ("replies threaded onto their case", counts.threaded, replies),
        ("outbound rows (history sends nothing)", counts.outbound, 0),
    ]
    return [f"{what}: {got}, expected {want}" for what, got, want in expect if got != want]


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    deadline = Deadline(opts.timeout)
    corpus = bench_intake.generate(opts.messages, 200, opts.seed, shape=bench_imap.SHAPE)
    times: dict[str, list[float]] = {w: [] for w in opts.workers}
    with tempfile.TemporaryDirectory(prefix="maild-bench-import-") as tmp:
        archive = write_mbox(corpus, Path(tmp) / "archive.mbox")
        size = archive.stat().st_size / 1024 / 1024
        print(f"{len(corpus)} messages, {size:.1f} MiB mbox; database="
              f"{'postgresql' if opts.database_url else 'sqlite'}", flush=True)
        try:
            for run in range(opts.runs):
                for workers in opts.workers:
                    seconds = one_import(opts, workers, archive, corpus, deadline)
                    times[workers].append(seconds)
                    print(f"  run {run + 1}, parse_workers = {workers}: {seconds:.2f} s "
                          f"({len(corpus) / seconds:.1f} msg/s)", flush=True)
        except BenchError as exc:
            print(f"bench: FAILED: {exc}", file=sys.stderr)
            return 1
    print("median:")
    for workers, runs in times.items():
        median = statistics.median(runs)
        print(f"  parse_workers = {workers}: {median:.2f} s ({len(corpus) / median:.1f} msg/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
