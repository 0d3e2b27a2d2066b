"""Deployment: `maild init` sets up a working site (also from a built wheel), the systemd units
are valid and start our CLI, extra workers run without the listener, and `maild db backup`
copies a live database consistently (SQLite online backup, PostgreSQL pg_dump)."""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import MAILD, PG_ENV, REPO, Env, _pg_schema_url, mail, write_config
from maild import config as config_mod
from maild import inbound
from maild.app import App
from maild.clock import utcnow
from maild.config import ImapConfig, SmtpRelayConfig

UNITS = ["maild.service", "maild@.service"]


def maild(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `maild` command, as an admin types it."""
    return subprocess.run([MAILD, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def ok(*args: str, cwd: Path) -> str:
    result = maild(*args, cwd=cwd)
    assert result.returncode == 0, f"maild {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return result.stdout


# maild init ---------------------------------------------------------------------------------


def test_init_makes_a_site_that_checks_upgrades_and_turns_mail_into_a_case(db_url: str, tmp_path: Path) -> None:
    site = tmp_path / "site"
    extra = [] if db_url.startswith("sqlite") else ["--database-url", db_url]  # SQLite: the default
    said = ok("init", str(site), *extra, cwd=tmp_path)
    config = site / "config.toml"
    assert f"maild --config {config} db upgrade" in said and f"maild --config {config} run" in said, said
    checked = ok("--config", str(config), "rules", "check", cwd=tmp_path)
    assert "all valid" in checked and str(site / "rules") in checked
    assert "upgraded from empty" in ok("--config", str(config), "db", "upgrade", cwd=tmp_path)
    raw = mail(subject="Printer on fire")
    stored = subprocess.run([MAILD, "--config", str(config), "inject", "--queue", "support"], input=raw,
                            capture_output=True, timeout=120, cwd=tmp_path)
    assert stored.returncode == 0, stored.stderr
    assert "processed 1 inbound" in ok("--config", str(config), "run", "--once", cwd=tmp_path)
    [case] = json.loads(ok("--config", str(config), "cases", "list", "--json", cwd=tmp_path))
    assert case["title"] == "Printer on fire"
    sent = [f.read_text() for f in (site / "var" / "outgoing" / "new").iterdir()]  # the starter's Maildir
    [ack] = [m for m in sent if "To: Jane Doe <jane@customer.test>" in m]
    assert f"[{case['reference']}]" in ack
    loaded = config_mod.load(config)
    assert loaded.database.url == (f"sqlite:///{site / 'var' / 'maild.db'}" if not extra else db_url)
    for path in (loaded.paths.rules, loaded.paths.templates, loaded.paths.data, loaded.security.reply_token_key_file):
        assert path.is_relative_to(site), f"{path} lies outside the site"


def test_every_site_gets_its_own_secret_and_no_secret_is_in_the_repository(tmp_path: Path) -> None:
    keys = []
    for name in ("one", "two"):
        ok("init", str(tmp_path / name), cwd=tmp_path)
        key = tmp_path / name / "var" / "reply-token.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / name / "config.toml").stat().st_mode & 0o777 == 0o600, "it will hold passwords"
        keys.append(key.read_text().strip())
    assert keys[0] != keys[1] and all(len(k) >= 64 for k in keys)
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not [f for f in tracked.splitlines() if f.endswith(".key")]
    for key in keys:
        assert key not in (tmp_path / "one" / "config.toml").read_text()


def test_init_refuses_to_overwrite_without_force_and_keeps_the_key(tmp_path: Path) -> None:
    site = tmp_path / "site"
    ok("init", str(site), cwd=tmp_path)
    template = site / "templates" / "acknowledgement.txt.j2"
    template.write_text("edited")
    key = (site / "var" / "reply-token.key").read_text()
    refused = maild("init", str(site), cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"maild: {site / 'config.toml'} already exists (and ")
    assert "--force" in refused.stderr and template.read_text() == "edited", "nothing was written"
    said = ok("init", str(site), "--force", cwd=tmp_path)
    assert template.read_text() == (REPO / "templates" / "acknowledgement.txt.j2").read_text()
    assert (site / "var" / "reply-token.key").read_text() == key and "kept" in said
    (tmp_path / "afile").write_text("")
    not_a_folder = maild("init", str(tmp_path / "afile"), cwd=tmp_path)
    assert not_a_folder.returncode != 0 and "Traceback" not in not_a_folder.stderr


def test_a_wheel_carries_the_starter_site_and_init_works_from_it(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("maild-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {"config.example.toml", "rules/README.md", "rules/examples/10-creation.toml"}
    shipped |= {f"templates/{t.name}" for t in (REPO / "templates").glob("*.j2")}
    assert {f"maild/starter-site/{name}" for name in shipped} <= names
    # A pure-Python wheel unpacked is an installation: run `maild init` from it, not from the checkout.
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    probe = "import maild.scaffold as s; print(s.__file__); from maild.cli.main import main; main()"
    result = subprocess.run([sys.executable, "-P", "-c", probe, "init", str(tmp_path / "site")], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(installed / "maild" / "scaffold.py"))
    for name in shipped - {"config.example.toml"}:
        assert (tmp_path / "site" / name).read_bytes() == (REPO / name).read_bytes()
    assert "all valid" in ok("--config", str(tmp_path / "site" / "config.toml"), "rules", "check", cwd=tmp_path)


# systemd ---------------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((REPO / "deploy" / name).read_text())
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_unit_file_restarts_on_failure_reloads_on_sighup_and_is_hardened(name: str, tmp_path: Path) -> None:
    service = unit(name)["Service"]
    assert service["Type"] == "simple"
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID", "the daemon reloads templates and rules on SIGHUP"
    assert service["KillSignal"] == "SIGTERM", "the daemon finishes the batch in hand on SIGTERM"
    # A pass in hand may wait on the relay or the IMAP server; stop must outlast their timeouts.
    default_timeouts = (SmtpRelayConfig.model_fields["timeout"].default, ImapConfig.model_fields["timeout"].default)
    assert int(service["TimeoutStopSec"]) > max(default_timeouts)
    assert service["User"] not in ("", "root") and service["Group"]
    assert service["NoNewPrivileges"] == "true" and service["PrivateTmp"] == "true"
    assert service["ProtectSystem"] == "strict"
    argv = shlex.split(service["ExecStart"])
    config = Path(argv[argv.index("--config") + 1])
    assert config.is_relative_to(service["ReadWritePaths"]), "the site (database, attachments) is writable"
    assert Path(argv[0]).name == "maild" and argv[3] == "run"
    # The same command line, with --help, must parse for our CLI: no stale option or command.
    parsed = maild(*argv[1:], "--help", cwd=tmp_path)
    assert parsed.returncode == 0 and "Run maild" in parsed.stdout, parsed.stderr


@pytest.mark.parametrize("name", UNITS)
def test_unit_file_passes_systemd_analyze_when_available(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (REPO / "deploy" / name).read_text()
    argv0 = shlex.split(unit(name)["Service"]["ExecStart"])[0]
    copy = tmp_path / name.replace("@.", "@1.")
    copy.write_text(text.replace(argv0, MAILD))  # verify checks that the command exists
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and copy.name not in result.stderr + result.stdout, result.stderr


def test_extra_worker_units_run_without_the_listener() -> None:
    argv = shlex.split(unit("maild@.service")["Service"]["ExecStart"])
    assert argv[-2:] == ["run", "--no-listen"]
    assert unit("maild@.service")["Unit"]["PartOf"] == "maild.service"
    assert "--no-listen" not in unit("maild.service")["Service"]["ExecStart"], "one process per host listens"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else already listens on, as the first worker's listener would."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_worker_with_no_listen_works_beside_the_listening_one(make_env: Callable[..., Env], taken_port: int) -> None:
    env: Env = make_env(smtp_enabled="true", smtp_port=taken_port)
    clash = env.maild("run", timeout=60)
    assert clash.returncode != 0, "without --no-listen the port is taken and the daemon cannot start"
    env.inject(mail(subject="Printer on fire"))
    with open(env.path / "worker.log", "wb") as log:
        worker = subprocess.Popen([MAILD, "--config", str(env.config), "run", "--no-listen"], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=env.path)
        try:
            deadline = time.monotonic() + 60  # bounded: a worker that does nothing fails, never hangs
            while time.monotonic() < deadline and not env.json("cases", "list"):
                time.sleep(0.2)
        finally:
            worker.terminate()
            code = worker.wait(60)
    assert code == 0, (env.path / "worker.log").read_text()
    [case] = env.json("cases", "list")
    assert case["title"] == "Printer on fire"


# maild db backup ---------------------------------------------------------------------------------


def case_reference(env: Env) -> str:
    env.inject(mail(subject="Printer on fire"))
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    return str(case["reference"])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_backup_is_consistent_while_the_daemon_writes(env: Env, tmp_path: Path) -> None:
    reference = case_reference(env)
    app = App(config_mod.load(env.config))
    queue_id = app.registry.queue_id("support")
    written, started, stop = [0], threading.Event(), threading.Event()

    def writer() -> None:
        while not stop.is_set():
            inbound.add(app.factory, [queue_id], mail(subject=f"busy {written[0]}"), source="test", now=utcnow())
            written[0] += 1
            if written[0] == 20:
                started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert started.wait(60), "the writer is running"
        before = written[0]
        said = env.ok("db", "backup", str(tmp_path / "copy.db"))
        after = written[0]
    finally:
        stop.set()
        thread.join(60)
        app.close()
    assert after > before, "the writer kept going during the backup"
    assert "online backup" in said and str(tmp_path / "copy.db") in said
    copy = sqlite3.connect(tmp_path / "copy.db")
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = copy.execute("SELECT count(*) FROM inbound_message").fetchone()[0]
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete", "one self-contained file"
    finally:
        copy.close()
    assert 1 + before <= stored <= 1 + written[0], "a snapshot from within the backup"
    assert not list(tmp_path.glob(".copy.db.partial*"))
    restored = tmp_path / "restored"
    restored.mkdir()
    config = write_config(restored, f"sqlite:///{tmp_path / 'copy.db'}", env.peer.port)
    listed = subprocess.run([MAILD, "--config", str(config), "cases", "list", "--json"], capture_output=True, text=True,
                            timeout=120, cwd=restored)
    assert listed.returncode == 0 and reference in listed.stdout, listed.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_backup_refuses_to_overwrite_and_names_a_missing_folder(env: Env, tmp_path: Path) -> None:
    target = tmp_path / "old.db"
    target.write_text("yesterday's backup")
    refused = env.maild("db", "backup", str(target))
    assert refused.returncode == 1 and b"already exists" in refused.stderr and b"Traceback" not in refused.stderr
    assert target.read_text() == "yesterday's backup"
    env.ok("db", "backup", str(target), "--force")
    assert target.read_bytes().startswith(b"SQLite format 3")
    missing = env.maild("db", "backup", str(tmp_path / "nowhere" / "x.db"))
    assert missing.returncode == 1 and b"nowhere does not exist" in missing.stderr


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_backup_is_a_pg_dump_that_restores(env: Env, tmp_path: Path) -> None:
    reference = case_reference(env)
    dump = tmp_path / "maild.dump"
    said = env.ok("db", "backup", str(dump))
    assert "pg_dump custom format" in said
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert " TABLE DATA " in listing.stdout and " cases " in listing.stdout
    # The documented restore: pg_restore into a fresh database, and maild reads it.
    base = os.environ[PG_ENV]
    name = "restore_" + secrets.token_hex(4)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    schema = sa.make_url(env.db_url).query["options"].split("=", 1)[1]
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    fresh = sa.make_url(base).set(database=name)
    try:
        libpq = fresh.set(drivername="postgresql").render_as_string(hide_password=False)
        restored = subprocess.run(["pg_restore", "--no-owner", f"--dbname={libpq}", str(dump)], capture_output=True,
                                  text=True, timeout=120)
        assert restored.returncode == 0, restored.stderr
        (tmp_path / "restored").mkdir()
        url = _pg_schema_url(fresh.render_as_string(hide_password=False), schema)
        config = write_config(tmp_path / "restored", url, env.peer.port)
        listed = maild("--config", str(config), "cases", "list", "--json", cwd=tmp_path)
        assert listed.returncode == 0 and reference in listed.stdout, listed.stderr
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_backup_without_pg_dump_says_what_to_install(env: Env, tmp_path: Path) -> None:
    (tmp_path / "empty-bin").mkdir()
    result = maild("--config", str(env.config), "db", "backup", str(tmp_path / "x.dump"), cwd=tmp_path,
                   env={**os.environ, "PATH": str(tmp_path / "empty-bin")})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("maild: pg_dump is not on PATH; install the PostgreSQL client tools")
    assert not (tmp_path / "x.dump").exists()
