"""Case statuses and their status reasons, as in Dynamics 365 Customer Service, extended by config."""

from __future__ import annotations

ACTIVE, RESOLVED, CANCELLED = "Active", "Resolved", "Cancelled"

BUILT_IN: dict[str, tuple[str, ...]] = {
    ACTIVE: ("In Progress", "On Hold", "Waiting for Details", "Researching"),
    RESOLVED: ("Problem Solved", "Information Provided"),
    CANCELLED: ("Cancelled", "Merged"),
}


def with_extras(active: tuple[str, ...], resolved: tuple[str, ...], cancelled: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The built-in reasons followed by a site's own, without repeats."""
    extras = {ACTIVE: active, RESOLVED: resolved, CANCELLED: cancelled}
    return {status: tuple(dict.fromkeys(BUILT_IN[status] + extras[status])) for status in BUILT_IN}


def status_of(reason: str, reasons: dict[str, tuple[str, ...]]) -> str | None:
    """The status a reason belongs to (case-insensitive), or None if it is not configured."""
    for status, names in reasons.items():
        if reason.lower() in (n.lower() for n in names):
            return status
    return None
