"""The published articles' titles and keywords, held in memory and ranked there, for suggestions.

Every acknowledgement that suggests articles first searches the headings (titles and
keywords) of the published articles. Asked of the database (FTS5 or a tsvector), that
search was most of a suggestion's cost: about 3 ms, in every new case's transaction.
Headings are short and change rarely, so each process keeps an inverted index of them
and ranks there by BM25, the way FTS5 ranks (title weighed 3, keywords 2, as in
``knowledge.search``). The counters that boost a ranking (cases resolved, ratings) change
often and are read from the database for the candidates each time.

Fresh across processes: every change to an article's text or state bumps the
``kb_generation`` counter (``bump``) in the same transaction. A reader asks for the
counter once per transaction and rebuilds its index when the number has moved. It reads
the counter before the articles, so an index can only be labelled older than it is,
which costs one needless rebuild, never a stale answer.
"""

from __future__ import annotations

import math
from collections import Counter as Tally
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from maild.kbtext import excerpt, terms
from maild.models import KB_PUBLISHED, Counter, KbArticle, KbArticleVersion

GENERATION = "kb_generation"  # the counter row bumped by every change to an article's text or state
_SEEN = "maild.kbheadings.generation"  # session.info key: the generation this transaction read
TITLE_WEIGHT, KEYWORDS_WEIGHT = 3.0, 2.0
_K1, _B = 1.2, 0.75  # BM25's usual constants (FTS5 uses the same)

_READ = select(Counter.value).where(Counter.name == bindparam("name"))
_PUBLISHED = (select(KbArticle.id, KbArticle.number, KbArticleVersion.title, KbArticleVersion.keywords,
                     func.substr(KbArticleVersion.body, 1, 600))
              .join(KbArticleVersion, (KbArticleVersion.article_id == KbArticle.id)
                    & (KbArticleVersion.version == KbArticle.current_version))
              .where(KbArticle.state == KB_PUBLISHED))


def bump(session: Session) -> None:
    """Tell every process's index that the published headings may have changed."""
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


@dataclass(frozen=True)
class Index:
    """An inverted index of headings: term -> (IDF, [(article id, BM25 term-frequency part)]),
    computed once per build so that ranking is a sum of products."""

    generation: int
    postings: dict[str, tuple[float, list[tuple[int, float]]]]
    shown: dict[int, Shown]

    @classmethod
    def build(cls, gen: int, rows: list[tuple[int, int, str, str, str]]) -> Index:
        """``rows``: (id, number, title, keywords, start of body) of each published article."""
        weights: dict[str, list[tuple[int, float]]] = {}
        lengths: dict[int, int] = {}
        for article_id, _, title, keywords, _ in rows:
            in_title, in_keywords = Tally(terms(title or "", None)), Tally(terms(keywords or "", None))
            lengths[article_id] = sum(in_title.values()) + sum(in_keywords.values())
            for term in in_title.keys() | in_keywords.keys():
                weight = TITLE_WEIGHT * in_title[term] + KEYWORDS_WEIGHT * in_keywords[term]
                weights.setdefault(term, []).append((article_id, weight))
        average = (sum(lengths.values()) / len(lengths) if lengths else 1.0) or 1.0
        postings = {}
        for term, found in weights.items():
            # FTS5's IDF: never negative, so a word in most headings still counts a little.
            idf = max(math.log((len(lengths) - len(found) + 0.5) / (len(found) + 0.5)), 1e-6)
            postings[term] = (idf, [(i, w * (_K1 + 1) / (w + _K1 * (1 - _B + _B * lengths[i] / average)))
                                    for i, w in found])
        shown = {int(i): Shown(int(i), int(n), t, k or "", excerpt(head or "")) for i, n, t, k, head in rows}
        return cls(gen, postings, shown)

    def rank(self, words: list[str], most: int) -> list[tuple[float, int]]:
        """The ``most`` articles whose headings hold any of ``words``, by BM25: (score, id), best first."""
        scores: dict[int, float] = {}
        for word in dict.fromkeys(words):
            idf, found = self.postings.get(word, (0.0, []))
            for article_id, part in found:
                scores[article_id] = scores.get(article_id, 0.0) + idf * part
        return sorted(((s, i) for i, s in scores.items()), key=lambda x: (-x[0], x[1]))[:most]


class Headings:
    """One index per database this process opens, rebuilt when the generation moves."""

    def __init__(self) -> None:
        self._by_database: dict[str, Index] = {}

    def index(self, session: Session) -> Index:
        gen, database = generation(session), str(session.get_bind().engine.url)
        known = self._by_database.get(database)
        if known is None or known.generation != gen:
            rows = [tuple(r) for r in session.connection().execute(_PUBLISHED)]
            known = self._by_database[database] = Index.build(gen, rows)
        return known
