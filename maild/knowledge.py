"""The knowledge base: versioned articles, full-text search, articles mailed to customers.

An article's text lives in numbered versions. A draft is edited in place; editing a
published article adds a version, and the old ones stay readable. Search looks at each
article's current version: an FTS5 table (``kb_fts``, rowid = article id) on SQLite, kept
in step here whenever a version is written, and a generated, GIN-indexed tsvector column
``kb_article_version.kb_fts_document`` on PostgreSQL (both built by migration 0010). Both
tokenise the same way (lower case, no stemming, every term required), so the same simple
query finds the same articles; relevance is then boosted by how often an article resolved
cases and how it was rated. Suggestions in acknowledgements choose a message's telling
words and rank titles and keywords in what each process keeps in memory (maild.kbindex),
and search bodies only for places left over.
"""

from __future__ import annotations

import math
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from maild import kbindex, sla, subjects
from maild.db import insert_after_flush, transaction
from maild.errors import MaildError, NotFound
from maild.kbtext import HEAD, excerpt, terms
from maild.models import (
    INCOMING_EMAIL, KB_ARCHIVED, KB_DRAFT, KB_PUBLISHED, Activity, Case, KbArticle, KbArticleVersion, KbCaseLink,
)
from maild.outbox import Draft
from maild.refkeys import tag_subject

if TYPE_CHECKING:
    from maild.cases import IntakeContext

STATES = (KB_DRAFT, KB_PUBLISHED, KB_ARCHIVED)
TEMPLATE = "kb_article"
ARTICLE = "article"  # the outbox kind of an article mailed to a customer
_STOPWORDS = frozenset("""a an and are as at be but by can cannot do does for from has have how i if in is it its my
 no not of on or our so that the their this to was we what when where which who why will with you your
 after again all am any been before being both did doing each few further had having he her here hers him his into
 me more most nor off once only other out over own same she should some such than then there these they those
 through too under until up very were while whom would yours yourself please hello hi thanks thank""".split())


@dataclass(frozen=True)
class Text:
    """What an author writes: the parts of a version, and the article's subject and language."""

    title: str | None = None
    body: str | None = None
    keywords: str | None = None
    subject: str | None = None  # a subject path, "Billing > Invoice"
    language: str | None = None


def keywords_of(*texts: str | None, title: str, most: int = 5) -> str:
    """A few keywords: the title's non-stopword terms, the ones most used in ``texts`` first."""
    tally = Tally(t for s in (title, *texts) for t in terms(s or "") if t not in _STOPWORDS and len(t) > 2)
    ordered = sorted(dict.fromkeys(t for t in terms(title) if t in tally), key=lambda t: -tally[t])
    return ", ".join(ordered[:most])


# Articles and versions ------------------------------------------------------------


def article(session: Session, number: int, *, lock: bool = False) -> KbArticle:
    query = select(KbArticle).where(KbArticle.number == number)
    found = session.scalar(query.with_for_update() if lock else query)
    if found is None:
        raise NotFound(f"no article {number}")
    return found


def version_of(session: Session, art: KbArticle, version: int | None = None) -> KbArticleVersion:
    wanted = art.current_version if version is None else version
    found = session.scalar(select(KbArticleVersion).where(KbArticleVersion.article_id == art.id,
                                                          KbArticleVersion.version == wanted))
    if found is None:
        raise NotFound(f"article {art.number} has no version {wanted} (it has 1 to {art.current_version})")
    return found


def add(session: Session, t: Text, *, author: str, now: datetime, slug: str | None = None) -> KbArticle:
    """A new draft article with its first version."""
    from maild.cases import next_number  # maild.cases builds on modules this one is used by

    if not (t.title or "").strip():
        raise MaildError("an article needs a title")
    art = KbArticle(number=next_number(session, "kb_article"), slug=slug, state=KB_DRAFT, current_version=1,
                    subject_id=_subject_id(session, t.subject), language=(t.language or "en").strip(),
                    created_at=now, updated_at=now)
    session.add(art)
    session.flush()
    _write_version(session, art, KbArticleVersion(version=1, title="", body="", keywords=""), t, author, now)
    return art


def edit(session: Session, art: KbArticle, t: Text, *, author: str, now: datetime) -> str:
    """Change an article; a published (or archived) one gets a new version, a draft is edited in place."""
    if t.subject is not None:
        art.subject_id = _subject_id(session, t.subject)
    if t.language is not None:
        art.language = t.language.strip()
    current = version_of(session, art)
    changed = any(getattr(t, k) is not None and getattr(t, k) != getattr(current, k)
                  for k in ("title", "body", "keywords"))
    art.updated_at = now
    if not changed:
        return f"article {art.number}: text unchanged (version {art.current_version})"
    if art.state == KB_DRAFT:
        _write_version(session, art, current, t, author, now)
        return f"article {art.number}: draft version {art.current_version} updated"
    new = KbArticleVersion(version=art.current_version + 1, title=current.title, body=current.body,
                           keywords=current.keywords)
    art.current_version = new.version
    _write_version(session, art, new, t, author, now)
    return f"article {art.number}: version {new.version} (version {new.version - 1} kept)"


def set_state(session: Session, art: KbArticle, state: str, *, now: datetime) -> str:
    if state not in STATES:
        raise MaildError(f"{state!r} is not an article state; choose from {', '.join(STATES)}")
    before, art.state, art.updated_at = art.state, state, now
    if state == KB_PUBLISHED and art.published_at is None:
        art.published_at = now
    if before != state:
        kbindex.bump(session)
    return f"article {art.number}: {before} -> {state}"


def rate(session: Session, art: KbArticle, helpful: bool) -> str:
    count_rating(art, helpful)
    session.flush()
    session.refresh(art)
    return f"article {art.number}: {art.helpful_yes} helpful, {art.helpful_no} not helpful"


def _write_version(session: Session, art: KbArticle, row: KbArticleVersion, t: Text, author: str,
                   now: datetime) -> None:
    row.article_id, row.created_at, row.author = art.id, now, author
    row.title = (t.title if t.title is not None else row.title).strip()[:500]
    row.body = t.body if t.body is not None else row.body
    row.keywords = _keywords(t.keywords) if t.keywords is not None else row.keywords
    if not row.title:
        raise MaildError("an article needs a title")
    session.add(row)
    session.flush()
    if art.state != KB_DRAFT:
        kbindex.bump(session)
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("DELETE FROM kb_fts WHERE rowid = :id"), {"id": art.id})
        session.execute(text("INSERT INTO kb_fts (rowid, title, keywords, body) VALUES (:id, :t, :k, :b)"),
                        {"id": art.id, "t": row.title, "k": row.keywords, "b": row.body})


def _keywords(value: str | Iterable[str]) -> str:
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return ", ".join(dict.fromkeys(k.strip() for k in items if k.strip()))[:1000]


def _subject_id(session: Session, path: str | None) -> int | None:
    if path is None or not path.strip():
        return None
    paths = subjects.all_paths(session)
    wanted = " ".join(path.split()).lower()
    found = next((i for p, i in paths.items() if " ".join(p.split()).lower() == wanted), None)
    if found is None:
        raise NotFound(f"no subject {path!r} (see `maild subjects list`)")
    return found


# Views -------------------------------------------------------------------------------


def view(session: Session, art: KbArticle, version: int | None = None) -> dict[str, Any]:
    v = version_of(session, art, version)
    return {
        "number": art.number, "state": art.state, "version": v.version, "current_version": art.current_version,
        "title": v.title, "body": v.body, "keywords": v.keywords, "subject": subjects.path_of(session, art.subject_id),
        "language": art.language, "slug": art.slug, "author": v.author, "version_created_at": v.created_at.isoformat(),
        "created_at": art.created_at.isoformat(), "updated_at": art.updated_at.isoformat(),
        "times_linked": art.times_linked, "times_sent": art.times_sent, "times_resolved": art.times_resolved,
        "helpful_yes": art.helpful_yes, "helpful_no": art.helpful_no,
    }


def listing(session: Session, state: str | None = None) -> list[dict[str, Any]]:
    query = (select(KbArticle, KbArticleVersion).join(KbArticleVersion, (KbArticleVersion.article_id == KbArticle.id)
                                                      & (KbArticleVersion.version == KbArticle.current_version))
             .order_by(KbArticle.number))
    if state is not None:
        query = query.where(KbArticle.state == state)
    return [{"number": a.number, "state": a.state, "version": a.current_version, "title": v.title,
             "keywords": v.keywords, "language": a.language, "subject": subjects.path_of(session, a.subject_id),
             "updated_at": a.updated_at.isoformat()} for a, v in session.execute(query)]


def stats(session: Session) -> dict[str, Any]:
    """Which articles work (linked, sent, resolved, rated) and which subjects have no published article."""
    rows = listing(session)
    by_number = {a.number: a for a in session.scalars(select(KbArticle))}
    articles = [{"number": r["number"], "title": r["title"], "state": r["state"],
                 "linked": by_number[r["number"]].times_linked, "sent": by_number[r["number"]].times_sent,
                 "resolved": by_number[r["number"]].times_resolved, "helpful_yes": by_number[r["number"]].helpful_yes,
                 "helpful_no": by_number[r["number"]].helpful_no} for r in rows]
    covered = {a.subject_id for a in by_number.values() if a.state == KB_PUBLISHED}
    gaps = sorted(p for p, i in subjects.all_paths(session).items() if i not in covered)
    return {"articles": articles, "subjects_without_articles": gaps}


# Search ----------------------------------------------------------------------------------

# PostgreSQL: kb_article_version.kb_fts_document (migration 0010) is the weighted tsvector
# of title (A), keywords (B) and body (D), generated and GIN-indexed by the database.
_PG_WEIGHTS = "0.333, 0.333, 0.667, 1.0"  # body (D), -, keywords (B), title (A): 1 : 2 : 3, as bm25 below


# Only the columns a result shows, and the head of the body (kbtext.HEAD) for its
# excerpt of 200: loading whole articles as ORM objects cost more than the search itself.
# Built once: building the statement for every suggestion cost a tenth of it.
_SHOWN = (select(KbArticle.id, KbArticle.number, KbArticle.state, KbArticle.times_resolved, KbArticleVersion.title,
                 KbArticleVersion.keywords, func.substr(KbArticleVersion.body, 1, HEAD).label("head"))
          .join(KbArticleVersion, (KbArticleVersion.article_id == KbArticle.id)
                & (KbArticleVersion.version == KbArticle.current_version))
          .where(KbArticle.id.in_(bindparam("ids", expanding=True))))


def search(session: Session, query: str, *, limit: int = 10, state: str | None = KB_PUBLISHED,
           any_term: bool = False) -> list[dict[str, Any]]:
    """Articles whose current version holds every term of ``query`` (with ``any_term``: one of
    them), best first: relevance times a boost for cases resolved and helpful ratings.
    ``state=None`` searches all states."""
    words = terms(query)
    if not words or limit <= 0:
        return []
    # Ranked by relevance in the database, then boosted here: ten candidates per place is plenty
    # (a boost rarely lifts an article further), and loading fewer keeps suggestions cheap.
    pool = limit * 10
    params: dict[str, Any] = {"n": pool, "s": state}
    where_state = "AND a.state = :s" if state is not None else ""
    boosts = "a.times_resolved, a.helpful_yes, a.helpful_no"
    if session.get_bind().dialect.name == "sqlite":
        params["q"] = (" OR " if any_term else " ").join(f'"{w}"' for w in words)
        sql = (f"SELECT a.id, -bm25(kb_fts, 3.0, 2.0, 1.0), {boosts} FROM kb_fts JOIN kb_article a "
               f"ON a.id = kb_fts.rowid WHERE kb_fts MATCH :q {where_state} ORDER BY bm25(kb_fts, 3.0, 2.0, 1.0) "
               f"LIMIT :n")
    else:
        params["q"] = (" | " if any_term else " & ").join(words)
        sql = (f"SELECT a.id, ts_rank('{{{_PG_WEIGHTS}}}', v.kb_fts_document, q), {boosts} FROM kb_article_version v "
               f"JOIN kb_article a ON a.id = v.article_id AND v.version = a.current_version, "
               f"to_tsquery('simple', :q) q WHERE v.kb_fts_document @@ q {where_state} "
               f"ORDER BY 2 DESC LIMIT :n")
    # Boosted here, from the candidates' counters: only the winners' text is then read.
    scored = sorted(((float(rel) * boost(resolved, yes, no), int(i)) for i, rel, resolved, yes, no
                     in session.execute(text(sql), params)), key=lambda x: (-x[0], x[1]))[:limit]
    if not scored:
        return []
    rows = {r.id: r for r in session.connection().execute(_SHOWN, {"ids": [i for _, i in scored]})}
    ranked = sorted(((score, rows[i]) for score, i in scored if i in rows), key=lambda x: (-x[0], x[1].number))
    return [{"id": r.id, "number": r.number, "title": r.title, "keywords": r.keywords, "state": r.state,
             "excerpt": excerpt(r.head), "score": round(score, 6), "times_resolved": r.times_resolved}
            for score, r in ranked]


def suggestions(session: Session, subject: str | None, message: str | None, most: int) -> list[dict[str, Any]]:
    """The ``most`` published articles that best match a customer's message: its most used
    terms (the subject's count twice), any of which may match."""
    if most <= 0:
        return []
    words_in = terms(f"{subject or ''} {subject or ''} {(message or '')[:8000]}", most=None)  # every word counts
    tally = Tally(t for t in words_in if t not in _STOPWORDS and len(t) > 2)
    index, boosts = _ARTICLES.current(session)
    # The rarest of its dozen most used words: they say the most about a message, and a
    # search by them matches a few articles instead of half the knowledge base.
    words = index.rarest([t for t, _ in tally.most_common(12)])
    if not words:
        return []
    # Titles and keywords first, ranked in this process's index (maild.kbindex): a title
    # match is the better suggestion. Bodies (searched in the database) fill places left.
    found = _by_headings(index, boosts, words, most)
    if len(found) < most:
        seen = {f["id"] for f in found}
        found += [r for r in search(session, " ".join(words), limit=most, any_term=True)
                  if r["id"] not in seen][:most - len(found)]
    return found


def _by_headings(index: kbindex.Index, boosts: dict[int, kbindex.Boosts], words: list[str],
                 most: int) -> list[dict[str, Any]]:
    """Titles and keywords, ranked in memory as ``search`` ranks in the database: ten
    candidates per place by relevance, then boosted by their counters."""
    candidates = index.rank(words, most * 10)
    scored = sorted(((rel * boost(*boosts[i]), index.shown[i]) for rel, i in candidates if i in boosts),
                    key=lambda x: (-x[0], x[1].number))[:most]
    return [{"id": a.id, "number": a.number, "title": a.title, "keywords": a.keywords, "state": KB_PUBLISHED,
             "excerpt": a.excerpt, "score": round(score, 6), "times_resolved": boosts[a.id][0]}
            for score, a in scored]


_ARTICLES = kbindex.Articles()


def boost(times_resolved: int, helpful_yes: int, helpful_no: int) -> float:
    """1 for an unused, unrated article; more for each case it resolved (tapering off) and
    for helpful ratings, less for unhelpful ones (between 0 and 2 for ratings alone)."""
    rating = 2 * (helpful_yes + 1) / (helpful_yes + helpful_no + 2)
    return (1 + math.log1p(times_resolved)) * rating


def count_rating(art: KbArticle, helpful: bool, step: int = 1) -> None:
    """Add (or, with ``step`` -1, take back) a rating in the article's counters, in SQL so
    concurrent raters do not overwrite each other."""
    if helpful:
        art.helpful_yes = KbArticle.helpful_yes + step
    else:
        art.helpful_no = KbArticle.helpful_no + step


# Cases -------------------------------------------------------------------------------------


def send(session: Session, ctx: IntakeContext, case: Case, number: int, *, actor: str, now: datetime) -> str:
    """Mail published article ``number`` to the case's customer and link it to the case."""
    from maild.cases import outgoing_activity, thread_headers, audit

    art = session.scalar(select(KbArticle).where(KbArticle.number == number, KbArticle.state == KB_PUBLISHED)
                         .with_for_update())
    if art is None:
        raise NotFound(f"no published article {number}")
    if case.contact is None:
        raise MaildError(f"case {case.reference} has no customer to send article {number} to")
    v = version_of(session, art)
    queue = case.queue
    rendered = ctx.renderer.render(TEMPLATE, {"case": case, "contact": case.contact, "queue": queue, "article": art,
                                              "version": v, "now": now})
    in_reply_to, refs = thread_headers(session, case)
    draft = Draft(kind=ARTICLE, from_name=queue.display_name, from_addr=queue.address, to_name=case.contact.name,
                  to_addr=case.contact.email, subject=tag_subject(rendered.subject or v.title, case.reference),
                  text=rendered.text, html=rendered.html, reply_to=ctx.reply_address(queue, case),
                  in_reply_to=in_reply_to, references=refs)
    activity = outgoing_activity(session, ctx, case, draft, now)
    if case.first_response_at is None:
        case.first_response_at = now
    sla.met(session, case.id, "first_response", now)
    link(session, art, case, now, sent=True, message_id=activity.message_id)
    art.times_sent = KbArticle.times_sent + 1
    audit(session, case.id, actor, "kb_sent", now, article=art.number, version=v.version)
    return f"{case.reference}: article {art.number} (\"{v.title}\") sent to {case.contact.email}"


def link(session: Session, art: KbArticle, case: Case, now: datetime, *, sent: bool = False,
         message_id: str | None = None) -> bool:
    """Link an article to a case (once), by an agent; True if the link is new. An article
    only suggested to the customer so far becomes a real link now."""
    row = session.scalar(select(KbCaseLink).where(KbCaseLink.article_id == art.id, KbCaseLink.case_id == case.id))
    if row is None:
        session.add(KbCaseLink(article_id=art.id, case_id=case.id, linked_at=now, sent=sent, message_id=message_id))
    else:
        row.sent = row.sent or sent
        row.message_id = message_id or row.message_id
        if not row.suggested:
            return False
        row.suggested, row.linked_at = False, now
    art.times_linked = KbArticle.times_linked + 1
    return True


def suggested(session: Session, case: Case, article_ids: list[int], message_id: str | None, now: datetime) -> None:
    """Remember the articles an acknowledgement suggested, so the customer can rate them
    by mail ("article 42 helped"); they count as linked only once rated helpful."""
    if not article_ids:
        return
    # Plain rows, not ORM objects: as objects, these rows made every acknowledged case's
    # flush cost more than the suggestion itself. They are written after the batch's
    # flush, which writes the case they point at (see maild.cases._case_keys).
    insert_after_flush(session, KbCaseLink, [
        {"article_id": i, "case_id": case.id, "linked_at": now, "suggested": True, "sent": False,
         "message_id": message_id} for i in article_ids])


def linked(session: Session, case_id: int) -> list[dict[str, Any]]:
    """The articles linked to a case (for ``maild cases show``), in the order they were linked."""
    rows = session.execute(
        select(KbArticle.number, KbArticleVersion.title, KbCaseLink.sent, KbCaseLink.linked_at, KbCaseLink.suggested,
               KbCaseLink.helpful, KbCaseLink.rating_comment)
        .join(KbArticle, KbArticle.id == KbCaseLink.article_id)
        .join(KbArticleVersion, (KbArticleVersion.article_id == KbArticle.id)
              & (KbArticleVersion.version == KbArticle.current_version))
        .where(KbCaseLink.case_id == case_id).order_by(KbCaseLink.id)
    ).all()
    return [{"number": n, "title": t, "sent": bool(sent), "linked_at": at.isoformat(), "suggested": bool(sug),
             "helpful": helpful, "rating_comment": comment} for n, t, sent, at, sug, helpful, comment in rows]


def on_resolve(session: Session, case: Case) -> None:
    """The case was resolved: each article linked to it resolved one more case."""
    linked = select(KbCaseLink.article_id).where(KbCaseLink.case_id == case.id, KbCaseLink.suggested.is_(False))
    session.execute(update(KbArticle).where(KbArticle.id.in_(linked))
                    .values(times_resolved=KbArticle.times_resolved + 1).execution_options(synchronize_session=False))


def draft_from_case(session: Session, case: Case, *, author: str, now: datetime) -> KbArticle:
    """A draft article from a resolved case: the customer's first message is the question,
    the resolution narrative the answer; subject and keywords come from the case."""
    if not (case.resolution or "").strip():
        raise MaildError(f"case {case.reference} has no resolution narrative yet; resolve it first")
    slug = f"case:{case.reference}"
    existing = session.scalar(select(KbArticle.number).where(KbArticle.slug == slug))
    if existing is not None:
        raise MaildError(f"case {case.reference} already became article {existing} (`maild kb show {existing}`)")
    first = session.scalar(select(Activity).where(Activity.case_id == case.id, Activity.kind == INCOMING_EMAIL)
                           .order_by(Activity.id).limit(1))
    question = ((first.text_stripped or first.text) if first else "") or ""
    body = f"## Question\n\n{question.strip()}\n\n## Answer\n\n{(case.resolution or '').strip()}\n"
    art = add(session, Text(title=case.title, body=body, keywords=keywords_of(question, case.resolution,
                                                                              title=case.title)),
              author=author, now=now, slug=slug)
    art.subject_id = case.subject_id
    return art


# Import ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Imported:
    path: Path
    outcome: str  # created | updated | unchanged | error
    number: int | None = None
    error: str | None = None


def import_dir(factory: sessionmaker[Session], directory: Path, *, author: str, now: Callable[[], datetime],
               progress: Callable[[Path], None] | None = None) -> list[Imported]:
    """Import every ``*.md`` under ``directory`` (front matter: id, title, keywords, subject,
    language, state), each file in its own transaction: an article is matched by its ``id``
    (or the file name without .md), so a second run updates instead of duplicating, and a bad
    file is reported by name without stopping the others."""
    if not directory.is_dir():
        raise NotFound(f"{directory}: not a folder")
    results = []
    for path in sorted(directory.rglob("*.md")):
        try:
            slug, t, state = _read(path)
            with transaction(factory) as session:
                results.append(_import_one(session, path, slug, t, state, author, now()))
        except MaildError as exc:
            results.append(Imported(path, "error", error=str(exc)))
        if progress is not None:
            progress(path)
    return results


def _import_one(session: Session, path: Path, slug: str, t: Text, state: str | None, author: str,
                now: datetime) -> Imported:
    art = session.scalar(select(KbArticle).where(KbArticle.slug == slug).with_for_update())
    if art is None:
        art = add(session, t, author=author, now=now, slug=slug)
        outcome = "created"
    else:
        before = _fingerprint(session, art)
        edit(session, art, t, author=author, now=now)
        outcome = "unchanged" if before == _fingerprint(session, art) else "updated"
    if state is not None and state != art.state:
        set_state(session, art, state, now=now)
        outcome = "updated" if outcome == "unchanged" else outcome
    return Imported(path, outcome, art.number)


def _fingerprint(session: Session, art: KbArticle) -> tuple[Any, ...]:
    v = version_of(session, art)
    return art.current_version, art.subject_id, art.language, v.title, v.body, v.keywords


def _read(path: Path) -> tuple[str, Text, str | None]:
    import frontmatter
    import yaml

    try:
        post = frontmatter.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MaildError(f"{path}: cannot read: {exc}") from None
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as exc:
        raise MaildError(f"{path}: bad front matter: {' '.join(str(exc).split())}") from None
    meta = post.metadata
    if not isinstance(meta, dict):
        raise MaildError(f"{path}: bad front matter: expected `key: value` lines between the --- lines")
    title = meta.get("title")
    if not isinstance(title, str) or not title.strip():
        raise MaildError(f"{path}: the front matter needs a title")
    state = meta.get("state")
    if state is not None and state not in STATES:
        raise MaildError(f"{path}: state {state!r} is not one of {', '.join(STATES)}")
    keywords = meta.get("keywords", "")
    if not isinstance(keywords, (str, list)):
        raise MaildError(f"{path}: keywords must be a list or a comma-separated string")
    slug = str(meta.get("id") or path.stem).strip()[:200]
    subject, language = meta.get("subject"), meta.get("language")
    return slug, Text(title=title, body=post.content.strip() + "\n", keywords=_keywords(keywords),
                      subject=str(subject) if subject is not None else None,
                      language=str(language) if language is not None else None), state
