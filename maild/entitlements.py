"""Support contracts that count down: "15 cases for Acme this year", "40 hours for Jane".

A new case draws on the matching active entitlement: one for its contact before one for
its account, covering the case's channel, within its term, the one ending first. Cases
allocations are charged one per case at creation or at resolution (per entitlement);
hours allocations are charged the time spent recorded at resolution. A cancelled case
gives back exactly what it was charged. When nothing is left, the entitlement says what
happens: ``flag`` (create the case, flag it, tell the queue) or ``refuse`` (no case; the
customer gets a templated answer and the message is kept).

Every change, by mail or by an admin, is an audit event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from maild.db import transaction
from maild.errors import MaildError, NotFound
from maild.models import Account, AuditEvent, Case, Contact, Entitlement

CHANNELS = ("email", "phone", "web", "chat")


def find(session: Session, contact_id: int | None, account_id: int | None, channel: str,
         today: date) -> Entitlement | None:
    """The entitlement a new case draws on, or None (remaining may be 0: the caller decides)."""
    if (contact_id is None and account_id is None) or not any_exist(session):
        return None
    owners = [Entitlement.contact_id == contact_id] if contact_id else []
    if account_id:
        owners.append((Entitlement.account_id == account_id) & Entitlement.contact_id.is_(None))
    candidates = session.scalars(
        select(Entitlement).where(or_(*owners), Entitlement.start_date <= today, Entitlement.end_date >= today)
        .order_by(Entitlement.contact_id.is_(None), Entitlement.end_date, Entitlement.id)
    ).all()
    covering = [e for e in candidates if channel in e.channels]
    # Prefer one with something left; fall back to an exhausted one so its policy applies.
    return next((e for e in covering if e.remaining > 0), covering[0] if covering else None)


_ANY = "maild.entitlements.any"  # the session.info key any_exist() remembers its answer under


def any_exist(session: Session) -> bool:
    """Whether any entitlement exists, asked once per transaction: most installations have
    none, and then a new case need not look (an intake batch is one transaction)."""
    known = session.info.get(_ANY)
    if known is None:
        with session.no_autoflush:  # intake never writes entitlements: no need to flush its batch
            known = session.info[_ANY] = session.scalar(select(Entitlement.id).limit(1)) is not None
    return bool(known)


@dataclass(frozen=True)
class Charge:
    entitlement: Entitlement | None
    exhausted: bool

    @property
    def refuse(self) -> bool:
        return self.exhausted and self.entitlement is not None and self.entitlement.on_exhausted == "refuse"


def check(session: Session, contact_id: int | None, account_id: int | None, channel: str, today: date) -> Charge:
    ent = find(session, contact_id, account_id, channel, today)
    exhausted = ent is not None and ent.allocation == "cases" and ent.remaining <= 0
    return Charge(ent, exhausted)


def attach(session: Session, case: Case, charge: Charge, now: datetime, actor: str) -> None:
    """Link a new case to its entitlement; charge it now if it counts at creation."""
    ent = charge.entitlement
    if ent is None:
        return
    case.entitlement_id = ent.id
    if charge.exhausted:
        case.entitlement_flag = f"entitlement {ent.name!r} exhausted ({ent.total} {ent.allocation})"
        _audit(session, case.id, actor, "entitlement_exhausted", now, ent)
        return
    if ent.allocation == "cases" and ent.decrement_on == "creation":
        _charge(session, case, ent, 1, now, actor)


def on_resolve(session: Session, case: Case, now: datetime, actor: str) -> None:
    ent = session.get(Entitlement, case.entitlement_id, with_for_update=True) if case.entitlement_id else None
    if ent is None or case.entitlement_flag:
        return
    if ent.allocation == "cases" and ent.decrement_on == "resolution" and case.entitlement_charged == 0:
        _charge(session, case, ent, 1, now, actor)
    elif ent.allocation == "hours" and case.time_spent_minutes:
        _charge(session, case, ent, case.time_spent_minutes, now, actor)


def on_cancel(session: Session, case: Case, now: datetime, actor: str) -> None:
    """Give back whatever the case was charged."""
    ent = session.get(Entitlement, case.entitlement_id, with_for_update=True) if case.entitlement_id else None
    if ent is None or case.entitlement_charged == 0:
        return
    ent.remaining += case.entitlement_charged
    _audit(session, case.id, actor, "entitlement_restored", now, ent, units=case.entitlement_charged)
    case.entitlement_charged = 0


def _charge(session: Session, case: Case, ent: Entitlement, units: int, now: datetime, actor: str) -> None:
    ent.remaining -= units
    case.entitlement_charged += units
    _audit(session, case.id, actor, "entitlement_charged", now, ent, units=units)


def _audit(session: Session, case_id: int | None, actor: str, action: str, now: datetime, ent: Entitlement,
           **details: Any) -> None:
    from maild.cases import audit  # it imports this module; written as every other event, in order

    audit(session, case_id, actor, action, now, entitlement_id=ent.id, entitlement=ent.name,
          remaining=ent.remaining, **details)


# Admin commands ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewEntitlement:
    name: str
    account: str | None
    contact: str | None
    start: date
    end: date
    allocation: str
    total: int  # cases, or minutes
    channels: tuple[str, ...]
    sla: str | None = None
    decrement_on: str = "creation"
    on_exhausted: str = "flag"


def add(factory: sessionmaker[Session], spec: NewEntitlement, *, actor: str, now: datetime) -> int:
    if (spec.account is None) == (spec.contact is None):
        raise MaildError("give --account or --contact (one of them)")
    if spec.end < spec.start:
        raise MaildError(f"the term ends ({spec.end}) before it starts ({spec.start})")
    if spec.total <= 0:
        raise MaildError("the allocation must be more than zero")
    unknown = [c for c in spec.channels if c not in CHANNELS]
    if unknown or not spec.channels:
        raise MaildError(f"--channels: choose from {', '.join(CHANNELS)}")
    with transaction(factory) as session:
        account_id, contact_id = _owner(session, spec.account, spec.contact)
        ent = Entitlement(name=spec.name, account_id=account_id, contact_id=contact_id, start_date=spec.start,
                          end_date=spec.end, allocation=spec.allocation, total=spec.total, remaining=spec.total,
                          channels=list(spec.channels), sla=spec.sla, decrement_on=spec.decrement_on,
                          on_exhausted=spec.on_exhausted, created_at=now)
        session.add(ent)
        session.info[_ANY] = True
        session.flush()
        _audit(session, None, actor, "entitlement_added", now, ent)
        return ent.id


def _owner(session: Session, account: str | None, contact: str | None) -> tuple[int | None, int | None]:
    if account is not None:
        found = session.scalar(select(Account.id).where(Account.name == account))
        if found is None:
            raise NotFound(f"no account {account!r} (import customers first: `maild customers import`)")
        return found, None
    found = session.scalar(select(Contact.id).where(Contact.email == (contact or "").strip().lower()))
    if found is None:
        raise NotFound(f"no contact {contact!r}")
    return None, found


def adjust(factory: sessionmaker[Session], entitlement_id: int, *, remaining: int | None, add_units: int | None,
           reason: str, actor: str, now: datetime) -> dict[str, Any]:
    if (remaining is None) == (add_units is None):
        raise MaildError("give --remaining N or --add N (one of them)")
    if not reason.strip():
        raise MaildError("--reason: say why (it goes into the audit trail)")
    with transaction(factory) as session:
        ent = session.get(Entitlement, entitlement_id, with_for_update=True)
        if ent is None:
            raise NotFound(f"no entitlement {entitlement_id}")
        before = ent.remaining
        ent.remaining = remaining if remaining is not None else ent.remaining + (add_units or 0)
        _audit(session, None, actor, "entitlement_adjusted", now, ent, before=before, reason=reason.strip())
        return view(session, ent)


def list_all(session: Session, account: str | None = None) -> list[dict[str, Any]]:
    query = select(Entitlement).order_by(Entitlement.id)
    if account:
        query = query.join(Account, Entitlement.account_id == Account.id).where(Account.name == account)
    return [view(session, e) for e in session.scalars(query)]


def show(session: Session, entitlement_id: int) -> dict[str, Any]:
    ent = session.get(Entitlement, entitlement_id)
    if ent is None:
        raise NotFound(f"no entitlement {entitlement_id}")
    data = view(session, ent)
    data["cases"] = [{"reference": c.reference, "status": c.status, "charged": c.entitlement_charged,
                      "flag": c.entitlement_flag}
                     for c in session.scalars(select(Case).where(Case.entitlement_id == ent.id).order_by(Case.id))]
    data["history"] = [{"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "details": e.details}
                       for e in session.scalars(select(AuditEvent).where(AuditEvent.action.like("entitlement_%"))
                                                .order_by(AuditEvent.id))
                       if e.details.get("entitlement_id") == ent.id]
    return data


def view(session: Session, ent: Entitlement) -> dict[str, Any]:
    unit = "minutes" if ent.allocation == "hours" else "cases"
    return {"id": ent.id, "name": ent.name, "account": ent.account.name if ent.account else None,
            "contact": ent.contact.email if ent.contact else None, "start": ent.start_date.isoformat(),
            "end": ent.end_date.isoformat(), "allocation": ent.allocation, "unit": unit, "total": ent.total,
            "remaining": ent.remaining, "channels": list(ent.channels), "sla": ent.sla,
            "decrement_on": ent.decrement_on, "on_exhausted": ent.on_exhausted}
