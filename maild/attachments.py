"""Store attachment bytes under the data directory by SHA-256, never by the sender's filename.

Content addressing makes the store idempotent (a retried message writes nothing new) and
makes path traversal through a hostile filename impossible: the name is only data.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def path_for(data_dir: Path, digest: str) -> Path:
    return data_dir / "attachments" / digest[:2] / digest[2:4] / digest


def store(data_dir: Path, content: bytes) -> str:
    """Write ``content`` durably if it is not there yet; return its SHA-256 hex digest."""
    digest = hashlib.sha256(content).hexdigest()
    target = path_for(data_dir, digest)
    if target.exists():
        return digest
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)  # atomic: readers never see half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def load(data_dir: Path, digest: str) -> bytes:
    return path_for(data_dir, digest).read_bytes()
