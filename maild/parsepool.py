"""Parse claimed messages in worker processes while the intake writer stores the batch before.

Parsing a message (MIME structure, charsets, HTML to text, quote stripping) costs a few
milliseconds of CPU, and in one process the parser and the writer take turns. With a
backlog, a worker process parses the next batch while the writer turns the current one
into cases, so a second core does the parsing. A batch smaller than ``POOL_FROM`` (a
quiet mailbox, a test) is parsed in-process: starting a worker costs more than it saves.

Workers are plain interpreters running maild.parseworker, fed through pipes: they import
the parser only, and nothing is forked from the daemon (it runs threads, and a fork of a
threaded process can inherit a lock another thread held). Each worker has a thread here
that sends it one chunk and reads the answer before sending the next, so neither end can
block writing while the other does too. A worker that dies (a parser crash) costs its
batch nothing: the batch is parsed in-process instead, and new workers start with the
next backlog.

How many workers (``intake.parse_workers``): by default ("auto") one on SQLite when the
host has two CPUs or more, and none on PostgreSQL. SQLite has one writer, so a parse
worker is the only way for a lone ``maild run`` to use a second CPU (bench/imap.py:
about a third faster). On PostgreSQL more daemons share the work, parsing included, and
a worker beside each only takes CPU from them (two daemons with a worker each were
measured slower than two without).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, cast

from maild import attachments
from maild.errors import ParseError
from maild.parse import ParsedMail, parse
from maild.parseworker import read_frame, write_frame

if TYPE_CHECKING:  # not imported at run time: a worker imports this module, and only the parser
    from maild.config import Config

log = logging.getLogger("maild.intake")

Parsed = ParsedMail | ParseError
POOL_FROM = 10  # messages in a batch before it is worth a worker process
# Workers that failed this many batches in a row are given up for the rest of the process
# (a broken installation would otherwise start a dying worker for every batch).
GIVE_UP_AFTER = 3


def parse_one(raw: bytes) -> Parsed:
    """One message, parsed; a message that is not mail comes back as its ParseError."""
    try:
        return parse(raw)
    except ParseError as exc:
        return exc


def parse_all_and_store(raws: list[bytes], data_dir: Path | None) -> list[Parsed]:
    """``parse_one`` for each message, each attachment already written to the attachment
    store under ``data_dir`` (None: not written): in a worker, that takes the writing and its
    fsync off the intake writer's hands. A thread writes the files while the next messages
    are parsed: waiting on each fsync cost a parse worker a twentieth of its time. The store
    is keyed by content, so a batch rolled back later leaves at most files nothing points at
    yet; an attachment whose write failed comes back without its digest, for the writer to
    store (and handle the error as its own)."""
    if data_dir is None:
        return [parse_one(raw) for raw in raws]
    with ThreadPoolExecutor(1, thread_name_prefix="maild-store") as writer:
        written = [(parsed, _write(parsed, data_dir, writer)) for parsed in map(parse_one, raws)]
        return [_digested(parsed, digests) for parsed, digests in written]


def _write(parsed: Parsed, data_dir: Path, writer: ThreadPoolExecutor) -> list[Future[str | None]]:
    if isinstance(parsed, ParseError):
        return []
    return [writer.submit(_stored, data_dir, att.content) for att in parsed.attachments]


def _stored(data_dir: Path, content: bytes) -> str | None:
    try:
        return attachments.store(data_dir, content)
    except OSError:
        return None


def _digested(parsed: Parsed, digests: list[Future[str | None]]) -> Parsed:
    if isinstance(parsed, ParseError) or not digests:
        return parsed
    return replace(parsed, attachments=tuple(replace(att, sha256=digest.result())
                                             for att, digest in zip(parsed.attachments, digests)))


def parser_for(config: Config) -> Parser:
    """The parser ``maild run`` and ``maild import`` use: ``intake.parse_workers`` workers."""
    return Parser(workers_for(config.intake.parse_workers, config.database.url), store=config.paths.data)


def workers_for(setting: int | Literal["auto"], database_url: str, cpus: int | None = None) -> int:
    """The number of parse workers to run: ``setting`` itself unless it is "auto"."""
    if setting != "auto":
        return setting
    backend = database_url.partition(":")[0].partition("+")[0]
    return 1 if backend == "sqlite" and (cpus if cpus is not None else usable_cpus()) >= 2 else 0


def usable_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


class WorkerGone(Exception):
    """A worker process exited or its pipe broke; its chunk is parsed in-process."""


class Worker:
    """One ``python -m maild.parseworker`` and the thread that talks to it."""

    COMMAND = (sys.executable, "-m", "maild.parseworker")

    def __init__(self, store: Path | None = None) -> None:
        """``store``: the data directory whose attachment store the worker writes to."""
        command = [*self.COMMAND, *((str(store),) if store is not None else ())]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="maild-parse")

    def submit(self, raws: list[bytes]) -> Future[list[Parsed]]:
        return self._thread.submit(self._round_trip, raws)

    def _round_trip(self, raws: list[bytes]) -> list[Parsed]:
        try:
            write_frame(cast(IO[bytes], self.process.stdin), raws)
            return cast(list[Parsed], read_frame(cast(IO[bytes], self.process.stdout)))
        except (EOFError, OSError, ValueError) as exc:  # ValueError: a pipe closed here meanwhile
            raise WorkerGone(str(exc)) from exc

    def close(self, wait: bool) -> None:
        """Close its stdin (the worker then exits); without ``wait``, kill it at once."""
        if not wait:
            self.process.kill()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        self._thread.shutdown(wait=wait, cancel_futures=True)
        try:
            self.process.wait(timeout=10 if wait else 1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Pending:
    """A batch being parsed; ``result()`` waits for it, in the batch's order."""

    def __init__(self, raws: list[bytes], in_workers: tuple[Parser, list[Future[list[Parsed]]]] | None = None
                 ) -> None:
        self.raws, self._in_workers = raws, in_workers

    @property
    def in_worker(self) -> bool:
        return self._in_workers is not None

    def result(self) -> list[Parsed]:
        if self._in_workers is not None:
            parser, chunks = self._in_workers
            try:
                parsed = [parsed for chunk in chunks for parsed in chunk.result()]
            except (WorkerGone, CancelledError) as exc:  # cancelled: its workers were dropped already
                log.warning("a parser process died (%s); parsing %d message(s) in-process instead", exc,
                            len(self.raws))
                parser.failed()
            else:
                parser.failures = 0  # the count is of failures in a row
                return parsed
        return [parse_one(raw) for raw in self.raws]


class Parser:
    """Hands out Pending batches: parsed by worker processes, or in-process."""

    def __init__(self, workers: int = 0, store: Path | None = None) -> None:
        self.workers = workers
        self.store = store  # the data directory workers store attachments under; None: they do not
        self.failures = 0  # batches in a row the workers failed
        self._workers: list[Worker] = []

    def submit(self, raws: list[bytes]) -> Pending:
        if self.workers <= 0 or len(raws) < POOL_FROM or not self._started():
            return Pending(raws)
        size = -(-len(raws) // len(self._workers))  # one chunk per worker: fewer round trips
        chunks = [raws[i:i + size] for i in range(0, len(raws), size)]
        return Pending(raws, (self, [w.submit(c) for w, c in zip(self._workers, chunks)]))

    def _started(self) -> bool:
        if self._workers:
            return True
        try:
            for _ in range(self.workers):
                self._workers.append(Worker(self.store))
        except OSError as exc:  # the interpreter cannot be started: parse here instead
            log.warning("cannot start a parse worker process (%s); parsing in-process", exc)
            self.failed()
            return False
        log.info("a backlog: started %d parse worker process(es), pids %s", len(self._workers),
                 ",".join(str(w.process.pid) for w in self._workers))
        return True

    def failed(self) -> None:
        """Drop broken workers without waiting for them; the next backlog starts new ones,
        until GIVE_UP_AFTER batches in a row have failed."""
        self.close(wait=False)
        self.failures += 1
        if self.failures >= GIVE_UP_AFTER and self.workers > 0:
            log.error("parse worker processes failed %d batches in a row; parsing in-process from now on "
                      "(set intake.parse_workers = 0 to stop trying, and check that `%s -m maild.parseworker` "
                      "runs)", self.failures, sys.executable)
            self.workers = 0

    def close(self, wait: bool = True) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.close(wait)
