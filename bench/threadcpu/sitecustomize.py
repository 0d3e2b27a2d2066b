"""Each thread's CPU time in a ``maild run`` daemon, written when the daemon exits.

Put this folder on PYTHONPATH of a benchmark that starts daemons (as an absolute path: the
daemons run in their own directories), with the folder to write to in
MAILD_BENCH_THREAD_CPU:

    MAILD_BENCH_THREAD_CPU=/tmp/threads PYTHONPATH=$PWD/bench/threadcpu \\
        .venv/bin/python bench/imap.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        --messages 2000 --small 0

Each ``maild run`` (not ``--once``) writes ``<pid>.json``: every thread's
``time.thread_time()`` when its ``run`` ended (maild's runners are named ``maild-intake``,
``maild-dispatch``, ``maild-imap:<queue>`` ...), the main thread's (start-up, signals) and
the process's total. Python runs a ``sitecustomize`` module found on the path at start-up.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from pathlib import Path

_OUT = os.environ.get("MAILD_BENCH_THREAD_CPU")
_CPU: dict[str, float] = {}


def _install() -> None:
    run = threading.Thread.run

    def timed_run(self: threading.Thread) -> None:
        try:
            run(self)
        finally:
            _CPU[self.name] = _CPU.get(self.name, 0.0) + time.thread_time()

    threading.Thread.run = timed_run  # type: ignore[method-assign]
    atexit.register(_write)


def _write() -> None:
    if "run" not in sys.argv or "--once" in sys.argv or _OUT is None:
        return
    times = os.times()
    figures = {**_CPU, "main thread": time.thread_time(), "process": times.user + times.system}
    Path(_OUT).mkdir(parents=True, exist_ok=True)
    (Path(_OUT) / f"{os.getpid()}.json").write_text(json.dumps(figures, indent=2))


if _OUT is not None:
    _install()
