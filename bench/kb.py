"""Knowledge-base search over many articles: median and p95 latency of `kb search` queries
(every term required) and of acknowledgement suggestions (any of a message's main terms;
the first one after a change also builds the process's index of titles and keywords).

Writes --articles published articles (default 10,000) of generated text whose words follow
a Zipf-like distribution, then times --queries searches of each kind through
maild.knowledge, each in its own transaction as the CLI and intake run them.

    .venv/bin/python bench/kb.py [--articles 10000] [--queries 300]
                                 [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import intake as bench_intake  # noqa: E402  (bench/intake.py: the PostgreSQL scratch schema)
import sla as bench_sla  # noqa: E402  (bench/sla.py: a throw-away installation)

from maild import knowledge  # noqa: E402
from maild.app import App  # noqa: E402
from maild.db import transaction  # noqa: E402

CHUNK = 1000


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return list(dict.fromkeys("".join(rng.choice(letters) for _ in range(rng.randint(4, 9))) for _ in range(size)))


def words(rng: random.Random, vocab: list[str], n: int) -> str:
    # Zipf-like: low indexes are common words, high ones rare.
    return " ".join(vocab[min(int(rng.paretovariate(1.1)) - 1, len(vocab) - 1)] for _ in range(n))


def fill(app: App, rng: random.Random, vocab: list[str], articles: int) -> float:
    started = time.perf_counter()
    for first in range(0, articles, CHUNK):
        with transaction(app.factory) as session:
            for _ in range(min(CHUNK, articles - first)):
                t = knowledge.Text(title=words(rng, vocab, 6), body=words(rng, vocab, 150),
                                   keywords=", ".join(words(rng, vocab, 3).split()))
                art = knowledge.add(session, t, author="bench", now=bench_sla.NOW)
                knowledge.set_state(session, art, "published", now=bench_sla.NOW)
    return time.perf_counter() - started


def timed(app: App, queries: list[str], run: Callable[..., list[object]]) -> dict[str, float]:
    latencies, hits = [], 0
    for q in queries:
        started = time.perf_counter()
        with transaction(app.factory) as session:
            hits += len(run(session, q))
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {"median_ms": round(statistics.median(latencies) * 1000, 2),
            "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 2),
            "mean_hits": round(hits / len(queries), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--articles", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--database-url", help="PostgreSQL base URL; default: SQLite in a temp dir")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--output", type=Path)
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    vocab = vocabulary(rng)
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maild-kb-")))
        url = stack.enter_context(bench_intake.postgres_schema(opts.database_url)) if opts.database_url \
            else f"sqlite:///{folder / 'maild.db'}"
        app = bench_sla.install(folder, url)
        stack.callback(app.close)
        fill_s = fill(app, rng, vocab, opts.articles)
        searches = [words(rng, vocab, rng.randint(1, 2)) for _ in range(opts.queries)]
        messages = [words(rng, vocab, 60) for _ in range(opts.queries)]
        search = timed(app, searches, lambda s, q: knowledge.search(s, q, limit=10))
        # The first suggestion after a change to the knowledge base builds the process's
        # index of titles and keywords (maild.kbindex); the rest use it.
        build = timed(app, messages[:1], lambda s, q: knowledge.suggestions(s, q[:40], q, 3))["median_ms"]
        suggest = timed(app, messages, lambda s, q: knowledge.suggestions(s, q[:40], q, 3))
    database = "postgresql" if opts.database_url else "sqlite"
    figures = {"database": database, "articles": opts.articles, "queries": opts.queries,
               "fill_seconds": round(fill_s, 1), "search": search, "suggestions": suggest,
               "first_suggestion_ms": build}
    print(f"maild kb search: {database}, {opts.articles} published articles (written in {fill_s:.1f} s)")
    print(f"  kb search (1-2 words, all required): median {search['median_ms']} ms, p95 {search['p95_ms']} ms, "
          f"{search['mean_hits']} hits on average (top 10)")
    print(f"  suggestions (a 60-word message, any main word): median {suggest['median_ms']} ms, "
          f"p95 {suggest['p95_ms']} ms; the first, which builds the index of titles and keywords: {build} ms")
    if opts.output:
        opts.output.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
