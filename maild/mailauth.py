"""Whether a trusted mail server vouched for a sender's domain (Authentication-Results, RFC 8601).

Our own border server checks DKIM and DMARC and writes the outcome into an
Authentication-Results header under its authserv-id. Headers claiming another id, or
written by anyone else, prove nothing: the border server removes incoming headers that
claim its id, so only the ids listed in ``[security] trusted_authserv_ids`` are read.
Parsing is left to ``authres``, the parser from the dkimpy project.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import authres


def proof(headers: Iterable[str], trusted: Collection[str], domain: str | None) -> str | None:
    """``"dkim"`` or ``"dmarc"`` if a trusted header shows a pass for ``domain``, else None."""
    if not domain or not trusted:
        return None
    domain, trusted_ids = domain.lower(), {t.lower() for t in trusted}
    for value in headers:
        try:
            header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
        except (authres.AuthResError, ValueError, IndexError):
            continue  # a header we cannot read proves nothing
        if str(header.authserv_id).lower() not in trusted_ids:
            continue
        for result in header.results:
            if str(result.result).lower() == "pass" and _domain_of(result) == domain:
                method = str(result.method).lower()
                if method in ("dkim", "dmarc"):
                    return method
    return None


def _domain_of(result: object) -> str | None:
    """The domain a DKIM (header.d, or header.i's domain) or DMARC (header.from) result is about."""
    props = {(p.type, p.name): str(p.value).lower() for p in getattr(result, "properties", ())}
    value = props.get(("header", "d")) or props.get(("header", "from")) or props.get(("header", "i"))
    return value.rpartition("@")[2] if value else None
