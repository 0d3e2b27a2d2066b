"""How the knowledge base reads text: its terms (as both databases' full-text indexes
tokenise: lower case, letters and digits) and the short excerpt a search result shows."""

from __future__ import annotations

import re

_TERM = re.compile(r"[^\W_]+")
HEAD = 600  # characters of a body an excerpt is cut from (whitespace runs collapse to one)


def terms(query: str, most: int | None = 32) -> list[str]:
    """The search terms in ``query``: its words, lower-cased (both databases tokenise so);
    the first ``most`` of them (None: all)."""
    return [t.lower() for t in _TERM.findall(query)][:most]


def excerpt(body: str, size: int = 200) -> str:
    """The start of ``body`` on one line, cut at a word."""
    flat = " ".join(body[:HEAD].split())
    return flat if len(flat) <= size else flat[:size].rsplit(" ", 1)[0] + " ..."
