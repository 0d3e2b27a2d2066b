"""Make and find case reference keys such as ``CAS-01234-AB12CD`` in mail subjects.

A key is a configurable prefix, a sequence number (at least five digits) and a random
suffix. The suffix makes keys unguessable enough that a typo does not land on another
customer's case; the sequence keeps them short and sortable.
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache

# No 0/O or 1/I: people retype keys from printed mail.
SUFFIX_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
SUFFIX_LENGTH = 6
assert 256 % len(SUFFIX_ALPHABET) == 0, "make_reference maps a random byte onto the alphabet"


def make_reference(prefix: str, number: int, suffix: str | None = None) -> str:
    if suffix is None:
        # One read of the system's randomness, not one per character: a byte modulo 32 is
        # uniform over the alphabet, since 32 divides 256.
        suffix = "".join(SUFFIX_ALPHABET[byte % len(SUFFIX_ALPHABET)] for byte in secrets.token_bytes(SUFFIX_LENGTH))
    return f"{prefix}-{number:05d}-{suffix}"


@lru_cache(maxsize=16)
def _pattern(prefix: str) -> re.Pattern[str]:
    # re.escape: the prefix comes from config and must never act as regex syntax.
    return re.compile(rf"\[\s*({re.escape(prefix)}-\d{{5,}}-[A-Z0-9]{{{SUFFIX_LENGTH}}})\s*\]", re.IGNORECASE)


def find_references(subject: str, prefix: str) -> list[str]:
    """Every bracketed key in a subject, upper-cased, in order of appearance."""
    return [m.upper() for m in _pattern(prefix).findall(subject)]


def tag_subject(subject: str, reference: str) -> str:
    """Ensure ``[REF]`` is in the subject, appending it if a template left it out."""
    if f"[{reference}]".lower() in subject.lower():
        return subject
    return f"{subject} [{reference}]".strip()


_PREFIXES = re.compile(r"^\s*((re|aw|sv|vs|antw|wg|fw|fwd|tr|rif|r)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def clean_title(subject: str, prefix: str) -> str:
    """A case title from a subject: reply/forward prefixes and our own keys removed."""
    title = _pattern(prefix).sub("", subject)
    title = _PREFIXES.sub("", title)
    return " ".join(title.split())
