"""A parse worker process: ``python -m maild.parseworker`` (started by maild.parsepool).

It reads batches of raw messages from stdin and writes each batch's parses to stdout, in
order, until stdin closes. A frame is an 8-byte big-endian length and a pickle. Pickle is
safe here: both ends are this maild, joined by a private pipe nobody else can write to.

A plain interpreter that imports the parser and nothing else: about 35 MiB, where a
multiprocessing fork server, its resource tracker and a worker forked from it cost 80.
"""

from __future__ import annotations

import pickle
import signal
import sys
from typing import IO, Any

_LENGTH = 8


def write_frame(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(_LENGTH, "big"))
    stream.write(data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    """The next frame's value; EOFError when the other end has gone (cleanly or not)."""
    head = stream.read(_LENGTH)
    if len(head) < _LENGTH:
        raise EOFError("the other end closed the pipe")
    size = int.from_bytes(head, "big")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other end closed the pipe mid-frame")
    return pickle.loads(data)


def main() -> None:
    """``python -m maild.parseworker [DATA_DIR]``: with a data directory, each message's
    attachments are also written to its attachment store."""
    from pathlib import Path

    from maild.parsepool import parse_all_and_store

    # Ctrl-C reaches the whole process group; the daemon decides when to stop, and the
    # worker then sees its stdin close.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    store = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            raws = read_frame(stdin)
        except EOFError:
            return
        write_frame(stdout, parse_all_and_store(raws, store))


if __name__ == "__main__":
    main()
