"""The subject tree (Billing > Invoice Dispute > Wrong Address): defined in rule files, mirrored
into the ``subject`` table so cases can point at a node, and printed by ``maild subjects list``.

Like queues and agents, subjects are never deleted: old cases still point at them.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from maild.db import again_on_conflict, transaction
from maild.models import Subject
from maild.rules.conditions import SEPARATOR


def sync(factory: sessionmaker[Session], paths: tuple[str, ...]) -> dict[str, int]:
    """Create the nodes of ``paths`` that are missing; return path -> id for every stored node.

    A worker starting at the same moment may create the same node: then read what it wrote.
    """
    return again_on_conflict(lambda: _sync(factory, paths))


def _sync(factory: sessionmaker[Session], paths: tuple[str, ...]) -> dict[str, int]:
    with transaction(factory) as session:
        ids = all_paths(session)
        for path in paths:  # parents come before their children in RuleSet.subjects
            if path not in ids:
                parent, _, name = path.rpartition(SEPARATOR)
                node = Subject(name=name, parent_id=ids.get(parent) if parent else None)
                session.add(node)
                session.flush()
                ids[path] = node.id
        return ids


def all_paths(session: Session) -> dict[str, int]:
    nodes = {s.id: (s.name, s.parent_id) for s in session.scalars(select(Subject))}

    def path(node_id: int) -> str:
        name, parent = nodes[node_id]
        return f"{path(parent)}{SEPARATOR}{name}" if parent in nodes else name

    return {path(i): i for i in nodes}


def path_of(session: Session, subject_id: int | None) -> str | None:
    """The path of one node, walking up its parents (a few lookups, not the whole tree)."""
    names: list[str] = []
    seen: set[int] = set()
    while subject_id is not None and subject_id not in seen:
        node = session.get(Subject, subject_id)
        if node is None:
            return None
        seen.add(subject_id)
        names.append(node.name)
        subject_id = node.parent_id
    return SEPARATOR.join(reversed(names)) or None


def tree_lines(paths: dict[str, int], defined: tuple[str, ...]) -> list[str]:
    """The tree as indented lines; nodes no rule file defines any more are marked."""
    lines = []
    for path in sorted(paths, key=lambda p: p.split(SEPARATOR)):
        depth = path.count(SEPARATOR)
        mark = "" if path in defined else "   (no longer in the rule files)"
        lines.append(f"{'  ' * depth}{path.rsplit(SEPARATOR, 1)[-1]}{mark}")
    return lines
