"""Migration and export: an mbox or Maildir imported as history (original dates, replies
threaded, nothing sent, no SLA clock, no entitlement drawn on), resumed after a SIGKILL
without duplicates; cases exported as JSON Lines and CSV, field by field."""

from __future__ import annotations

import csv
import io
import json
import logging
import mailbox
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import MAILD, Env, mail
from maild.parsepool import POOL_FROM
from test_agent_mail import queue_keys

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
THREADS = 10
# An SLA for every case, agents told of every new case, and an entitlement drawn on at
# creation: an import that sent or started anything would show.
SLA = '[[sla]]\nname = "everyone"\nfirst_response = { warn_after = "1h", fail_after = "2h" }\n'


def message(n: int, thread: int, when: datetime | None, reply_to: list[str] | None = None,
            subject: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {thread} <c{thread}@customer.test>"
    msg["To"] = "support@example.test"
    msg["Subject"] = ("Re: " if reply_to else "") + (subject or f"Problem number {thread}")
    msg["Message-ID"] = f"<m{n}.t{thread}@customer.test>"
    if when is not None:
        msg["Date"] = format_datetime(when)
    if reply_to:
        msg["In-Reply-To"] = reply_to[-1]
        msg["References"] = " ".join(reply_to)
    msg.set_content(f"Message {n} of thread {thread}.\n")
    return msg.as_bytes()


def history() -> list[tuple[bytes, datetime | None]]:
    """30 messages: 10 threads of an original and replies (In-Reply-To), one without a Date
    header, and one that is not mail at all; shuffled, as archives are."""
    items: list[tuple[bytes, datetime | None]] = []
    n = 0
    for t in range(THREADS):
        ids: list[str] = []
        for depth in range(3 if t < 9 else 2):
            when = T0 + timedelta(days=t, hours=depth)
            n += 1
            items.append((message(n, t, None if (t, depth) == (3, 1) else when, ids or None), when))
            ids.append(f"<m{n}.t{t}@customer.test>")
    items.append((b"this is not a mail message, just a line of text\n", None))
    random.Random(7).shuffle(items)
    return items


def write_mbox(path: Path, items: list[tuple[bytes, datetime | None]]) -> Path:
    """An mbox whose From_ lines carry the date (the fallback for the message without Date)."""
    with path.open("wb") as f:
        for raw, when in items:
            stamp = (when or T0 - timedelta(days=30)).strftime("%a %b %d %H:%M:%S %Y")
            f.write(f"From archive@example.test {stamp}\n".encode() + raw.rstrip(b"\n") + b"\n\n")
    return path


def history_env(make_env: Any, tmp_path: Path) -> Env:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-sla.toml").write_text(SLA)
    env: Env = make_env(rules=rules.as_posix(), ack_limit=100)
    queue_keys(env, agents=["Alice Agent"], notify_agents=["new_case", "customer_reply"])
    customers = tmp_path / "c.csv"
    customers.write_text("email,name,account,tier\nc0@customer.test,Customer 0,Contoso,gold\n")
    env.ok("customers", "import", str(customers))
    env.ok("entitlements", "add", "--name", "Contoso", "--account", "Contoso", "--start", "2024-01-01",
           "--end", "2027-12-31", "--cases", "5")
    return env


@contextmanager
def progress_reader(env: Env) -> Iterator[Callable[[str], int]]:
    """Counts read beside a running import without taking a lock (maild's SQLite engine
    begins every transaction with BEGIN IMMEDIATE, which would compete with the writer)."""
    if env.db_url.startswith("sqlite"):
        conn = sqlite3.connect(f"file:{env.db_url.split('///', 1)[1]}?mode=ro", uri=True, isolation_level=None)
        try:
            yield lambda sql: int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()
        return
    engine = sa.create_engine(env.db_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as pg:
            yield lambda sql: int(pg.execute(sa.text(sql)).scalar_one())
    finally:
        engine.dispose()


def check_history(env: Env) -> None:
    """The state a complete import of history() leaves, however many runs it took."""
    assert env.count("SELECT count(*) FROM inbound_message WHERE source = 'import'") == 30, "each stored once"
    assert env.count("SELECT count(*) FROM cases") == THREADS, "one case per thread"
    assert env.count("SELECT count(*) FROM activity WHERE kind = 'incoming_email'") == 29, "no duplicates"
    assert env.count("SELECT count(DISTINCT message_id) FROM activity") == 29
    per_case = env.rows("SELECT c.title, count(a.id) FROM cases c JOIN activity a ON a.case_id = c.id "
                         "GROUP BY c.title ORDER BY c.title")
    assert per_case == [(f"Problem number {t}", 3 if t < 9 else 2) for t in range(THREADS)], "replies threaded"
    assert env.count("SELECT count(*) FROM outbound_message") == 0, "no acknowledgement or notice"
    assert env.count("SELECT count(*) FROM sla_kpi") == 0, "no SLA clock for old mail"
    assert env.count("SELECT remaining FROM entitlement") == 5, "history draws on no entitlement"
    [broken] = env.json("inbound", "list", "--quarantined")
    assert broken["error"].startswith("cannot parse") and broken["source"] == "import"


def test_mbox_import_keeps_dates_threads_replies_and_sends_nothing(make_env: Any, tmp_path: Path) -> None:
    env = history_env(make_env, tmp_path)
    items = history()
    archive = write_mbox(tmp_path / "archive.mbox", items)
    out = env.ok("import", "mbox", str(archive), "--queue", "support")
    assert "30 message(s)" in out and "10 new case(s), 19 threaded onto a case, 0 skipped (already imported), " \
        "1 quarantined" in out and "10 imported case(s) marked resolved" in out, out
    check_history(env)

    case = env.json("cases", "show", env.json("cases", "list", "--status", "Resolved")[-1]["reference"])
    first = T0  # thread 0 opened at T0, answered at +1h and +2h
    assert case["title"] == "Problem number 0"
    assert case["created_at"] == first.isoformat(), "the case keeps the original date"
    assert [a["created_at"] for a in case["activities"]] == \
        [(first + timedelta(hours=h)).isoformat() for h in range(3)]
    assert (case["status"], case["status_reason"], case["resolved_at"]) == \
        ("Resolved", "Problem Solved", (first + timedelta(hours=2)).isoformat()), "resolved at its last message"
    third = next(c for c in env.json("cases", "list") if c["title"] == "Problem number 3")
    no_date = env.json("cases", "show", third["reference"])["activities"][1]
    assert (no_date["sent_at"], no_date["created_at"]) == (None, (T0 + timedelta(days=3, hours=1)).isoformat()), \
        "without a Date header, the mbox From_ line's date"

    again = env.ok("import", "mbox", str(archive), "--queue", "support")
    assert "0 new case(s), 0 threaded onto a case, 30 skipped (already imported)" in again, again
    check_history(env)

    # The same configuration does send and start clocks for live mail: the checks above mean something.
    env.inject(mail(sender="c0@customer.test", subject="A new problem"))
    env.ok("run", "--once")
    assert env.count("SELECT count(*) FROM sla_kpi") == 1
    assert {m.rcpt_tos[0] for m in env.peer.wait_for(2)} == {"c0@customer.test", "alice@example.test"}
    assert env.count("SELECT remaining FROM entitlement") == 4


def test_a_killed_import_resumes_without_duplicates(make_env: Any, tmp_path: Path) -> None:
    env = history_env(make_env, tmp_path)
    archive = write_mbox(tmp_path / "archive.mbox", history())
    first = subprocess.Popen([MAILD, "--config", str(env.config), "import", "mbox", str(archive), "--queue",
                              "support", "--batch", "2"], cwd=env.path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    done = "SELECT count(*) FROM inbound_message WHERE source = 'import' AND state <> 'received'"
    with progress_reader(env) as processed:
        deadline = time.monotonic() + 60
        while processed(done) < 6:
            assert first.poll() is None, f"the import ended before it could be interrupted: {first.communicate()}"
            assert time.monotonic() < deadline, "the import made no progress"
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # frozen where it is: what it committed can be counted
        interrupted = processed(done)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert 6 <= interrupted < 30, "killed half-way"
    assert env.count("SELECT count(*) FROM outbound_message") == 0

    resumed = env.maild("import", "mbox", str(archive), "--queue", "support")
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout.decode()
    check_history(env)
    found = re.search(r"(\d+) new case\(s\), (\d+) threaded onto a case, (\d+) skipped \(already imported\), "
                      r"(\d+) quarantined, (\d+) ignored", out)
    assert found is not None, out
    created, threaded, skipped, quarantined, ignored = map(int, found.groups())
    assert skipped > 0 and created + threaded + skipped + quarantined + ignored == 30, \
        f"every message accounted for once: {out}"
    assert "0 new case(s)" in env.ok("import", "mbox", str(archive), "--queue", "support")
    check_history(env)


def test_an_import_parses_the_next_batch_in_a_worker(make_env: Any, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """As `maild run` does (intake.parse_workers): a worker parses the batch stored last while
    the one before is written, and the history comes out exactly as without one."""
    from maild import config as config_mod
    from maild.app import App
    from maild.mailimport import Archive, import_archive

    env = history_env(make_env, tmp_path)
    env.config.write_text(env.config.read_text().replace("[intake]\n", "[intake]\nparse_workers = 1\n", 1))
    archive = write_mbox(tmp_path / "archive.mbox", history())
    app = App(config_mod.load(env.config))
    try:
        with caplog.at_level(logging.INFO, logger="maild.intake"):
            summary = import_archive(app.factory, app.intake_context(), Archive("mbox", archive), "support",
                                     status="resolved", clock=app.clock, batch=POOL_FROM)
    finally:
        app.close()
    assert "started 1 parse worker process(es)" in caplog.text
    assert "parser process died" not in caplog.text, "parsed by the worker, not in-process after a failure"
    assert (summary.created, summary.threaded, summary.quarantined) == (10, 19, 1)
    check_history(env)


def store_as_interrupted(env: Env, archive: Path, count: int) -> None:
    """What an import killed between storing a batch and processing it leaves behind."""
    from maild import config as config_mod
    from maild import inbound
    from maild.app import App
    from maild.db import transaction
    from maild.mailimport import Archive, header_date

    box, app = Archive("mbox", archive), App(config_mod.load(env.config))
    try:
        with transaction(app.factory) as session:
            for key in box.keys[:count]:
                raw, _ = box.read(key)
                inbound.store(session, app.registry.queue_id("support"), raw, source="import",
                              source_key=box.source_key(key, raw), now=header_date(raw) or T0, acked=True)
    finally:
        app.close()


def test_stored_imported_mail_is_historical_whoever_processes_it(env: Env, tmp_path: Path) -> None:
    later = T0 + timedelta(hours=1)
    archive = write_mbox(tmp_path / "a.mbox", [(message(1, 0, T0), T0), (message(2, 1, later), later),
                                               (message(3, 1, later + timedelta(hours=1), ["<m2.t1@customer.test>"]),
                                                later)])
    store_as_interrupted(env, archive, 1)
    env.ok("run", "--once")  # the daemon picks it up: historical too, the mode is the row's
    [case] = env.json("cases", "list")
    assert case["created_at"] == T0.isoformat() and env.count("SELECT count(*) FROM outbound_message") == 0
    store_as_interrupted(env, archive, 2)
    out = env.ok("import", "mbox", str(archive), "--queue", "support")
    assert "finished 1 message(s) an interrupted import had stored" in out, out
    assert "3 message(s)" in out and "1 new case(s), 1 threaded onto a case, 1 skipped (already imported)" in out
    assert [c["created_at"] for c in env.json("cases", "list")] == [later.isoformat(), T0.isoformat()]
    assert env.count("SELECT count(*) FROM outbound_message") == 0


def test_maildir_import_with_status_open_and_file_date_fallback(make_env: Any, tmp_path: Path) -> None:
    env: Env = make_env()
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    first = box.add(message(1, 0, T0))
    box.add(message(2, 0, T0 + timedelta(hours=1), ["<m1.t0@customer.test>"]))
    undated = box.add(message(3, 1, None))
    [path] = (tmp_path / "Maildir" / "new").glob(f"{undated}*")
    delivered = T0 + timedelta(days=2)
    os.utime(path, (delivered.timestamp(), delivered.timestamp()))
    agent = EmailMessage()  # an agent's answer in the archive: kept as a note, never relayed again
    agent["From"], agent["To"], agent["Subject"] = "alice@example.test", "c0@customer.test", "Re: Problem number 0"
    agent["Message-ID"], agent["In-Reply-To"] = "<a1@example.test>", "<m2.t0@customer.test>"
    agent["Date"] = format_datetime(T0 + timedelta(hours=3))
    agent.set_content("#resolve Problem Solved\nFixed it.\n")
    box.add(agent.as_bytes())
    out = env.ok("import", "maildir", str(tmp_path / "Maildir"), "--queue", "billing", "--status", "open")
    assert "4 message(s)" in out and "2 new case(s), 2 threaded onto a case" in out, out
    cases = {c["title"]: c for c in env.json("cases", "list")}
    assert {c["status"] for c in cases.values()} == {"Active"} and {c["queue"] for c in cases.values()} == {"billing"}
    assert cases["Problem number 1"]["created_at"] == delivered.isoformat(), "no Date: the file's delivery time"
    assert cases["Problem number 0"]["created_at"] == T0.isoformat()
    shown = env.json("cases", "show", cases["Problem number 0"]["reference"])
    assert [(a["subject"], a["created_at"]) for a in shown["activities"]][-1] == \
        ("[imported] Re: Problem number 0", (T0 + timedelta(hours=3)).isoformat())
    assert shown["status"] == "Active", "the agent's #resolve in the archive did not run"
    assert env.count("SELECT count(*) FROM outbound_message") == 0
    # Flags change and the file moves to cur/: the Maildir key stays, so nothing is imported twice.
    msg = box.get_message(first)
    msg.set_subdir("cur")
    msg.add_flag("S")
    box[first] = msg
    assert "0 new case(s), 0 threaded onto a case, 4 skipped" in env.ok(
        "import", "maildir", str(tmp_path / "Maildir"), "--queue", "billing")


def test_import_refuses_bad_input_in_one_line(env: Env, tmp_path: Path) -> None:
    archive = write_mbox(tmp_path / "a.mbox", [(message(1, 0, T0), T0)])
    unknown = env.cli("import", "mbox", str(archive), "--queue", "nope")
    assert unknown.exit_code == 1 and unknown.output.strip() == \
        "maild: unknown queue 'nope'; configured queues: billing, support"
    (tmp_path / "not.mbox").write_bytes(message(1, 0, T0))
    empty = env.cli("import", "mbox", str(tmp_path / "not.mbox"), "--queue", "support")
    assert empty.exit_code == 1 and "no messages found" in empty.output and len(empty.output.splitlines()) == 1
    assert env.cli("import", "maildir", str(archive), "--queue", "support").exit_code == 1


# Export ------------------------------------------------------------------------------


def exported_case(env: Env) -> tuple[str, bytes]:
    """A live case: the customer's mail with an attachment, and maild's acknowledgement."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Jane Doe <jane@customer.test>", "support@example.test", "Invoice wrong"
    msg["Message-ID"], msg["Date"] = "<inv1@customer.test>", "Mon, 23 Nov 2026 10:00:00 +0000"
    msg.set_content("The invoice is wrong.\n")
    msg.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf", filename="invoice.pdf")
    raw = msg.as_bytes()
    env.inject(raw)
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    return case["reference"], raw


def test_export_json_lines_field_by_field(env: Env, tmp_path: Path) -> None:
    reference, raw = exported_case(env)
    env.inject(mail(sender="bob@other.test", subject="Second case", message_id="<b1@other.test>"), "--queue",
               "billing")
    env.ok("run", "--once")
    lines = env.ok("export", "cases", "--json").splitlines()
    assert len(lines) == 2, "one case per line"
    record = json.loads(lines[0])
    case = env.json("cases", "show", reference)
    for key in ("reference", "title", "queue", "status", "status_reason", "priority", "origin", "customer_email",
                "customer_name", "created_at", "updated_at", "resolved_at"):
        assert record[key] == case[key], key
    assert (record["reference"], record["queue"], record["customer_email"]) == (reference, "support",
                                                                               "jane@customer.test")
    incoming, ack = record["activities"]
    assert incoming == {
        "kind": "incoming_email", "direction": "in", "from": "jane@customer.test", "from_name": "Jane Doe",
        "to": "support@example.test", "cc": "", "date": case["activities"][0]["created_at"],
        "sent_at": "2026-11-23T10:00:00+00:00", "message_id": "<inv1@customer.test>", "in_reply_to": None,
        "subject": "Invoice wrong", "size": len(raw),
        "attachments": [{"filename": "invoice.pdf", "content_type": "application/pdf", "size": 16}],
    }
    sent = env.rows("SELECT message_id, raw FROM outbound_message")[0]
    assert (ack["kind"], ack["direction"], ack["to"], ack["message_id"], ack["size"]) == \
        ("outgoing_email", "out", "jane@customer.test", sent[0], len(sent[1]))
    assert ack["in_reply_to"] == "<inv1@customer.test>" and f"[{reference}]" in ack["subject"]
    assert "text" not in incoming, "no bodies unless asked"
    with_bodies = json.loads(env.ok("export", "cases", "--bodies", "--queue", "support"))
    assert with_bodies["activities"][0]["text"] == "The invoice is wrong.\n"
    assert [json.loads(line)["queue"] for line in env.ok("export", "cases", "--queue", "billing").splitlines()] \
        == ["billing"]
    bad = env.cli("export", "cases", "--queue", "nope")
    assert bad.exit_code == 1 and bad.output.strip() == "maild: no queue 'nope' in the database"


def test_export_csv_one_row_per_activity_and_date_filters(env: Env, tmp_path: Path) -> None:
    reference, raw = exported_case(env)
    archive = write_mbox(tmp_path / "a.mbox", [(message(1, 0, T0), T0)])
    env.ok("import", "mbox", str(archive), "--queue", "support")
    out = tmp_path / "cases.csv"
    env.ok("export", "cases", "--csv", "--output", str(out))
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["reference"], r["activity_kind"]) for r in table] == [
        (reference, "incoming_email"), (reference, "outgoing_email"),
        (table[2]["reference"], "incoming_email")], "one row per activity, the case's columns repeated"
    row = table[0]
    assert (row["title"], row["queue"], row["status"], row["customer_email"], row["activity_direction"],
            row["activity_from"], row["activity_message_id"], row["activity_subject"], row["activity_size"],
            row["activity_attachments"]) == ("Invoice wrong", "support", "Active", "jane@customer.test", "in",
                                             "jane@customer.test", "<inv1@customer.test>", "Invoice wrong",
                                             str(len(raw)), "invoice.pdf")
    imported = table[2]
    assert (imported["title"], imported["status"], imported["created_at"], imported["activity_date"]) == \
        ("Problem number 0", "Resolved", T0.isoformat(), T0.isoformat())
    assert "activity_text" not in row
    old = env.ok("export", "cases", "--until", "2025-01-01")
    assert [json.loads(line)["title"] for line in old.splitlines()] == ["Problem number 0"]
    recent = env.ok("export", "cases", "--since", "2025-01-01", "--csv")
    assert {r["reference"] for r in csv.DictReader(io.StringIO(recent))} == {reference}
    assert env.ok("export", "cases", "--since", "2030-01-01", "--csv").strip().startswith("reference,title")
