"""The published articles, held in memory by each process, for suggestions in acknowledgements.

Every acknowledgement that suggests articles picks the message's rarest words (those in
the fewest published articles), ranks the articles whose titles and keywords hold them,
and boosts each by how often it resolved cases and how it was rated. Asked of the database
(FTS5, or a tsvector through its GIN index), those steps cost 2-10 ms per new case on
SQLite and more on PostgreSQL, inside the intake transaction. A knowledge base is small
next to the mail stream and changes rarely, so each process keeps:

- an inverted index of titles and keywords, ranked by BM25 as FTS5 ranks (title weighed
  3, keywords 2, as in ``knowledge.search``);
- how many published articles hold each term anywhere (title, keywords or body);
- what a suggestion shows of an article (number, title, keywords, excerpt).

Fresh across processes: every change to an article's text or state bumps the
``kb_generation`` counter (``bump``) in the same transaction. A reader asks for the counter
once per transaction and rebuilds when the number has moved. It reads the counter before
the articles, so an index can only be labelled older than it is, which costs one needless
rebuild, never a stale answer. The boosting counters change with every resolved case and
rating, without a new generation; they are reloaded when a minute old, which can only
reorder suggestions briefly, never show an article that is not published.
"""

from __future__ import annotations

import math
import time
from collections import Counter as Tally
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from maild.kbtext import excerpt, terms
from maild.models import KB_PUBLISHED, Counter, KbArticle, KbArticleVersion

GENERATION = "kb_generation"  # the counter row bumped by every change to an article's text or state
_SEEN = "maild.kbindex.generation"  # session.info key: the generation this transaction read
TITLE_WEIGHT, KEYWORDS_WEIGHT = 3.0, 2.0
_K1, _B = 1.2, 0.75  # BM25's usual constants (FTS5 uses the same)

_READ = select(Counter.value).where(Counter.name == bindparam("name"))
_PUBLISHED = (select(KbArticle.id, KbArticle.number, KbArticleVersion.title, KbArticleVersion.keywords,
                     KbArticleVersion.body)
              .join(KbArticleVersion, (KbArticleVersion.article_id == KbArticle.id)
                    & (KbArticleVersion.version == KbArticle.current_version))
              .where(KbArticle.state == KB_PUBLISHED))
_COUNTERS = select(KbArticle.id, KbArticle.times_resolved, KbArticle.helpful_yes, KbArticle.helpful_no) \
    .where(KbArticle.state == KB_PUBLISHED)


def bump(session: Session) -> None:
    """Tell every process's index that the published articles may have changed."""
    from maild.cases import next_number  # maild.cases builds on the knowledge base, which uses this

    next_number(session, GENERATION)
    session.info.pop(_SEEN, None)


def generation(session: Session) -> int:
    """The knowledge base's generation, read once per transaction (an intake batch is one)."""
    seen = session.info.get(_SEEN)
    if seen is None:
        seen = session.info[_SEEN] = int(session.connection().execute(_READ, {"name": GENERATION})
                                         .scalar_one_or_none() or 0)
    return int(seen)


@dataclass(frozen=True)
class Shown:
    """What a suggestion shows of an article; it changes only with the generation."""

    id: int
    number: int
    title: str
    keywords: str
    excerpt: str


Boosts = tuple[int, int, int]  # an article's times_resolved, helpful_yes, helpful_no


@dataclass(frozen=True)
class Index:
    """Headings as term -> (IDF, [(article id, BM25 term-frequency part)]), computed once per
    build so that ranking is a sum of products; and each term's article count."""

    generation: int
    postings: dict[str, tuple[float, list[tuple[int, float]]]]
    shown: dict[int, Shown]
    frequency: dict[str, int]  # published articles holding the term in title, keywords or body

    @classmethod
    def build(cls, gen: int, rows: list[tuple[int, int, str, str, str]]) -> Index:
        """``rows``: (id, number, title, keywords, body) of each published article."""
        weights: dict[str, list[tuple[int, float]]] = {}
        lengths: dict[int, int] = {}
        frequency: Tally[str] = Tally()
        for article_id, _, title, keywords, body in rows:
            in_title, in_keywords = Tally(terms(title or "", None)), Tally(terms(keywords or "", None))
            lengths[article_id] = sum(in_title.values()) + sum(in_keywords.values())
            for term in in_title.keys() | in_keywords.keys():
                weight = TITLE_WEIGHT * in_title[term] + KEYWORDS_WEIGHT * in_keywords[term]
                weights.setdefault(term, []).append((article_id, weight))
            frequency.update(in_title.keys() | in_keywords.keys() | set(terms(body or "", None)))
        average = (sum(lengths.values()) / len(lengths) if lengths else 1.0) or 1.0
        postings = {}
        for term, found in weights.items():
            # FTS5's IDF: never negative, so a word in most headings still counts a little.
            idf = max(math.log((len(lengths) - len(found) + 0.5) / (len(found) + 0.5)), 1e-6)
            postings[term] = (idf, [(i, w * (_K1 + 1) / (w + _K1 * (1 - _B + _B * lengths[i] / average)))
                                    for i, w in found])
        shown = {i: Shown(i, n, t, k or "", excerpt(b or "")) for i, n, t, k, b in rows}
        return cls(gen, postings, shown, dict(frequency))

    def rarest(self, words: list[str], keep: int = 5) -> list[str]:
        """The ``keep`` words found in the fewest published articles (and in at least one):
        they say the most about a message."""
        return [w for n, _, w in sorted((self.frequency.get(w, 0), i, w) for i, w in enumerate(words)) if n > 0][:keep]

    def rank(self, words: list[str], most: int) -> list[tuple[float, int]]:
        """The ``most`` articles whose headings hold any of ``words``, by BM25: (score, id), best first."""
        scores: dict[int, float] = {}
        for word in dict.fromkeys(words):
            idf, found = self.postings.get(word, (0.0, []))
            for article_id, part in found:
                scores[article_id] = scores.get(article_id, 0.0) + idf * part
        return sorted(((s, i) for i, s in scores.items()), key=lambda x: (-x[0], x[1]))[:most]


class Articles:
    """One index per database this process opens, rebuilt when the generation moves, and the
    published articles' boosting counters, reloaded when ``ttl`` seconds old."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._indexes: dict[str, Index] = {}
        self._boosts: dict[str, tuple[float, int, dict[int, Boosts]]] = {}  # database -> (when, generation, ...)

    def current(self, session: Session) -> tuple[Index, dict[int, Boosts]]:
        """The index and the boosting counters for ``session``'s database, as fresh as promised."""
        gen, database, now = generation(session), str(session.get_bind().engine.url), time.monotonic()
        index, boosts = self._indexes.get(database), self._boosts.get(database)
        if index is None or index.generation != gen:
            session.flush()  # an article changed in this transaction may not be written yet
            rows = [(int(i), int(n), t, k, b) for i, n, t, k, b in session.connection().execute(_PUBLISHED)]
            index = self._indexes[database] = Index.build(gen, rows)
        if boosts is None or boosts[1] != gen or now - boosts[0] >= self.ttl:
            session.flush()
            counted = session.connection().execute(_COUNTERS)
            boosts = self._boosts[database] = (now, gen, {int(i): (r, y, n) for i, r, y, n in counted})
        return index, boosts[2]
