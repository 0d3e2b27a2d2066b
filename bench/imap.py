"""Benchmark maild's IMAP intake against the limit set by fetching and parsing alone.

One run, on a private Dovecot on loopback and throw-away maild installations:

1. Load a fresh mailbox with N messages: bench/intake.py's corpus (support-style prose,
   HTML alternatives, ~20% quoted replies threading on In-Reply-To) with a real mailbox's
   weight: trace headers and ~10% attachments, ~17 KB per message on average. The files
   go straight into the account's Maildir; Dovecot indexes them on the first SELECT.
2. The limit: one process logs in, fetches every message with ``BODY.PEEK[]`` in
   batches and parses each with ``mailparser.parse_from_bytes`` (what maild's parser is
   built on). Fetching alone is measured too, to show what Dovecot itself costs.
3. maild: on a fresh database, ``maild run --once`` drains the mailbox into cases (moving
   each message to Processed) and queues and writes out one acknowledgement per new case.
   Reported: its rate divided by the limit's (target >= 0.70) and its peak RSS (<= 150 MB).
4. Steps 1-3 for a smaller mailbox too (``--small``): the per-message rate for N should
   stay within 90% of the rate for the small one.
5. PostgreSQL only: a fresh mailbox drained by one ``maild run`` daemon, another by
   ``--workers`` daemons side by side (one holds the mailbox's lease and fetches, all of
   them process the stored rows), target speedup >= 1.6. ``--pairs N`` repeats the pair
   N times, alternating, and reports the median: on a shared 2-CPU machine one pair
   varies by tens of percent.

Afterwards every run is checked: N inbound rows, all processed, none quarantined, one case
per non-reply, every reply threaded, one acknowledgement per case, INBOX empty and N
messages in Processed. Missing a target is reported; exit status 1 means the run itself
failed (or its checks did). Needs root, Dovecot and the ``maildtest`` user (see
tests/dovecot.py).

    .venv/bin/python bench/imap.py [--messages 10000] [--small 2000]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test [--pairs 5]]
        [--output FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import mailparser  # type: ignore[import-untyped, unused-ignore]
import sqlalchemy as sa
from imapclient import IMAPClient

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]  # reuse bench/intake.py and tests/dovecot.py

import dovecot  # noqa: E402
import intake as bench_intake  # noqa: E402
from intake import BenchError, Deadline, Generated, Install  # noqa: E402

# A real mailbox's weight (~17 KB mean, ~10% with attachments) rather than intake.py's light corpus.
SHAPE = bench_intake.Shape(attachment_share=0.10, attachment_bytes=(40_000, 160_000), trace_headers=True)
TARGET_RATIO = 0.70  # maild / fetch+parse
TARGET_SCALING = 0.90  # per-message rate, N vs --small
TARGET_RSS_MB = 150.0  # MB = 10**6 bytes, the stricter reading
TARGET_SPEEDUP = 1.6  # --workers daemons vs one, PostgreSQL
IMAP_TIMEOUT = 60.0
# How often the database is polled for the timeline: every 1/200 of the time so far, so a
# mark is at most 0.5% late, from 0.05 s up to 0.5 s. Each poll counts the tables, which on a
# PostgreSQL without vacuum (no visibility map) reads every row version; at a fixed 20 polls
# a second that took CPU from the daemons being measured, more the longer the run.
POLL_MIN_SECONDS, POLL_MAX_SECONDS = 0.05, 0.5


def poll_interval(elapsed: float) -> float:
    return min(POLL_MAX_SECONDS, max(POLL_MIN_SECONDS, elapsed / 200))
KIB = 1024.0
T = TypeVar("T")


# Options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    messages: int
    small: int
    customers: int
    database_url: str | None
    workers: int
    batch: int
    seed: int
    timeout: float
    output: Path | None
    maild: Path
    keep: bool
    parse_workers: int | None = None  # maild's intake.parse_workers; None: its default
    pairs: int = 1  # PostgreSQL: one-daemon and --workers runs, alternated this many times


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=10_000, help="messages in the main mailbox (default 10000)")
    p.add_argument("--small", type=int, default=2_000,
                   help="also run a mailbox of this size, for the scaling ratio; 0 to skip (default 2000)")
    p.add_argument("--customers", type=int, default=200, help="distinct senders (default 200)")
    p.add_argument("--database-url", help="PostgreSQL base URL; fresh schemas are created and dropped, and "
                   "one worker is compared with --workers (default: SQLite in the temp dir)")
    p.add_argument("--workers", type=int, default=2, help="PostgreSQL: daemons for the comparison; 0 or 1 to "
                   "skip it (default 2)")
    p.add_argument("--batch", type=int, default=100, help="UIDs per FETCH, for the limit and maild (default 100)")
    p.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    p.add_argument("--timeout", type=float, default=1500.0, help="give up after this many seconds (default 1500)")
    p.add_argument("--output", type=Path, help="also write the figures as JSON to this file")
    p.add_argument("--maild", type=Path, default=Path(sys.executable).with_name("maild"),
                   help="the maild command to benchmark (default: next to this Python)")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (Dovecot, maild configs, logs, SQLite)")
    p.add_argument("--parse-workers", type=int, choices=range(0, 9), metavar="N",
                   help="maild's intake.parse_workers (default: unset, maild's own default)")
    p.add_argument("--pairs", type=int, default=1,
                   help="PostgreSQL: run one daemon, then --workers daemons, this many times over and report "
                   "the median speedup (runs on a shared machine vary; default 1)")
    a = p.parse_args(argv)
    if a.messages < 2 or a.small < 0 or a.customers < 1 or a.timeout <= 0 or a.workers < 0 or a.pairs < 1:
        p.error("--messages must be >= 2, --customers >= 1, --timeout > 0, --pairs >= 1, --small and --workers >= 0")
    if not 1 <= a.batch <= 5000:
        p.error("--batch must be within 1..5000 (maild's limit)")
    if a.small >= a.messages:
        p.error("--small must be smaller than --messages (or 0 to skip it)")
    return Options(a.messages, a.small, a.customers, a.database_url, a.workers, a.batch, a.seed, a.timeout,
                   a.output, a.maild, a.keep, a.parse_workers, a.pairs)


# Dovecot -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """One account on the private Dovecot; each run gets a fresh one, so a fresh mailbox."""

    server: dovecot.Dovecot
    user: str

    @property
    def password(self) -> str:
        return self.server.users[self.user]

    @property
    def maildir(self) -> Path:
        return self.server.root / "home" / self.user / "Maildir"  # mail_location = maildir:~/Maildir

    def login(self) -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=self.server.port, ssl=False, timeout=IMAP_TIMEOUT)
        client.login(self.user, self.password)
        return client

    def toml(self, batch: int) -> str:
        """The queue's mailbox for maild, shaped like config.example.toml (plain IMAP: loopback)."""
        return (f'\n[queues.support.imap]\nhost = "127.0.0.1"\nport = {self.server.port}\nsecurity = "none"\n'
                f'user = "{self.user}"\npassword = "{self.password}"\nfolder = "INBOX"\nafter = "move"\n'
                f'move_to = "Processed"\npoll_interval = 1.0\nidle = true\ntimeout = {IMAP_TIMEOUT}\n'
                f"batch = {batch}\n")

    def counts(self) -> dict[str, int]:
        """Messages in INBOX and Processed, for the checks."""
        client = self.login()
        try:
            return {folder: int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])
                    if client.folder_exists(folder) else 0 for folder in ("INBOX", "Processed")}
        finally:
            client.logout()


def start_dovecot(opts: Options, accounts: int, stack: ExitStack) -> Iterator[Account]:
    """A private Dovecot with ``accounts`` fresh accounts, stopped and removed with ``stack``."""
    reason = dovecot.missing_reason()
    if reason:
        raise BenchError(f"cannot run Dovecot here: {reason}")
    root = Path(tempfile.mkdtemp(prefix="maild-bench-dovecot-"))
    if opts.keep:
        print(f"keeping Dovecot's dir {root}")
    else:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
    users = {f"bench{i}": secrets.token_hex(8) for i in range(accounts)}
    try:
        server = dovecot.start(root, users=users)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None
    stack.callback(server.stop)
    return (Account(server, user) for user in users)


@dataclass(frozen=True)
class Load:
    write_seconds: float
    index_seconds: float


def load_mailbox(account: Account, corpus: list[Generated]) -> Load:
    """Deliver the corpus into INBOX and let Dovecot index it; IMAP APPEND would be the slow part."""
    started = time.monotonic()
    write_maildir(account.maildir, corpus)
    written = time.monotonic()
    client = account.login()
    try:
        exists = int(client.select_folder("INBOX")[b"EXISTS"])  # read-write: new/ -> cur/, UIDs assigned
    finally:
        client.logout()
    if exists != len(corpus):
        raise BenchError(f"Dovecot sees {exists} messages in INBOX after loading {len(corpus)}")
    return Load(written - started, time.monotonic() - written)


def write_maildir(maildir: Path, corpus: list[Generated]) -> None:
    """Write each message into Maildir/new/ as an MDA would, owned by Dovecot's mail user.

    Straight into new/ without the tmp/ step: no one has the mailbox open yet. Dovecot
    numbers new files in the order of the time in their names, so one second apart makes
    UID order corpus order (checked by the limit's fetch): replies come after their parents.
    """
    owner = pwd.getpwnam(dovecot.TEST_USER)
    for path in (maildir.parent, maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chown(path, owner.pw_uid, owner.pw_gid)
    first = int(time.time()) - len(corpus)
    for msg in corpus:
        name = f"{first + msg.index}.M{msg.index}P{os.getpid()}.maild-bench,S={len(msg.raw)}"
        fd = os.open(maildir / "new" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchown(fd, owner.pw_uid, owner.pw_gid)
        with open(fd, "wb") as f:
            f.write(msg.raw)


# The limit: fetch (+ parse) in one process ---------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    seconds: float
    cpu_seconds: float  # this process's, to see whether the limit was CPU-bound
    nbytes: int
    message_ids: list[str]


def fetch_all(account: Account, batch: int, parse: bool, deadline: Deadline) -> Fetched:
    """Log in, EXAMINE INBOX, fetch everything in batches (and parse it); nothing is changed."""
    cpu0, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    client = account.login()
    nbytes, ids = 0, []
    try:
        client.select_folder("INBOX", readonly=True)
        uids = sorted(client.search("ALL"))
        for i in range(0, len(uids), batch):
            chunk = uids[i:i + batch]
            fetched = client.fetch(chunk, ["BODY.PEEK[]"])
            for uid in chunk:
                raw = fetched[uid][b"BODY[]"]
                nbytes += len(raw)
                if parse:
                    ids.append(str(mailparser.parse_from_bytes(raw).message_id))
            deadline.check(f"fetching from Dovecot ({i + len(chunk)}/{len(uids)})")
        seconds = time.monotonic() - started
    finally:
        client.logout()
    cpu = bench_intake.cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)) - bench_intake.cpu_seconds(cpu0)
    return Fetched(seconds, cpu, nbytes, ids)


def check_order(fetched: Fetched, corpus: list[Generated]) -> None:
    """UID order must be corpus order, or maild would meet replies before their parents."""
    expected = [m.message_id for m in corpus]
    if fetched.message_ids != expected:
        wrong = sum(a != b for a, b in zip(fetched.message_ids, expected, strict=False))
        raise BenchError(f"the mailbox is not in corpus order ({wrong} of {len(corpus)} messages out of place, "
                         f"{len(fetched.message_ids)} fetched)")


# maild -----------------------------------------------------------------------------------


# Index-only counts, cheap enough to poll while maild runs. (intake.py's COUNTS_SQL also reads
# columns stored after the raw message; on SQLite that walks every message's overflow pages.)
PROGRESS_SQL = sa.text("""
SELECT
  (SELECT count(*) FROM inbound_message) AS stored,
  (SELECT count(*) FROM inbound_message WHERE state <> 'received') AS processed,
  (SELECT count(*) FROM outbound_message WHERE state IN ('pending', 'sending')) AS outbound_open
""")


@dataclass
class Timeline:
    """Seconds from maild's start until the polled counts first showed each stage, and
    maild's peak RSS (VmHWM) by then.

    Polled every poll_interval(), so each mark may be that late; it shows where the time and
    the memory go (``run --once`` fetches and stores everything, then processes, then sends).
    """

    expected: int
    pids: list[int] = field(default_factory=list)  # whose VmHWM to read; emptied once they exit
    started: float = field(default_factory=time.monotonic)
    first_stored: float | None = None
    all_stored: float | None = None
    all_processed: float | None = None
    done: float | None = None  # all processed and every acknowledgement written out
    peak_rss_mib: dict[str, float | None] = field(default_factory=dict)  # stage -> largest VmHWM by then
    # The largest maild's memory seen (bench_intake.ProcessTree: its VmHWM and its parse
    # workers'), here where the parent holds the whole corpus.
    max_rss_mib: float | None = None
    _trees: dict[int, bench_intake.ProcessTree] = field(default_factory=dict)  # by maild pid

    def update(self, engine: sa.Engine) -> bool:
        """Poll once (counts and VmHWM); True when everything is done."""
        self.sample_rss()
        with engine.connect() as conn:
            stored, processed, outbound_open = conn.execute(PROGRESS_SQL).one()
        now = round(time.monotonic() - self.started, 3)
        self._mark("first_stored", stored > 0, now)
        self._mark("all_stored", stored >= self.expected, now)
        self._mark("all_processed", processed >= self.expected, now)
        self._mark("done", processed >= self.expected and not outbound_open, now)
        return self.done is not None

    def _mark(self, stage: str, reached: bool, now: float) -> None:
        if reached and getattr(self, stage) is None:
            setattr(self, stage, now)
            self.peak_rss_mib[stage] = self.max_rss_mib

    def sample_rss(self) -> None:
        for root in self.pids:
            kib = self._trees.setdefault(root, bench_intake.ProcessTree(root)).sample()
            if kib is not None:
                self.max_rss_mib = max(self.max_rss_mib or 0.0, kib / KIB)

    def follow(self, engine: sa.Engine, stop: threading.Event) -> None:
        """Poll until ``stop``: runs in a thread while the main thread waits for the process."""
        while not stop.wait(poll_interval(time.monotonic() - self.started)):
            try:
                self.update(engine)
            except sa.exc.OperationalError:
                pass  # e.g. SQLite busy during a checkpoint: the next tick will do


@dataclass(frozen=True)
class MaildRun:
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float  # the largest process's VmHWM (see Timeline.max_rss_mib)
    timeline: Timeline
    processed_by: list[int]  # inbound rows per worker (the last claimer), largest first


def make_install(opts: Options, account: Account, messages: int, stack: ExitStack,
                 deadline: Deadline, db_url: str | None = None) -> tuple[Install, sa.Engine]:
    """intake.py's installation (SMTP intake off, outgoing Maildir), reading ``account`` for support@;
    on ``db_url`` if given (see bench_intake.create_install)."""
    install_opts = bench_intake.Options(
        mode="imap", messages=messages, clients=1, customers=opts.customers, database_url=opts.database_url,
        seed=opts.seed, timeout=opts.timeout, output=None, maild=opts.maild, keep=opts.keep, profile=None,
        parse_workers=opts.parse_workers)
    install = bench_intake.create_install(install_opts, stack, deadline, extra=account.toml(opts.batch),
                                          db_url=db_url)
    engine = sa.create_engine(install.db_url)
    stack.callback(engine.dispose)  # before the schema is dropped: no connection may hold it
    return install, engine


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Whatever happens, no maild outlives the benchmark."""
    if proc.returncode is None and proc.poll() is None:
        proc.kill()
        proc.wait()


def run_once(install: Install, engine: sa.Engine, expected: int, stack: ExitStack,
             deadline: Deadline) -> MaildRun:
    """Time one ``maild run --once`` from spawn to exit, following its progress in the database."""
    stop = threading.Event()
    log = stack.enter_context((install.path / "run-once.log").open("ab"))
    timeline = Timeline(expected)
    proc = subprocess.Popen(install.command("run", "--once"), stdout=log, stderr=log, cwd=install.path)
    stack.callback(kill, proc)
    timeline.pids.append(proc.pid)
    watcher = threading.Thread(target=timeline.follow, args=(engine, stop), daemon=True)
    watcher.start()
    try:
        code, usage = bench_intake.wait_with_rusage(proc, deadline, "maild run --once")
        seconds = time.monotonic() - timeline.started
    finally:
        stop.set()
        watcher.join()
    if code != 0:
        raise BenchError(f"maild run --once exited {code}:\n{bench_intake.tail(install.path / 'run-once.log')}")
    timeline.pids.clear()  # reaped: the pid may belong to someone else now
    timeline.update(engine)  # the stages the last tick missed
    # Sampled every tick until exit, so only growth in the last poll_interval() could be missed.
    peak = timeline.max_rss_mib
    if peak is None:
        raise BenchError("maild run --once exited before its memory could be read once")
    return MaildRun(seconds, bench_intake.cpu_seconds(usage), peak, timeline, processed_by(engine))


def run_daemons(install: Install, engine: sa.Engine, expected: int, workers: int, stack: ExitStack,
                deadline: Deadline) -> MaildRun:
    """Start ``workers`` ``maild run`` daemons at once; time from spawn until all work is done.

    Daemons, not ``run --once``: a second ``run --once`` finds the mailbox leased to the
    first and nothing stored yet, and exits. Daemons keep claiming stored rows
    (SKIP LOCKED) while the lease holder fetches, which is how workers share a mailbox.
    """
    sync_registry(install)
    timeline = Timeline(expected)
    procs = [spawn_daemon(install, k, stack) for k in range(workers)]
    timeline.pids.extend(proc.pid for proc in procs)
    while not timeline.update(engine):
        for k, proc in enumerate(procs):
            if proc.poll() is not None:
                raise BenchError(f"maild run (worker {k}) exited {proc.returncode}:\n"
                                 f"{bench_intake.tail(install.path / f'maild-{k}.log')}")
        deadline.check(f"waiting for {workers} daemon(s) to drain the mailbox")
        time.sleep(poll_interval(time.monotonic() - timeline.started))
    assert timeline.done is not None
    timeline.sample_rss()  # exact: VmHWM of the daemons still running, their work done
    assert timeline.max_rss_mib is not None
    stopped = [bench_intake.stop_daemon(proc, deadline) for proc in procs]
    for k, (code, _) in enumerate(stopped):
        if code != 0:
            raise BenchError(f"maild run (worker {k}) exited {code} after SIGTERM, expected 0:\n"
                             f"{bench_intake.tail(install.path / f'maild-{k}.log')}")
    return MaildRun(timeline.done, sum(bench_intake.cpu_seconds(u) for _, u in stopped),
                    timeline.max_rss_mib, timeline, processed_by(engine))


def sync_registry(install: Install) -> None:
    """Write the configured queues and agents into the fresh database, as a first start would.

    Daemons started at the same moment on a database that has no queue rows yet race to
    insert them, and the loser exits 1 (UniqueViolation on queue.name). Real workers meet
    that only on an installation's very first start; the comparison is about steady work.
    Done with the maild package next to this Python, as `maild run` does at start-up.
    """
    from maild.app import load_app

    app = load_app(install.config)
    try:
        app.prepare()
    finally:
        app.close()


def spawn_daemon(install: Install, k: int, stack: ExitStack) -> subprocess.Popen[bytes]:
    log = stack.enter_context((install.path / f"maild-{k}.log").open("wb"))
    proc = subprocess.Popen(install.command("run"), stdout=log, stderr=log, cwd=install.path)
    stack.callback(kill, proc)
    return proc


def processed_by(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM inbound_message GROUP BY claimed_by")).all()
    return sorted((int(r[0]) for r in rows), reverse=True)


def check_run(engine: sa.Engine, corpus: list[Generated], install: Install, account: Account) -> list[str]:
    """intake.py's checks (rows, cases, threading, acknowledgements), plus the mailbox's state.

    Returns what failed rather than raising: the other runs still give figures, and the
    report ends with the failures (and exit status 1).
    """
    counts = bench_intake.read_counts(engine)
    problems = bench_intake.verify(counts, corpus, install.path / "outgoing")
    if counts.processed != len(corpus):
        problems.append(f"processed inbound rows: {counts.processed}, expected {len(corpus)}")
    folders = account.counts()
    if folders != {"INBOX": 0, "Processed": len(corpus)}:
        problems.append(f"mailbox after the run: {folders}, expected INBOX empty and {len(corpus)} in Processed")
    return problems


# Runs ------------------------------------------------------------------------------------


@dataclass
class SizeResult:
    """One mailbox size: loading, the limit, and ``maild run --once``."""

    messages: int
    mean_kib: float
    with_attachment: int
    replies: int
    load_write_seconds: float
    load_index_seconds: float
    fetch_only_per_sec: float
    fetch_only_seconds: float
    fetch_only_mib_per_sec: float
    fetch_parse_per_sec: float
    fetch_parse_seconds: float
    fetch_parse_cpu_seconds: float
    maild_per_sec: float
    maild_seconds: float
    maild_cpu_seconds: float
    maild_peak_rss_mib: float
    first_stored_at: float | None
    all_stored_at: float | None
    all_processed_at: float | None
    peak_rss_by_stage_mib: dict[str, float | None]  # maild's VmHWM when each stage was reached
    ratio: float  # maild / fetch+parse, maild timed to its exit (every acknowledgement sent too)
    # The same, maild timed until every message was a case or activity with its acknowledgement
    # queued: the issue's own end point. Polled, so up to poll_interval() late (a lower bound).
    ratio_queued: float | None
    problems: list[str]  # failed checks; empty when the run is trustworthy


def size_run(opts: Options, account: Account, corpus: list[Generated], deadline: Deadline) -> SizeResult:
    n = len(corpus)
    print(f"[{n} messages] loading the mailbox", flush=True)
    load = load_mailbox(account, corpus)
    print(f"[{n} messages] measuring fetch alone, then fetch + parse", flush=True)
    fetch_only = fetch_all(account, opts.batch, False, deadline)
    limit = fetch_all(account, opts.batch, True, deadline)
    check_order(limit, corpus)
    print(f"[{n} messages] maild run --once", flush=True)
    with ExitStack() as stack:
        install, engine = make_install(opts, account, n, stack, deadline)
        run = run_once(install, engine, n, stack, deadline)
        problems = check_run(engine, corpus, install, account)
    t = run.timeline
    return SizeResult(
        messages=n, mean_kib=statistics.fmean(len(m.raw) for m in corpus) / KIB,
        with_attachment=sum(m.attachment for m in corpus), replies=sum(m.parent is not None for m in corpus),
        load_write_seconds=load.write_seconds, load_index_seconds=load.index_seconds,
        fetch_only_per_sec=n / fetch_only.seconds, fetch_only_seconds=fetch_only.seconds,
        fetch_only_mib_per_sec=fetch_only.nbytes / KIB / KIB / fetch_only.seconds,
        fetch_parse_per_sec=n / limit.seconds, fetch_parse_seconds=limit.seconds,
        fetch_parse_cpu_seconds=limit.cpu_seconds, maild_per_sec=n / run.seconds, maild_seconds=run.seconds,
        maild_cpu_seconds=run.cpu_seconds, maild_peak_rss_mib=run.peak_rss_mib,
        first_stored_at=t.first_stored, all_stored_at=t.all_stored, all_processed_at=t.all_processed,
        peak_rss_by_stage_mib=t.peak_rss_mib, ratio=limit.seconds / run.seconds,
        ratio_queued=limit.seconds / t.all_processed if t.all_processed else None, problems=problems,
    )


# The servers on this host whose CPU a run also costs, by process name (comm).
SERVICES = {
    "postgresql": {"postgres"},
    "dovecot": {"dovecot", "imap", "imap-login", "auth", "config", "log", "anvil", "stats", "indexer",
                "indexer-worker"},
}


def service_cpu() -> dict[str, float]:
    """CPU seconds each service has used so far: its processes' own and their reaped children's
    (a backend that exited is counted in its parent's), from /proc. The difference of two
    readings is what the service cost in between."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(SERVICES, 0.0)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        for service, names in SERVICES.items():
            if comm in names:
                totals[service] += sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    return totals


@dataclass
class WorkersResult:
    """``workers`` daemons draining a fresh mailbox of ``messages`` (PostgreSQL)."""

    workers: int
    messages: int
    per_sec: float
    seconds: float
    cpu_seconds: float
    service_cpu_seconds: dict[str, float]  # PostgreSQL's and Dovecot's, spawn to SIGTERM
    peak_rss_mib: float
    first_stored_at: float | None
    all_stored_at: float | None
    all_processed_at: float | None
    peak_rss_by_stage_mib: dict[str, float | None]
    processed_by: list[int]
    problems: list[str]


def workers_run(opts: Options, account: Account, corpus: list[Generated], workers: int,
                deadline: Deadline) -> WorkersResult:
    n = len(corpus)
    print(f"[{n} messages] loading the mailbox; then {workers} maild run daemon(s)", flush=True)
    load_mailbox(account, corpus)
    with ExitStack() as stack:
        install, engine = make_install(opts, account, n, stack, deadline)
        before = service_cpu()
        run = run_daemons(install, engine, n, workers, stack, deadline)
        services = {name: used - before[name] for name, used in service_cpu().items()}
        problems = check_run(engine, corpus, install, account)
    t = run.timeline
    return WorkersResult(workers, n, n / run.seconds, run.seconds, run.cpu_seconds, services, run.peak_rss_mib,
                         t.first_stored, t.all_stored, t.all_processed, t.peak_rss_mib, run.processed_by,
                         problems)


# Report ----------------------------------------------------------------------------------


@dataclass
class Report:
    database: str
    maild_version: str
    dovecot_version: str
    python: str
    date: str
    machine: str
    nproc: int
    seed: int
    customers: int
    batch: int
    sizes: list[SizeResult]
    workers: list[WorkersResult]
    ratio: float  # maild / fetch+parse, largest mailbox
    scaling: float | None  # per-message rate, largest vs small mailbox
    peak_rss_mb: float  # largest maild process in any run, 10**6 bytes
    speedup: float | None  # --workers daemons vs one: the median of the pairs'
    speedups: list[float]  # each pair's
    # Each pair's, timed from the first row stored instead of from spawn: without the daemons'
    # start-up, which both sides pay once (about 0.9 s) and which no number of workers shortens.
    # Shown beside the target's figure, not instead of it.
    speedups_after_start: list[float]
    speedup_vs_run_once: float | None  # --workers daemons vs `run --once` on the same size
    targets: dict[str, bool]
    problems: list[str]  # every run's failed checks, named by run


def make_report(opts: Options, sizes: list[SizeResult], workers: list[WorkersResult],
                deadline: Deadline) -> Report:
    big = sizes[-1]
    scaling = big.maild_per_sec / sizes[0].maild_per_sec if len(sizes) > 1 else None
    # workers alternates one daemon and --workers daemons, pair by pair.
    speedups = [many.per_sec / one.per_sec for one, many in zip(workers[::2], workers[1::2])]
    speedup = statistics.median(speedups) if speedups else None
    after_start = [_after_start(one) / _after_start(many) for one, many in zip(workers[::2], workers[1::2])
                   if one.first_stored_at is not None and many.first_stored_at is not None]
    vs_once = workers[-1].per_sec / big.maild_per_sec if workers else None
    peak_mib = max([s.maild_peak_rss_mib for s in sizes] + [w.peak_rss_mib for w in workers])
    peak_mb = peak_mib * KIB * KIB / 1e6
    # The end point: every message a case or activity, its acknowledgement queued.
    targets = {"ratio": (big.ratio_queued or 0.0) >= TARGET_RATIO, "peak_rss": peak_mb <= TARGET_RSS_MB}
    if scaling is not None:
        targets["scaling"] = scaling >= TARGET_SCALING
    if speedup is not None:
        targets["speedup"] = speedup >= TARGET_SPEEDUP
    return Report(
        database="postgresql" if opts.database_url else "sqlite",
        maild_version=version([str(opts.maild), "--version"], deadline),
        dovecot_version=version([dovecot.DOVECOT, "--version"], deadline, last_word=False),
        python=platform.python_version(), date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=f"{platform.system()} {platform.release()} {platform.machine()}", nproc=os.cpu_count() or 0,
        seed=opts.seed, customers=opts.customers, batch=opts.batch, sizes=sizes, workers=workers,
        ratio=big.ratio, scaling=scaling, peak_rss_mb=peak_mb, speedup=speedup, speedups=speedups,
        speedups_after_start=after_start,
        speedup_vs_run_once=vs_once,
        targets=targets,
        problems=[f"{s.messages} messages, maild run --once: {p}" for s in sizes for p in s.problems]
        + [f"{w.workers} daemon(s), {w.messages} messages: {p}" for w in workers for p in w.problems],
    )


def _after_start(w: WorkersResult) -> float:
    assert w.first_stored_at is not None
    return w.seconds - w.first_stored_at


def version(args: list[str], deadline: Deadline, last_word: bool = True) -> str:
    out = bench_intake.run_command(args, deadline).stdout.strip()
    return out.rpartition(" ")[2] if last_word else out


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def print_report(r: Report) -> None:
    print(f"\nmaild {r.maild_version} IMAP intake benchmark: database={r.database}, Dovecot {r.dovecot_version} "
          f"on loopback, {r.batch} UIDs per FETCH")
    print(f"  machine: {r.machine}, {r.nproc} CPUs, Python {r.python}, {r.date}; corpus seed {r.seed}, "
          f"{r.customers} senders")
    for s in r.sizes:
        print_size(s)
    for w in r.workers:
        print_workers(w)
    print("\n  targets:")
    big = r.sizes[-1]
    queued = f"{big.ratio_queued:.2f}" if big.ratio_queued else "never"
    print(f"    maild / fetch+parse at {big.messages}: {queued} until all processed, acknowledgements queued  "
          f"(>= {TARGET_RATIO:.2f}: {verdict(r.targets['ratio'])}; {r.ratio:.2f} until exit, all sent)")
    if r.scaling is not None:
        print(f"    per-message rate, {big.messages} vs {r.sizes[0].messages}: {r.scaling:.2f}  "
              f"(>= {TARGET_SCALING:.2f}: {verdict(r.targets['scaling'])})")
    print(f"    peak RSS: {r.peak_rss_mb:.1f} MB ({r.peak_rss_mb * 1e6 / KIB / KIB:.1f} MiB)  "
          f"(<= {TARGET_RSS_MB:.0f} MB: {verdict(r.targets['peak_rss'])})")
    if r.speedup is not None:
        each = f"; median of {len(r.speedups)} pairs: " + ", ".join(f"{x:.2f}x" for x in r.speedups) \
            if len(r.speedups) > 1 else ""
        print(f"    {r.workers[-1].workers} workers vs 1: {r.speedup:.2f}x  (>= {TARGET_SPEEDUP}x: "
              f"{verdict(r.targets['speedup'])}{each}; vs one `run --once`: {r.speedup_vs_run_once:.2f}x)")
        if r.speedups_after_start:
            print(f"      timed from the first row stored (start-up left out; not the target's measure): median "
                  f"{statistics.median(r.speedups_after_start):.2f}x of "
                  + ", ".join(f"{x:.2f}x" for x in r.speedups_after_start))


def print_size(s: SizeResult) -> None:
    print(f"\n  {s.messages} messages: mean {s.mean_kib:.1f} KiB, {s.with_attachment} with attachment, "
          f"{s.replies} replies")
    print(f"    load:             {s.load_write_seconds:.2f} s writing the Maildir + "
          f"{s.load_index_seconds:.2f} s Dovecot indexing (first SELECT)")
    print(f"    fetch only:       {s.fetch_only_per_sec:8.1f} msg/s  ({s.fetch_only_seconds:.2f} s, "
          f"{s.fetch_only_mib_per_sec:.1f} MiB/s)")
    print(f"    fetch + parse:    {s.fetch_parse_per_sec:8.1f} msg/s  ({s.fetch_parse_seconds:.2f} s, "
          f"CPU {s.fetch_parse_cpu_seconds:.1f} s)   <- the limit")
    print(f"    maild run --once: {s.maild_per_sec:8.1f} msg/s  ({s.maild_seconds:.2f} s, CPU "
          f"{s.maild_cpu_seconds:.1f} s, peak RSS {s.maild_peak_rss_mib:.1f} MiB)")
    print(f"      timeline: first row stored {_at(s.first_stored_at)}, all stored {_at(s.all_stored_at)}, "
          f"all processed {_at(s.all_processed_at)}, exit {s.maild_seconds:.1f} s")
    print(f"      peak RSS by then: {_rss_stages(s.peak_rss_by_stage_mib)}")
    queued = f"; {s.ratio_queued:.2f} until all processed (acknowledgements queued)" if s.ratio_queued else ""
    print(f"    maild / limit:    {s.ratio:.2f} until exit (acknowledgements sent){queued}"
          + ("   checks FAILED (listed at the end)" if s.problems else ""))


def print_workers(w: WorkersResult) -> None:
    print(f"\n  {w.workers} `maild run` daemon(s), {w.messages} messages: {w.per_sec:.1f} msg/s "
          f"({w.seconds:.2f} s from spawn to the last acknowledgement; CPU {w.cpu_seconds:.1f} s, "
          f"largest peak RSS {w.peak_rss_mib:.1f} MiB)")
    print(f"      timeline: first row stored {_at(w.first_stored_at)}, all stored {_at(w.all_stored_at)}, "
          f"all processed {_at(w.all_processed_at)}; rows processed per worker: {w.processed_by}")
    print(f"      peak RSS by then (largest worker): {_rss_stages(w.peak_rss_by_stage_mib)}")
    pg, imap = w.service_cpu_seconds.get("postgresql", 0.0), w.service_cpu_seconds.get("dovecot", 0.0)
    print(f"      CPU from spawn to exit: maild {w.cpu_seconds:.1f} s, PostgreSQL {pg:.1f} s, Dovecot {imap:.1f} s; "
          f"{(w.cpu_seconds + pg + imap) / w.seconds:.2f} CPUs busy on average")
    if w.problems:
        print("      checks FAILED (listed at the end)")


def _rss_stages(stages: dict[str, float | None]) -> str:
    names = {"first_stored": "first row stored", "all_stored": "all stored", "all_processed": "all processed",
             "done": "all sent"}
    return ", ".join(f"{names[k]} {v:.1f} MiB" for k, v in stages.items() if v is not None) or "-"


def _at(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def write_json(path: Path, report: Any) -> None:
    """``report`` (a dataclass) as JSON, floats rounded to 3 places."""
    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 3)
        if isinstance(value, list):
            return [rounded(v) for v in value]
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded(asdict(report)), indent=2) + "\n")
    print(f"  written to {path}")


# Main ------------------------------------------------------------------------------------


def benchmark(opts: Options, deadline: Deadline) -> Report:
    print(f"generating {opts.messages} messages (seed {opts.seed})", flush=True)
    corpus = bench_intake.generate(opts.messages, opts.customers, opts.seed, shape=SHAPE)
    sizes = [n for n in (opts.small, opts.messages) if n]
    worker_counts = [1, opts.workers] * opts.pairs if opts.database_url and opts.workers >= 2 else []
    with ExitStack() as stack:
        accounts = start_dovecot(opts, len(sizes) + len(worker_counts), stack)
        size_results = [size_run(opts, next(accounts), corpus[:n], deadline) for n in sizes]
        worker_results = [workers_run(opts, next(accounts), corpus, w, deadline) for w in worker_counts]
        return make_report(opts, size_results, worker_results, deadline)


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: unwind, so Dovecot, maild, schemas and temp dirs are cleaned up."""
    raise KeyboardInterrupt


def guarded(work: Callable[[], T]) -> T | None:
    """``work()``, with SIGTERM taken as Ctrl-C; None, the reason said on stderr, when it
    failed or was interrupted (everything it started is cleaned up by then)."""
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return work()
    except BenchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted; cleaned up", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    deadline = Deadline(opts.timeout)
    report = guarded(lambda: benchmark(opts, deadline))
    if report is None:
        return 1
    print_report(report)
    if opts.output:
        write_json(opts.output, report)
    if report.problems:
        print("bench: FAILED: checks after the runs:\n  " + "\n  ".join(report.problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
