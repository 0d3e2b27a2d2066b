"""Customers rate knowledge articles by mail.

An article mailed to a customer ends "Did this article help? Reply yes or no"; an
acknowledgement that suggests articles asks for "article 42 helped". The answer is the
first line of the customer's reply, like the satisfaction survey's (maild.csat), and for
the same reason there are no one-click links: mail security scanners follow every link
and would vote.

A rating belongs to the article's link with the case (one vote per case: answering again
changes the vote), so only articles actually sent or suggested on that case can be rated,
and only by the case's own people (the caller checks that).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.csat import reply_answer
from maild.knowledge import count_rating
from maild.models import KbArticle, KbCaseLink

_YES = (r"yes|yep|yeah|helpful|(?:it |that |this )?(?:helped|worked)|(?:it |that )?solved(?: it)?|"
        r"\U0001F44D")
_NO = (r"no|nope|not helpful|unhelpful|not really|(?:it |that |this )?(?:did not|didn't|does not|doesn't|has not|"
       r"hasn't) (?:help|work)(?:ed)?|\U0001F44E")
_TAIL = r"\s*[.!]*\s*(?:$|[-\u2013\u2014:.,;!)]\s*(.*)$)"  # the last group: the rest of the line
# "article 42 helped", "KB 42: not helpful", "#42 yes - thanks", "article 42 was helpful"
_NAMED = re.compile(rf"^(?:article|kb)?\s*#?\s*(\d{{1,9}})\s*[:\-,]?\s*(?:was\s+|is\s+)?(?:(?P<no>{_NO})|(?P<yes>{_YES})){_TAIL}",
                    re.IGNORECASE)
# "yes", "No, the printer still fails", "helpful!" (only in reply to the article's own mail)
_BARE = re.compile(rf"^(?:(?P<no>{_NO})|(?P<yes>{_YES})){_TAIL}", re.IGNORECASE)


_THANKS = re.compile(r"^(?:many |great, |perfect, )?(?:thanks?|thank you|thx|cheers|ta)\b(?: (?:a lot|so much|very much|"
                     r"again|for (?:the|your) help|all good now))?[\s.!:)]*$", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    article: int | None  # the article number named; None: the article of the mail answered
    helpful: bool
    comment: str

    @property
    def only_a_rating(self) -> bool:
        """Nothing in it for an agent to act on: thanks, or a "no" without a word of why."""
        return self.helpful or not self.comment

    @property
    def settles_it(self) -> bool:
        """"Article 42 helped, thanks": the customer's problem is solved. Not when they go on
        to write anything but thanks: "yes, but now the scanner fails too" is more work."""
        return self.helpful and (not self.comment or _THANKS.match(self.comment) is not None)


def verdict(text: str | None) -> Verdict | None:
    """The rating a reply's first non-blank line gives, with the rest (up to the quote) as its comment."""
    found = reply_answer(text, _NAMED, _BARE)
    if found is None:
        return None
    m, comment = found
    return Verdict(int(m.group(1)) if m.re is _NAMED else None, m.group("yes") is not None, comment)


@dataclass(frozen=True)
class Rating:
    link_id: int
    article: int  # its number
    verdict: Verdict


def find(session: Session, case_id: int, in_reply_to: tuple[str, ...], text: str | None) -> Rating | None:
    """The article of ``case_id`` that a customer's reply rates, if it is a rating.

    A bare "yes" counts only as the answer to the article's own mail (In-Reply-To), so a
    "yes" to an agent's question is never taken for a vote.
    """
    v = verdict(text)
    if v is None:
        return None
    query = select(KbCaseLink.id, KbArticle.number).join(KbArticle, KbArticle.id == KbCaseLink.article_id) \
        .where(KbCaseLink.case_id == case_id)
    if v.article is not None:
        query = query.where(KbArticle.number == v.article)
    elif in_reply_to:
        query = query.where(KbCaseLink.message_id.in_(in_reply_to), KbCaseLink.suggested.is_(False))
    else:
        return None
    row = session.execute(query.limit(1)).first()
    return Rating(row[0], row[1], v) if row else None


def record(session: Session, rating: Rating, now: datetime) -> str:
    """Store the vote on the link and in the article's counters (moving it if the customer
    changed their mind). A suggested article the customer found helpful now counts as linked."""
    link = session.get(KbCaseLink, rating.link_id, with_for_update=True)
    art = session.get(KbArticle, link.article_id, with_for_update=True) if link else None
    if link is None or art is None:
        return f"article {rating.article}: gone"
    helpful, before = rating.verdict.helpful, link.helpful
    if before is not helpful:
        if before is not None:
            count_rating(art, before, -1)
        count_rating(art, helpful, +1)
    if helpful and link.suggested:
        link.suggested = False
        art.times_linked = KbArticle.times_linked + 1
    link.helpful, link.rated_at, link.rating_comment = helpful, now, rating.verdict.comment[:2000] or None
    return f"article {rating.article} rated {'helpful' if helpful else 'not helpful'}"
