"""What reading a stored message's Message-ID costs the poller's thread, per message.

``maild.inbound.header_message_id`` reads it from a plain header block line by line, and
hands anything unusual to the email package; before, the email package parsed every
header of the block (``BytesHeaderParser``, compat32). Both are timed on bench/imap.py's
corpus (17 KB on average, Received trace headers included), best of ``--reps``, and must
give the same Message-IDs.

    .venv/bin/python bench/headers.py [--messages 2000] [--reps 3]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import imap  # noqa: E402  (bench/imap.py: the IMAP corpus's shape)
import intake as corpus_mod  # noqa: E402  (bench/intake.py: the realistic corpus generator)

from maild.inbound import header_message_id, parsed_message_id  # noqa: E402
from maild.msgids import normalise_message_id  # noqa: E402


def by_the_email_package(raw: bytes) -> str | None:
    """header_message_id as it was: the email package's parse of the header block, which
    ended at the first match of the old pattern."""
    end = re.search(rb"\r?\n\r?\n", raw)
    value = parsed_message_id(raw[:end.end()] if end else raw)
    return normalise_message_id(value) if value else None


def best(read: Callable[[bytes], str | None], raws: list[bytes], reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.process_time()
        for raw in raws:
            read(raw)
        times.append((time.process_time() - started) / len(raws))
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    raws = [g.raw for g in corpus_mod.generate(opts.messages, 200, 1, shape=imap.SHAPE)]
    if [header_message_id(r) for r in raws] != [by_the_email_package(r) for r in raws]:
        print("bench: FAILED: the two readings disagree", file=sys.stderr)
        return 1
    old, new = best(by_the_email_package, raws, opts.reps), best(header_message_id, raws, opts.reps)
    print(f"Message-ID of a stored message, {opts.messages} messages, best of {opts.reps}: "
          f"email package {old * 1e6:.1f} µs, maild {new * 1e6:.1f} µs of CPU a message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
