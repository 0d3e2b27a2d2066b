"""``maild run`` as a user runs it: a subprocess with its SMTP listener, signals, and a real SMTP peer."""

from __future__ import annotations

import shutil
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from conftest import MAILD, REPO, Env, mail


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"maild run exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the SMTP listener did not come up")


@contextmanager
def daemon(env: Env) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([MAILD, "--config", str(env.config), "run"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=env.path)
    try:
        wait_for_port(env.smtp_port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def send(port: int, raw: bytes, to: str = "support@example.test") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("jane@customer.test", [to], raw)


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err.decode()


def test_run_receives_over_smtp_acknowledges_and_exits_0_on_sigterm(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(smtp_enabled="true")
    with daemon(env) as proc:
        send(env.smtp_port, mail(message_id="<d1@customer.test>"))
        [ack] = env.peer.wait_for(1)
        code, log = stop(proc)
    assert code == 0, log
    ref = env.json("cases", "list")[0]["reference"]
    assert f"[{ref}]" in ack.message["Subject"]
    # One log line per message with its outcome and the case key.
    assert f"message-id=<d1@customer.test>: created {ref} acknowledged" in log
    assert "Traceback" not in log


def test_sighup_reloads_templates_and_keeps_the_old_ones_when_broken(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    env: Env = make_env(smtp_enabled="true", templates=templates.as_posix())
    txt = templates / "acknowledgement.txt.j2"
    with daemon(env) as proc:
        txt.write_text(txt.read_text().replace("thank you for contacting", "RELOADED thanks for writing to"))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        send(env.smtp_port, mail(subject="first"))
        first = env.peer.wait_for(1)[0]
        txt.write_text("{% if %}broken")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        send(env.smtp_port, mail(subject="second"))
        second = env.peer.wait_for(2)[1]
        code, log = stop(proc)
    assert code == 0
    assert "RELOADED" in first.message.get_body(("plain",)).get_content()
    assert "RELOADED" in second.message.get_body(("plain",)).get_content(), "the broken template was refused"
    assert "reload refused, keeping the running templates and rules" in log


def test_sigterm_never_leaves_half_a_message(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(smtp_enabled="true", ack_limit=100)
    with daemon(env) as proc:
        for i in range(10):
            send(env.smtp_port, mail(subject=f"burst {i}"))
        code, _ = stop(proc)
    assert code == 0
    with env.engine().connect() as conn:
        rows = conn.execute(sa.text("SELECT state, case_id FROM inbound_message")).all()
        cases = conn.execute(sa.text("SELECT count(*) FROM cases")).scalar_one()
        acks = conn.execute(sa.text("SELECT count(*) FROM outbound_message")).scalar_one()
    assert len(rows) == 10, "every 250 was a committed row"
    processed = [r for r in rows if r.state == "processed"]
    assert all(r.state in ("processed", "received") for r in rows)
    assert cases == acks == len(processed), "a processed message has its case and its acknowledgement"
    env.ok("run", "--once")
    assert len(env.json("cases", "list")) == 10


def test_run_refuses_to_start_on_an_old_schema(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(smtp_enabled="true")
    with env.engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM alembic_version"))
    result = subprocess.run([MAILD, "--config", str(env.config), "run"], capture_output=True, timeout=30)
    assert result.returncode == 1
    assert b"no maild schema yet; run `maild db upgrade`" in result.stderr


def test_signal_handlers_take_no_lock_and_keep_every_signal_in_order() -> None:
    """A handler runs in the main thread between two of its bytecodes: one that takes a lock
    the main thread may hold deadlocks the daemon. Setting a threading.Event did (its wait()
    in the main loop holds the Event's lock as it returns): SIGTERM hung `maild run`, now
    and then."""
    from maild.daemon import Signals

    signals = Signals()
    locking: list[str] = []

    def watch(_frame: object, event: str, arg: object) -> None:
        if event == "c_call" and getattr(arg, "__name__", "") in ("acquire", "__enter__", "acquire_lock"):
            locking.append(repr(arg))

    sys.setprofile(watch)
    try:
        for signum in (signal.SIGHUP, signal.SIGTERM):
            signals.handler(signum, None)
    finally:
        sys.setprofile(None)
    assert locking == []
    assert [signals.next(), signals.next(), signals.next()] == [signal.SIGHUP, signal.SIGTERM, None]


def test_run_puts_what_start_up_built_out_of_the_collectors_sight(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))  # the real one would outlive this test
    env.inject(mail(), "--queue", "support")
    env.ok("run", "--once")
    assert frozen == [True]
