"""The customer records: accounts and contacts, imported from CSV and looked up by admins.

The CSV has a header row. ``email`` is required; ``name``, ``account``, ``tier`` and
``domain`` (the account's mail domain) are optional. A contact is matched by its email
address and an account by its name, so importing the same file twice changes nothing.
Every line gets a verdict (created, updated, unchanged or rejected with the reason), and
the rows are written in batches, each in one transaction.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from maild.db import transaction
from maild.errors import MaildError, NotFound
from maild.models import Account, Case, Contact

COLUMNS = ("email", "name", "account", "tier", "domain")
BATCH = 500


@dataclass(frozen=True)
class Row:
    line: int
    email: str
    name: str
    account: str
    tier: str
    domain: str


@dataclass(frozen=True)
class Verdict:
    line: int
    email: str
    result: str  # created | updated | unchanged | rejected
    detail: str = ""


@dataclass
class ImportReport:
    verdicts: list[Verdict] = field(default_factory=list)
    accounts_created: int = 0

    def count(self, result: str) -> int:
        return sum(v.result == result for v in self.verdicts)


def read_rows(stream: TextIO) -> Iterator[Row | Verdict]:
    """Each data line as a Row, or a rejected Verdict saying what is wrong with it."""
    reader = csv.DictReader(stream)
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if "email" not in header:
        raise MaildError(f"the CSV header must name an 'email' column (columns: {', '.join(COLUMNS)})")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise MaildError(f"unknown CSV column {unknown[0]!r}; columns: {', '.join(COLUMNS)}")
    reader.fieldnames = header
    seen: set[str] = set()
    for record in reader:
        line = reader.line_num
        yield _row(line, record, seen)


def _row(line: int, record: dict[str, Any], seen: set[str]) -> Row | Verdict:
    values = {k: (record.get(k) or "").strip() for k in COLUMNS}
    if None in record:  # DictReader puts surplus cells under the key None
        return Verdict(line, values["email"], "rejected", "more cells than columns")
    try:
        # Syntax only: special-use domains (.test, .local, .internal) are real inside companies.
        email = validate_email(values["email"], check_deliverability=False, test_environment=True).normalized.lower()
    except EmailNotValidError as exc:
        return Verdict(line, values["email"], "rejected", f"invalid email: {exc}")
    if email in seen:
        return Verdict(line, email, "rejected", "the same email appears earlier in the file")
    seen.add(email)
    if values["tier"] and not values["account"]:
        return Verdict(line, email, "rejected", "a tier belongs to an account: give the account too")
    return Row(line, email, values["name"], values["account"], values["tier"].lower(), values["domain"].lower())


def import_rows(factory: sessionmaker[Session], rows: Iterable[Row | Verdict], *, now: datetime,
                progress: Callable[[int], None] = lambda n: None) -> ImportReport:
    report = ImportReport()
    batch: list[Row] = []
    for item in rows:
        if isinstance(item, Verdict):
            report.verdicts.append(item)
            progress(1)
            continue
        batch.append(item)
        if len(batch) >= BATCH:
            _write(factory, batch, report, now, progress)
            batch = []
    if batch:
        _write(factory, batch, report, now, progress)
    report.verdicts.sort(key=lambda v: v.line)
    return report


def _write(factory: sessionmaker[Session], batch: list[Row], report: ImportReport, now: datetime,
           progress: Callable[[int], None]) -> None:
    with transaction(factory) as session:
        emails, names = [r.email for r in batch], {r.account for r in batch}
        contacts = {c.email: c for c in session.scalars(select(Contact).where(Contact.email.in_(emails)))}
        accounts = {a.name: a for a in session.scalars(select(Account).where(Account.name.in_(names)))}
        for row in batch:
            account = _account(session, accounts, row, now, report) if row.account else None
            report.verdicts.append(_contact(session, contacts, row, account, now))
    progress(len(batch))


def _account(session: Session, accounts: dict[str, Account], row: Row, now: datetime, report: ImportReport) -> Account:
    account = accounts.get(row.account)
    if account is None:
        account = Account(name=row.account, domain=row.domain or None, tier=row.tier or None, created_at=now)
        session.add(account)
        session.flush()
        accounts[row.account] = account
        report.accounts_created += 1
    else:
        account.tier = row.tier or account.tier
        account.domain = row.domain or account.domain
    return account


def _contact(session: Session, contacts: dict[str, Contact], row: Row, account: Account | None,
             now: datetime) -> Verdict:
    contact = contacts.get(row.email)
    if contact is None:
        session.add(Contact(email=row.email, name=row.name, account_id=account.id if account else None,
                            created_at=now))
        return Verdict(row.line, row.email, "created", f"account {account.name}" if account else "")
    changes = []
    if row.name and row.name != contact.name:
        contact.name = row.name
        changes.append("name")
    if account is not None and contact.account_id != account.id:
        contact.account_id = account.id
        changes.append("account")
    return Verdict(row.line, row.email, "updated" if changes else "unchanged", ", ".join(changes))


def list_contacts(session: Session, *, account: str | None = None, tier: str | None = None,
                  limit: int = 200) -> list[dict[str, Any]]:
    query = select(Contact).outerjoin(Account, Contact.account_id == Account.id).order_by(Contact.email).limit(limit)
    if account:
        query = query.where(func.lower(Account.name) == account.lower())
    if tier:
        query = query.where(func.lower(Account.tier) == tier.lower())
    return [_summary(c) for c in session.scalars(query)]


def show_contact(session: Session, email: str) -> dict[str, Any]:
    contact = session.scalar(select(Contact).where(Contact.email == email.strip().lower()))
    if contact is None:
        raise NotFound(f"no customer with email {email}")
    view = _summary(contact)
    view["cases"] = [
        {"reference": c.reference, "title": c.title, "status": c.status, "created_at": c.created_at.isoformat()}
        for c in session.scalars(select(Case).where(Case.contact_id == contact.id).order_by(Case.id.desc()).limit(50))
    ]
    return view


def _summary(contact: Contact) -> dict[str, Any]:
    account = contact.account
    return {"email": contact.email, "name": contact.name, "account": account.name if account else None,
            "tier": account.tier if account else None, "domain": account.domain if account else None,
            "created_at": contact.created_at.isoformat()}
