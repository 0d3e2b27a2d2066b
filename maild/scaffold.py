"""``maild init``: write a starter site (config, rules, templates, a fresh secret) into a folder.

The starter files ship inside the package (``maild/starter-site/``, symlinks to the
repository's ``config.example.toml``, ``rules/`` and ``templates/``), so a plain
``pip install`` can set up a site without the source tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from maild import config as config_mod
from maild.errors import MaildError
from maild.replytokens import load_key

STARTER = Path(__file__).parent / "starter-site"
CONFIG_NAME = "config.toml"
FOLDERS = ("rules", "templates")
# The example's SQLite URL; --database-url replaces exactly this line.
_DATABASE_LINE = re.compile(r'(?m)^url = "sqlite:///var/maild\.db"$')


@dataclass(frozen=True)
class Site:
    """What ``init_site`` wrote: the config, the copied files, and the signing key."""

    config: Path
    files: list[Path]
    key: Path
    key_created: bool


def init_site(target: Path, *, force: bool = False, database_url: str | None = None) -> Site:
    """Write config.toml, rules/ and templates/ into ``target``; refuse to overwrite without ``force``.

    The reply-token key (the one secret maild makes itself) is generated fresh for the site;
    an existing key is kept even with ``force``, since replacing it would break the signed
    Reply-To of every mail already sent.
    """
    if target.exists() and not target.is_dir():
        raise MaildError(f"{target} exists and is not a folder")
    plan = _plan(target)
    config_path = target / CONFIG_NAME
    _refuse_overwrite([config_path] + [dest for _, dest in plan], force)
    target.mkdir(parents=True, exist_ok=True)
    _write_private(config_path, starter_config(database_url))
    for source, dest in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    key_path = config_mod.load(config_path).security.reply_token_key_file
    created = not key_path.exists()
    load_key(key_path)  # creates it: random, mode 0600
    return Site(config_path, [dest for _, dest in plan], key_path, created)


def starter_config(database_url: str | None = None) -> str:
    """config.example.toml as a site's config.toml: same keys and comments, its own database."""
    text = _starter("config.example.toml").read_text(encoding="utf-8")
    text = text.replace("config.example.toml", CONFIG_NAME)
    if database_url is not None:
        # A JSON string is a valid TOML basic string: quotes and backslashes stay intact.
        text, found = _DATABASE_LINE.subn(lambda _: f"url = {json.dumps(database_url)}", text, count=1)
        if not found:
            raise MaildError("config.example.toml has no [database] url line to replace")
    header = ("# Written by `maild init`. Relative paths are relative to this file's folder, so the\n"
              "# database, attachments, outgoing Maildir and key all live beside it.\n\n")
    return header + text


def _plan(target: Path) -> list[tuple[Path, Path]]:
    """(source, destination) for every starter rule and template file."""
    pairs = []
    for folder in FOLDERS:
        root = _starter(folder)
        for source in sorted(root.rglob("*")):
            rel = source.relative_to(root)
            if source.is_file() and not any(p.startswith((".", "__")) for p in rel.parts):
                pairs.append((source, target / folder / rel))
    return pairs


def _starter(name: str) -> Path:
    path = STARTER / name
    if not path.exists():
        raise MaildError(f"this maild installation lacks its starter files ({path}); reinstall maild")
    return path


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise MaildError(f"{existing[0]} already exists{more}; nothing was written (use --force to overwrite)")


def _write_private(path: Path, text: str) -> None:
    """The config will hold passwords once filled in: readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed
