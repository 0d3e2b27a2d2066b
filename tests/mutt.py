"""Debian's mutt, driven headless: it answers a message exactly as a user pressing ``r`` would.

mutt builds the reply itself: the ``Re:`` subject, To from Reply-To (or From), In-Reply-To,
References, the attribution line and the ``> `` quote. Nothing here writes a header.

mutt's index and compose menus need a terminal: without one, ``mutt -f MBOX`` reads stdin
as the body of a message to send and stops with "No recipients specified". So it runs on a
pseudo-terminal, with the keys pushed by ``-e``. Its editor is a script that writes the new
text above the quote, and its ``sendmail`` is a script that keeps the composed message:
the bytes maild gets are the bytes mutt would have handed to the MTA.
"""

from __future__ import annotations

import mailbox
import os
import pty
import select
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

MUTT = shutil.which("mutt") or "/usr/bin/mutt"

# -n: no system muttrc; every setting the reply depends on is here, so a site config cannot change it.
_MUTTRC = """\
set from={sender}
set use_from=yes
set hostname={hostname}
set sendmail="{workdir}/sendmail"
set editor="{workdir}/editor"
set reply_to={reply_to}
set include=yes
set fast_reply=yes
set edit_headers=no
set autoedit=no
alternative_order text/plain
set charset="utf-8"
set send_charset="us-ascii:utf-8"
set folder="{workdir}"
set spoolfile="{workdir}/in.mbox"
set record=""
set postpone=no
set move=no
set quit=yes
set confirmappend=no
set header_cache=""
set signature=""
set sleep_time=0
"""

# The editor gets the draft (mutt's line "On ..., X wrote:" and the quote) and writes the new
# text above or below it, leaving mutt's part untouched.
_EDITOR_ABOVE = """\
#!/bin/sh
cat {text} "$1" > "$1.new" && mv "$1.new" "$1"
"""
_EDITOR_BELOW = """\
#!/bin/sh
cat {text} >> "$1"
"""

_SENDMAIL = """\
#!/bin/sh
cat > {sent}
"""


def missing_reason() -> str | None:
    """Why mutt cannot run here, or None when it can."""
    if not Path(MUTT).exists():
        return "mutt is not installed (apt-get install mutt)"
    return None


def reply(message: bytes, *, sender: str, text: str, to_reply_to: bool = True, above_quote: bool = True,
          timeout: float = 30) -> bytes:
    """mutt's reply to ``message`` from ``sender``, with ``text`` written above (or below) the quote.

    ``to_reply_to``: answer the Reply-To address (mutt's ``reply_to=yes``), else the From
    address, as a user who answers "no" to mutt's "Reply to ...?" question does.
    """
    with tempfile.TemporaryDirectory(prefix="maild-mutt-") as tmp:
        workdir = Path(tmp)
        box = mailbox.mbox(workdir / "in.mbox")
        box.add(message)
        box.close()
        text = text.strip("\n")
        (workdir / "text").write_text(f"{text}\n\n" if above_quote else f"\n{text}\n")
        editor = _EDITOR_ABOVE if above_quote else _EDITOR_BELOW
        _script(workdir / "editor", editor.format(text=shlex.quote(str(workdir / "text"))))
        _script(workdir / "sendmail", _SENDMAIL.format(sent=shlex.quote(str(workdir / "sent.eml"))))
        hostname = sender.rpartition("@")[2].rstrip(">")
        (workdir / "muttrc").write_text(_MUTTRC.format(
            sender=shlex.quote(sender), hostname=hostname, workdir=workdir, reply_to="yes" if to_reply_to else "no"))
        argv = [MUTT, "-n", "-F", str(workdir / "muttrc"), "-f", str(workdir / "in.mbox"),
                "-e", 'push "<reply><send-message><quit>"']
        try:
            screen = _run_on_terminal(argv, workdir, timeout)
        except StuckAtPrompt:
            # Once, on a loaded machine, mutt took the pushed keys for typing at a prompt of its
            # own; a second run shows whether that was the terminal's timing or the message.
            screen = _run_on_terminal(argv, workdir, timeout)
        sent = workdir / "sent.eml"
        if not sent.exists():
            raise AssertionError(f"mutt sent nothing; its screen:\n{screen}")
        return sent.read_bytes()


class StuckAtPrompt(AssertionError):
    """mutt still ran when its time was up: waiting at a prompt for keys that never come."""


def _script(path: Path, content: str) -> None:
    path.write_text(content)
    path.chmod(0o700)


def _run_on_terminal(argv: list[str], home: Path, timeout: float) -> str:
    """Run ``argv`` on a new pseudo-terminal until it exits; return what it drew on the screen."""
    leader, follower = pty.openpty()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TERM": "vt100", "LANG": "C.UTF-8"}
    try:
        proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, cwd=home, env=env,
                                start_new_session=True)
    finally:
        os.close(follower)
    screen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            # Keep reading: a full terminal buffer would block mutt's screen updates.
            chunk = _read(leader)
            screen += chunk
            if not chunk and proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise StuckAtPrompt(f"mutt did not finish in {timeout}s; its screen:\n{screen.decode(errors='replace')}")
    finally:
        os.close(leader)
    if proc.returncode != 0:
        raise AssertionError(f"mutt exited {proc.returncode}; its screen:\n{screen.decode(errors='replace')}")
    return screen.decode(errors="replace")


def _read(fd: int) -> bytes:
    """What the terminal has for us within 0.1 s; b"" if nothing, or once the process closed it."""
    ready, _, _ = select.select([fd], [], [], 0.1)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the process has closed the terminal
        return b""
