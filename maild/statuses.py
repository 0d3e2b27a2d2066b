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


def transition_refusal(transitions: dict[str, tuple[str, ...]], reasons: dict[str, tuple[str, ...]],
                       source: str, target: str) -> str | None:
    """Why ``[cases] transitions`` forbids moving from reason ``source`` to ``target``, or None.

    A listed target may be a reason or a whole status ("Resolved" allows every resolution).
    A source reason that is not listed may move anywhere.
    """
    allowed = next((v for k, v in transitions.items() if k.lower() == source.lower()), None)
    if allowed is None:
        return None
    target_status = status_of(target, reasons)
    for entry in allowed:
        if entry.lower() == target.lower() or (target_status and entry.lower() == target_status.lower()):
            return None
    return (f"{source} -> {target} is not an allowed transition ([cases.transitions] allows {source} -> "
            f"{', '.join(allowed) or 'nothing'})")
