"""Business process flows: which process a case follows, the stage it is at, and moving it on.

A process lives in the config (``[[processes]]``); a case stores only the name of its stage.
A case with no stage yet, or with one its process no longer has (the config changed), is at
the first stage of its process. Every change of stage is an audit event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from maild import subjects
from maild.cases import audit
from maild.casework import NotAllowed
from maild.config import ProcessConfig, StageConfig, subject_key
from maild.db import transaction
from maild.errors import MaildError, NotFound
from maild.models import ACTIVE, Case

# What a stage may require, and the Case column that holds it.
COLUMNS = {"case_type": "case_type", "subject": "subject_id", "priority": "priority", "severity": "severity",
           "owner": "owner_id", "customer": "contact_id", "account": "account_id", "parent": "parent_id",
           "entitlement": "entitlement_id"}


@dataclass(frozen=True)
class Position:
    """Where a case stands: its process and the index of its stage in it."""

    process: ProcessConfig
    index: int

    @property
    def stage(self) -> StageConfig:
        return self.process.stages[self.index]

    @property
    def final(self) -> StageConfig:
        return self.process.stages[-1]

    @property
    def is_final(self) -> bool:
        return self.index == len(self.process.stages) - 1


def process_for(processes: tuple[ProcessConfig, ...], case_type: str | None,
                subject_path: str | None) -> ProcessConfig | None:
    """The process a case follows: the one for its type, else the one for its subject (the
    nearest ancestor listed), else the default one; None when no process applies.

    The type wins over the subject because an agent sets it by hand, while rules set the subject.
    """
    if case_type:
        chosen = next((p for p in processes if case_type.lower() in {t.lower() for t in p.case_types}), None)
        if chosen is not None:
            return chosen
    if subject_path:
        path = subject_key(subject_path)
        listed = [(len(key), p) for p in processes for key in map(subject_key, p.subjects)
                  if path == key or path.startswith(key + " > ")]
        if listed:
            return max(listed, key=lambda pair: pair[0])[1]
    return next((p for p in processes if p.is_default), None)


def missing_fields(stage: StageConfig, case: Case) -> list[str]:
    """The fields ``stage`` requires that are not set on ``case``, in the order the stage lists them."""
    return [name for name in stage.requires if getattr(case, COLUMNS[name]) in (None, "")]


def current_stage(session: Session, case: Case, processes: tuple[ProcessConfig, ...]) -> Position | None:
    """The case's process and stage; None when no process applies to it."""
    if not processes:  # the usual case: no subject lookup on every resolve and `cases show`
        return None
    process = process_for(processes, case.case_type, subjects.path_of(session, case.subject_id))
    if process is None:
        return None
    names = [s.name for s in process.stages]
    return Position(process, names.index(case.stage) if case.stage in names else 0)


def describe(session: Session, processes: tuple[ProcessConfig, ...], case: Case) -> dict[str, Any]:
    """What ``maild cases stage`` shows: the process, its stages, the current one and what it lacks."""
    at = current_stage(session, case, processes)
    view: dict[str, Any] = {"reference": case.reference, "case_type": case.case_type, "process": None,
                            "stage": None, "stages": [], "missing": [], "final": False, "entered_at": None,
                            "require_final_stage_to_resolve": False}
    if at is None:
        return view
    entered = case.stage_entered_at if case.stage == at.stage.name else None
    view.update(process=at.process.name, stage=at.stage.name, missing=missing_fields(at.stage, case),
                final=at.is_final, entered_at=(entered or case.created_at).isoformat(),
                stages=[{"name": s.name, "requires": list(s.requires), "current": i == at.index}
                        for i, s in enumerate(at.process.stages)],
                require_final_stage_to_resolve=at.process.require_final_stage_to_resolve)
    return view


def show(factory: sessionmaker[Session], processes: tuple[ProcessConfig, ...], reference: str) -> dict[str, Any]:
    with transaction(factory) as session:
        case = session.scalar(select(Case).where(Case.reference == reference.strip().upper()))
        if case is None:
            raise NotFound(f"no case {reference}")
        return describe(session, processes, case)


def advance(session: Session, processes: tuple[ProcessConfig, ...], case: Case, *, actor: str,
            now: datetime) -> str:
    """Move an active, locked case to the next stage of its process, once its stage's fields are all set."""
    if case.status != ACTIVE:
        raise NotAllowed(f"case {case.reference} is {case.status}; only active cases move through stages")
    at = current_stage(session, case, processes)
    if at is None:
        raise NotAllowed(f"{case.reference}: no business process flow applies to it (see [[processes]])")
    missing = missing_fields(at.stage, case)
    if missing:
        raise NotAllowed(f"{case.reference}: stage {at.stage.name} needs {', '.join(missing)} before it can advance")
    if at.is_final:
        raise NotAllowed(f"{case.reference}: {at.stage.name} is the final stage of process {at.process.name}; "
                         "there is no next stage")
    nxt = at.process.stages[at.index + 1].name
    _enter(session, case, at.process.name, at.stage.name, nxt, actor, now)
    return f"{case.reference}: stage {at.stage.name} -> {nxt} (process {at.process.name})"


def check_resolvable(session: Session, processes: tuple[ProcessConfig, ...], case: Case) -> None:
    """Refuse to resolve a case whose process requires its final stage, until it is there and
    that stage's fields are set (casework.resolve calls this with the case locked)."""
    at = current_stage(session, case, processes)
    if at is None or not at.process.require_final_stage_to_resolve:
        return
    if not at.is_final:
        raise NotAllowed(f"{case.reference} is at stage {at.stage.name}; process {at.process.name} requires the "
                         f"final stage {at.final.name} before resolution (`maild cases stage {case.reference} --next`)")
    missing = missing_fields(at.stage, case)
    if missing:
        raise NotAllowed(f"{case.reference}: stage {at.stage.name} needs {', '.join(missing)} before resolution")


def set_type(session: Session, processes: tuple[ProcessConfig, ...], case: Case, case_type: str, *, actor: str,
             now: datetime) -> str:
    """Set an active, locked case's type; when that puts it under another process it starts that one over."""
    name = _type_name(processes, case_type)
    if case.status != ACTIVE:
        raise NotAllowed(f"case {case.reference} is {case.status}; reopen it to change its type")
    said = f"{case.reference}: case type {name}"
    if case.case_type == name:
        return said + " (unchanged)"
    was = current_stage(session, case, processes)
    audit(session, case.id, actor, "case_type_changed", now, previous=case.case_type, case_type=name)
    case.case_type, case.updated_at = name, now
    before = _name(was.process) if was else None
    after = process_for(processes, name, subjects.path_of(session, case.subject_id))
    if before == _name(after):
        return said
    first = after.stages[0].name if after else None
    _enter(session, case, _name(after), was.stage.name if was else None, first, actor, now,
           reason=f"process changed from {before} to {_name(after)}")
    return f"{said}; process {_name(after) or '(none)'}, stage {first or '(none)'}"


def _enter(session: Session, case: Case, process: str | None, previous: str | None, stage: str | None, actor: str,
           now: datetime, **why: str) -> None:
    case.stage, case.stage_entered_at, case.updated_at = stage, now if stage else None, now
    audit(session, case.id, actor, "stage_changed", now, process=process, **{"from": previous, "to": stage}, **why)


def _type_name(processes: tuple[ProcessConfig, ...], case_type: str) -> str:
    """The configured spelling of a type a process lists ("problem" is "Problem"), else as given."""
    text = case_type.strip()
    if not text or len(text) > 50:
        raise MaildError(f"a case type is 1 to 50 characters, got {case_type!r}")
    return next((t for p in processes for t in p.case_types if t.lower() == text.lower()), text)


def _name(process: ProcessConfig | None) -> str | None:
    return process.name if process else None
