"""Read Message-ID, In-Reply-To and References values (stdlib only, cheap to import).

Kept apart from parse.py so that ``maild inject``, which needs only the Message-ID of the
header block before its commit, does not pay for importing the full mail parser.
"""

from __future__ import annotations

import re

__all__ = ["normalise_message_id", "split_message_ids"]

_BRACKETED = re.compile(r"<([^<>]*)>")
_ID_TOKEN = re.compile(r"<[^<>]*>|[^\s,<>]+")
_COMMENT = re.compile(r"\([^()]*\)")


def normalise_message_id(value: str) -> str | None:
    """Return `value` as "<local@domain>" (first id, no whitespace), or None if empty."""
    match = _BRACKETED.search(value)
    inner = match.group(1) if match else value
    # Folding can split an id over lines; an id never contains whitespace.
    inner = "".join(inner.split()).strip("<>")
    return f"<{inner}>" if inner else None


def split_message_ids(value: str) -> tuple[str, ...]:
    """Read the ids of a References/In-Reply-To value, in order.

    Tolerates missing angle brackets, comma separators, folding and comments.
    """
    ids: list[str] = []
    for token in _ID_TOKEN.findall(_COMMENT.sub(" ", value)):
        # Bare words are only ids when they look like one; the rest is old-MUA prose.
        if token.startswith("<") or "@" in token:
            normalised = normalise_message_id(token)
            if normalised:
                ids.append(normalised)
    return tuple(ids)
