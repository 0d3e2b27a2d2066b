"""Parse claimed messages in worker processes while the intake writer stores the batch before.

Parsing a message (MIME structure, charsets, HTML to text, quote stripping) costs a few
milliseconds of CPU, and in one process the parser and the writer take turns. With a
backlog, a worker process parses the next batch while the writer turns the current one
into cases, so a second core does the parsing. A batch smaller than ``POOL_FROM`` (a
quiet mailbox, a test) is parsed in-process: starting a worker costs more than it saves.

Workers are forked from a fork server that imported this module and the parser only
(about 30 MiB, where a worker spawned from the ``maild`` command would import all of maild
again): the daemon runs threads, and a fork of a threaded process can inherit a lock some
other thread held. A worker that dies (a parser crash) costs its batch nothing: the batch
is parsed in-process instead, and a new pool starts.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from maild.errors import ParseError
from maild.parse import ParsedMail, parse

log = logging.getLogger("maild.intake")

Parsed = ParsedMail | ParseError
POOL_FROM = 10  # messages in a batch before it is worth a worker process


def parse_one(raw: bytes) -> Parsed:
    """One message, parsed; a message that is not mail comes back as its ParseError."""
    try:
        return parse(raw)
    except ParseError as exc:
        return exc


class Pending:
    """A batch being parsed; ``result()`` waits for it, in the batch's order."""

    def __init__(self, raws: list[bytes], results: Iterator[Parsed] | None, on_broken: Callable[[], None]) -> None:
        self.raws, self._results, self._on_broken = raws, results, on_broken
        self.in_worker = results is not None

    def result(self) -> list[Parsed]:
        if self._results is not None:
            try:
                return list(self._results)
            except BrokenProcessPool:
                log.warning("a parser process died; parsing %d message(s) in-process instead", len(self.raws))
                self._on_broken()
        return [parse_one(raw) for raw in self.raws]


class Parser:
    """Hands out Pending batches: parsed by worker processes, or in-process."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, raws: list[bytes]) -> Pending:
        if self.workers <= 0 or len(raws) < POOL_FROM:
            return Pending(raws, None, self._discard)
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        chunk = -(-len(raws) // self.workers)  # one task per worker: fewer round trips
        try:
            return Pending(raws, self._pool.map(parse_one, raws, chunksize=chunk), self._discard)
        except BrokenProcessPool:
            self._discard()
            return Pending(raws, None, self._discard)

    def _discard(self) -> None:
        """Drop a broken pool without waiting for it; the next backlog starts a new one."""
        self.close(wait=False)

    def close(self, wait: bool = True) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)
