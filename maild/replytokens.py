"""Signed reply addresses: ``support+CAS-01234-AB12CD.k3j9xq2a@example.test``.

Every mail maild sends about a case carries one as its Reply-To. The part after the key is
an HMAC of the key with a secret only maild knows, so a reply threads onto its case even
when the client drops the subject and the headers, and nobody can make up the address of
a case they were never sent.

There are two kinds, which look alike: the customer's (on acknowledgements, relayed
replies, surveys) and the agents' (on notices and confirmations to staff), signed over
a different message. Both thread; only an agents' address proves that an agent wrote,
because the customer (and anyone she forwards her mail to) holds her own address.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from maild.errors import ConfigError

SIG_CHARS = 10  # base32 characters: 50 bits, far beyond guessing by mail
_SIG_BYTES = -(-SIG_CHARS // 8) * 5  # whole 5-byte groups of the digest that hold them


def load_key(path: Path) -> bytes:
    """The secret, created (random, readable by maild only) the first time it is needed.

    It is written to a private temporary file and then linked into place, so a worker that
    starts at the same moment sees either no file or the whole key, never an empty one.
    """
    try:
        if not path.exists():
            _publish(path, secrets.token_hex(32) + "\n")
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"security.reply_token_key_file: cannot read or create {path}: {exc}") from exc
    if len(key) < 32:
        raise ConfigError(f"security.reply_token_key_file: {path} holds fewer than 32 characters")
    return key.encode()


def _publish(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".reply-token.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process published its key first: use that one
    finally:
        os.unlink(tmp)


CUSTOMER, AGENT = "customer", "agent"


@dataclass(frozen=True)
class Signed:
    reference: str
    role: str  # CUSTOMER or AGENT: whose mail the address was put on


def signature(key: bytes, reference: str, role: str = CUSTOMER) -> str:
    message = reference.upper() if role == CUSTOMER else f"{role}:{reference.upper()}"
    digest = hmac.digest(key, message.encode(), "sha256")
    # Base32 writes each 5 bytes as 8 characters on their own, so the digest's first
    # _SIG_BYTES give the first SIG_CHARS characters of the whole digest's encoding.
    return base64.b32encode(digest[:_SIG_BYTES]).decode().lower()[:SIG_CHARS]


def address(queue_address: str, reference: str, key: bytes, role: str = CUSTOMER) -> str:
    local, _, domain = queue_address.partition("@")
    return f"{local}+{reference}.{signature(key, reference, role)}@{domain}"


@lru_cache(maxsize=8)
def _pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"\+({re.escape(prefix)}-\d+-[A-Z0-9]+)\.([a-z2-7]+)@", re.IGNORECASE)


def signed_from(addresses: Iterable[str], key: bytes, prefix: str) -> Signed | None:
    """The case key and kind of the first correctly signed reply address among ``addresses``."""
    for addr in addresses:
        m = _pattern(prefix).search(addr)
        if m is None:
            continue
        reference, given = m.group(1).upper(), m.group(2).lower()
        for role in (CUSTOMER, AGENT):
            if hmac.compare_digest(given, signature(key, reference, role)):
                return Signed(reference, role)
    return None


def reference_from(addresses: Iterable[str], key: bytes, prefix: str) -> str | None:
    """The case key of the first correctly signed reply address among ``addresses``."""
    signed = signed_from(addresses, key, prefix)
    return signed.reference if signed else None
