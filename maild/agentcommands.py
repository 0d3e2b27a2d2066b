"""Commands at the top of an agent's reply: ``#resolve Problem Solved``, ``#status on-hold``,
``#assign alice``, ``#priority high``, ``#note``, ``#kb 42``.

Parsing is pure: it reads the leading lines that start with ``#word`` (blank lines between
them are allowed) and stops at the first other line, which begins the text for the
customer. ``#123`` is not a command (people write issue numbers), so it ends the block.
The command lines are removed from the text that is relayed. Checking the arguments
against configuration and the case is left to the caller, which runs the commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KNOWN = ("resolve", "status", "assign", "priority", "note", "kb")
USAGE = {
    "resolve": "#resolve <resolution type> [time spent, e.g. 45m]",
    "status": "#status <active status reason, e.g. on-hold>",
    "assign": "#assign <agent>",
    "priority": "#priority <low|normal|high|urgent>",
    "note": "#note",
    "kb": "#kb <article number>",
}
_COMMAND = re.compile(r"^#([A-Za-z][A-Za-z_-]*)\b[ \t]*(.*)$")


@dataclass(frozen=True)
class Command:
    name: str
    argument: str
    line: str  # as the agent wrote it, for confirmations and errors


@dataclass(frozen=True)
class Parsed:
    commands: tuple[Command, ...]
    body: str  # the text without the command lines
    errors: tuple[str, ...]  # one line per bad command, naming it

    @property
    def is_note(self) -> bool:
        return any(c.name == "note" for c in self.commands)


def parse(text: str | None) -> Parsed:
    lines = (text or "").replace("\r\n", "\n").split("\n")
    commands: list[Command] = []
    errors: list[str] = []
    index = 0
    for index, raw in enumerate(lines):  # noqa: B007 - index is used after the loop
        line = raw.strip()
        if not line:
            continue
        m = _COMMAND.match(line)
        if m is None:
            break
        name, argument = m.group(1).lower(), m.group(2).strip()
        commands.append(Command(name, argument, line))
        problem = _check(name, argument)
        if problem:
            errors.append(f"{line}: {problem}")
    else:
        index = len(lines)
    body = "\n".join(lines[index:]).strip("\n") if commands else (text or "")
    return Parsed(tuple(commands), body, tuple(errors))


def _check(name: str, argument: str) -> str | None:
    """Problems visible without the case: unknown command, missing or extra argument."""
    if name not in KNOWN:
        return f"unknown command; known: {', '.join('#' + k for k in KNOWN)}"
    if name == "note":
        return None if not argument else "takes no argument (usage: #note)"
    if not argument:
        return f"needs an argument (usage: {USAGE[name]})"
    if name == "kb" and not argument.isdigit():
        return f"expected an article number (usage: {USAGE[name]})"
    return None
