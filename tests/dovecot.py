"""A private Dovecot IMAP server for tests (and benchmarks), on a free loopback port.

It runs from a config file of its own in a temp dir, with its own base, state and log
paths and instance name, so it never touches a system Dovecot on port 143. Dovecot will
not run mail processes as root, so mail belongs to a dedicated system user
(``maildtest``, created by ``.ci/run``). With ``tls=True`` it gets a certificate from a
throw-away CA (trustme) and serves STARTTLS on the plain port and implicit TLS on another.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
TEST_USER = os.environ.get("MAILD_TEST_MAIL_USER", "maildtest")
REQUIRE_ENV = "MAILD_REQUIRE_DOVECOT"


def missing_reason() -> str | None:
    """Why Dovecot tests cannot run here, or None when they can."""
    if not Path(DOVECOT).exists():
        return "Dovecot is not installed (apt-get install dovecot-imapd)"
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        return f"no system user {TEST_USER!r} for Dovecot's mail processes (useradd --system {TEST_USER})"
    if os.geteuid() != 0:
        return "starting a private Dovecot with a dedicated mail user needs root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Dovecot:
    root: Path
    port: int
    tls_port: int | None
    ca_file: Path | None
    users: dict[str, str]

    @property
    def config_file(self) -> Path:
        return self.root / "dovecot.conf"

    def stop(self) -> None:
        subprocess.run([DOVECOT, "-c", str(self.config_file), "stop"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _listening(self.port):
            time.sleep(0.05)

    def start(self) -> None:
        # The master daemonises and keeps inherited pipes open: send its output to a file.
        with open(self.root / "start.log", "ab") as out:
            result = subprocess.run([DOVECOT, "-c", str(self.config_file)], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=out, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"dovecot failed to start:\n{(self.root / 'start.log').read_text()}\n{self.log()}")
        deadline = time.monotonic() + 15
        while not _listening(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not listen on {self.port}:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def pool_users(count: int = 300) -> dict[str, str]:
    """Accounts made up front: Dovecot may not notice a passwd-file changed within a second,
    so tests take a fresh account from this pool instead of adding one."""
    return {f"box{i:03d}": f"pw-{i:03d}-{secrets.token_hex(4)}" for i in range(count)}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(root: Path | None = None, *, tls: bool = False, users: dict[str, str] | None = None) -> Dovecot:
    """Write a config under ``root`` and start Dovecot; the caller must ``stop()`` it.

    ``root`` (default: a new dir in /tmp) and all its parents must be traversable by the
    dovecot and mail users, which pytest's 0700 tmp_path is not.
    """
    users = users or pool_users()
    account = pwd.getpwnam(TEST_USER)
    root = root or Path(tempfile.mkdtemp(prefix="maild-dovecot-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    home = root / "home"
    home.mkdir(exist_ok=True)
    os.chown(home, account.pw_uid, account.pw_gid)
    (root / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in users.items()))
    server = Dovecot(root, free_port(), free_port() if tls else None, None, users)
    ssl_conf = _tls_files(root, server) if tls else "ssl = no\n"
    server.config_file.write_text(_CONFIG.format(
        instance=f"maild-test-{secrets.token_hex(4)}", root=root, uid=account.pw_uid, gid=account.pw_gid,
        port=server.port, tls_listener=_TLS_LISTENER.format(port=server.tls_port) if tls else "", ssl=ssl_conf,
    ))
    server.start()
    return server


def _tls_files(root: Path, server: Dovecot) -> str:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(root / "server.pem"))
    server.ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(server.ca_file))
    return f"ssl = yes\nssl_cert = <{root}/server.pem\nssl_key = <{root}/server.pem\n"


_TLS_LISTENER = """
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}"""

_CONFIG = """
instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
disable_plaintext_auth = no
auth_mechanisms = plain login
{ssl}
mail_location = maildir:~/Maildir
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {uid}
last_valid_uid = {uid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}{tls_listener}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""
