"""Email to case, end to end through the ``maild`` CLI, on SQLite and PostgreSQL.

Mail goes in with ``maild inject``, ``maild run --once`` processes it, and the outbox is
delivered over SMTP to a real aiosmtpd peer on loopback, where the tests read it.
"""

from __future__ import annotations

from email import message_from_bytes
from email.utils import getaddresses

from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from conftest import Env, mail
from test_agent_mail import agent_address, body_of, sent_to
from maild import config as config_mod
from maild import parse
from maild.app import App
from maild.cases import StoreLookup, prefetch
from maild.models import Activity
from maild.processing import IntakeRunner


def _only_case(env: Env) -> dict:  # type: ignore[type-arg]
    cases = env.json("cases", "list")
    assert len(cases) == 1, cases
    return cases[0]  # type: ignore[no-any-return]


def test_first_mail_creates_case_and_acknowledgement(env: Env) -> None:
    env.inject(mail(message_id="<first@customer.test>"))
    assert "processed 1 inbound" in env.ok("run", "--once")

    case = _only_case(env)
    assert case["title"] == "Printer on fire"
    assert (case["status"], case["status_reason"], case["queue"]) == ("Active", "In Progress", "support")
    assert case["customer_email"] == "jane@customer.test"
    assert case["priority"] == "normal"
    for key in ("reference", "created_at"):
        assert case[key]

    [ack] = env.peer.wait_for(1)
    msg = ack.message
    assert ack.rcpt_tos == ["jane@customer.test"]
    assert f"[{case['reference']}]" in msg["Subject"]
    assert getaddresses([msg["From"]])[0][1] == "support@example.test"
    assert msg["In-Reply-To"] == "<first@customer.test>"
    assert "<first@customer.test>" in msg["References"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert case["reference"] in msg.get_body(("plain",)).get_content()

    shown = env.json("cases", "show", case["reference"])
    kinds = [a["kind"] for a in shown["activities"]]
    assert kinds == ["incoming_email", "outgoing_email"]
    incoming = shown["activities"][0]
    assert incoming["message_id"] == "<first@customer.test>"
    assert incoming["from"] == "jane@customer.test"
    assert incoming["subject"] == "Printer on fire"
    assert "printer is on fire" in incoming["text"]
    assert shown["activities"][1]["message_id"] == msg["Message-ID"]
    assert shown["activities"][1]["sent_at"] is not None
    assert env.json("outbox", "list")[0]["state"] == "sent"


def test_reply_with_key_in_subject_threads(env: Env) -> None:
    env.inject(mail())
    env.ok("run", "--once")
    ref = _only_case(env)["reference"]
    # Different client, no In-Reply-To, an encoded and folded subject with an AW: prefix.
    reply = mail(subject=f"AW: Druckér brennt noch immer — sehr lange Betreffzeile die gefaltet wird [{ref}]",
                 body="Still burning.\n")
    assert b"=?utf-8?" in reply
    env.inject(reply)
    env.ok("run", "--once")

    case = _only_case(env)
    assert case["reference"] == ref
    shown = env.json("cases", "show", ref)
    assert [a["kind"] for a in shown["activities"]] == ["incoming_email", "outgoing_email", "incoming_email"]
    assert shown["activities"][-1]["text"].strip() == "Still burning."
    assert len(env.peer.received) == 1, "a reply must not be acknowledged again"


def test_reply_with_only_in_reply_to_threads(env: Env) -> None:
    env.inject(mail())
    env.ok("run", "--once")
    [ack] = env.peer.wait_for(1)
    ref = _only_case(env)["reference"]
    reply = mail(subject="Re: Printer on fire", body="It is out now.\n",
                 headers={"In-Reply-To": ack.message["Message-ID"]})
    env.inject(reply)
    env.ok("run", "--once")
    assert _only_case(env)["reference"] == ref
    assert len(env.json("cases", "show", ref)["activities"]) == 3


def test_reply_with_only_references_threads_onto_earlier_customer_mail(env: Env) -> None:
    env.inject(mail(message_id="<orig@customer.test>"))
    env.ok("run", "--once")
    env.inject(mail(subject="more info", headers={"References": "<unknown@x.test> <orig@customer.test>"}))
    env.ok("run", "--once")
    assert len(env.json("cases", "list")) == 1


def test_automatic_mail_opens_no_case_and_gets_no_acknowledgement(env: Env) -> None:
    """Out-of-office replies and bounces are kept without a case, mail from maild's own
    address is held as a loop, and list mail opens a case without an acknowledgement."""
    env.inject(mail(subject="Out of office", sender="away@customer.test",
                    headers={"Auto-Submitted": "auto-replied"}))
    bounce = mail(subject="Undelivered Mail Returned to Sender", sender="MAILER-DAEMON@mx.customer.test",
                  headers={"Return-Path": "<>"})
    env.inject(bounce)
    env.inject(mail(subject="Newsletter", sender="news@list.test", headers={"List-Id": "<news.list.test>",
                                                                             "Precedence": "list"}))
    env.inject(mail(subject="Loop", sender="billing@example.test"))
    env.ok("run", "--once")

    [case] = env.json("cases", "list")
    assert case["customer_email"] == "news@list.test"
    assert env.json("outbox", "list") == []
    assert env.peer.received == []
    skipped = [e for e in env.json("cases", "show", case["reference"])["audit"] if e["action"] == "acknowledgement_skipped"]
    assert skipped[0]["details"]["reason"] == "precedence"
    outcomes = {message_from_bytes(bytes(raw))["Subject"]: (state, outcome) for raw, state, outcome in env.rows(
        "SELECT r.raw, m.state, m.outcome FROM inbound_message m JOIN inbound_raw r ON r.inbound_id = m.id")}
    assert outcomes == {"Out of office": ("processed", "auto_reply"), "Newsletter": ("processed", "created"),
                        "Undelivered Mail Returned to Sender": ("processed", "bounce_unmatched"),
                        "Loop": ("quarantined", None)}


def test_acknowledgements_are_rate_limited_per_sender(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ack_limit=2)
    for i in range(4):
        env.inject(mail(subject=f"problem {i}"))
    env.ok("run", "--once")
    assert len(env.json("cases", "list")) == 4
    assert len(env.peer.wait_for(2)) == 2
    assert len(env.json("outbox", "list")) == 2


def test_duplicate_delivery_creates_nothing_new(env: Env) -> None:
    raw = mail(message_id="<dup@customer.test>")
    first = env.inject(raw)
    second = env.inject(raw)
    assert "duplicate" not in first and "duplicate" in second
    # Same Message-ID, different bytes (a second relay added a header): still the same message.
    env.inject(b"Received: from relay2.test\n" + raw)
    env.ok("run", "--once")
    # Redelivered after processing, and the same message sent to the other queue too.
    env.inject(raw)
    env.inject(raw.replace(b"To: support@example.test", b"To: billing@example.test"), "--queue", "billing")
    env.ok("run", "--once")

    assert len(env.json("cases", "list")) == 1
    assert len(env.json("outbox", "list")) == 1
    inbound = env.json("inbound", "list")
    assert len(inbound) == 2
    assert sorted(r["outcome"] for r in inbound) == ["created", "duplicate"]


def test_one_batch_sees_what_its_earlier_messages_made(env: Env) -> None:
    """A batch's rows are written together at its end; until then each message still finds
    what the batch's earlier ones made: a duplicate's case, the case a reply answers, the contact."""
    first = mail(message_id="<first@customer.test>")
    env.inject(first)
    env.inject(first.replace(b"To: support@example.test", b"To: billing@example.test"), "--queue", "billing")
    env.inject(mail(subject="Re: Printer on fire", body="Still burning.\n",
                    headers={"In-Reply-To": "<first@customer.test>"}))
    env.inject(mail(subject="Scanner jammed"))
    env.ok("run", "--once")  # the four in one batch (intake takes up to 20)
    assert sorted(c["title"] for c in env.json("cases", "list")) == ["Printer on fire", "Scanner jammed"]
    assert sorted(r["outcome"] for r in env.json("inbound", "list")) == ["created", "created", "duplicate", "threaded"]
    assert env.count("SELECT count(*) FROM contact") == 1
    assert len(env.peer.wait_for(2)) == 2


def test_one_batch_knows_who_is_on_a_case_its_earlier_messages_made(env: Env) -> None:
    """Bob was copied on the customer's reply, in the same batch: his mail carrying only the
    case's key threads onto it, as it would a batch later; Eve, on no mail of the case, does not."""
    env.inject(mail(message_id="<opened@customer.test>"))
    env.ok("run", "--once")
    ref = _only_case(env)["reference"]
    env.inject(mail(subject=f"Re: [{ref}] Printer on fire", headers={"Cc": "Bob <Bob@Partner.test>"}))
    for who in ("Bob <bob@partner.test>", "Eve <eve@elsewhere.test>"):
        env.inject(mail(subject=f"Re: [{ref}] Printer on fire", sender=who, body="Me too.\n"))
    env.ok("run", "--once")  # the three in one batch
    outcomes = [r["outcome"] for r in sorted(env.json("inbound", "list"), key=lambda r: r["id"])]
    assert outcomes == ["created", "threaded", "threaded", "follow_up"]


def test_a_batch_is_written_in_one_flush(env: Env) -> None:
    """Nothing on the way flushes a batch early (a reply's thread and case, who is on that
    case, a new customer, a new case's keys): a flush per message cost more than the rest of
    its writing, and on PostgreSQL a round trip per row."""
    env.inject(mail(message_id="<earlier@customer.test>"))
    env.ok("run", "--once")
    env.inject(mail(subject="Re: Printer on fire", headers={"In-Reply-To": "<earlier@customer.test>"}))
    env.inject(mail(subject="Scanner jammed", sender="Bob <bob@other.test>", message_id="<new@other.test>",
                    headers={"Cc": "carol@other.test"}))
    env.inject(mail(subject="Re: Scanner jammed", sender="carol@other.test", headers={"In-Reply-To": "<new@other.test>"}))
    env.inject(mail(subject="Fax smoking", sender="dan@third.test"))
    app = App(config_mod.load(env.config))
    app.prepare()
    flushes: list[int] = []
    inserts: list[str] = []
    contact_reads: list[str] = []
    ack_counts: list[str] = []
    duplicate_checks: list[str] = []

    def count(session: Session, _context: object, _objects: object) -> None:
        flushes.append(len(session.new))

    def statement(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        if sql.startswith(("INSERT INTO", "UPDATE counter")):
            inserts.append(sql.split()[2] if sql.startswith("INSERT") else "counter")
        elif sql.startswith("SELECT") and "FROM contact" in sql:
            contact_reads.append(sql)
        elif sql.startswith("SELECT") and "FROM outbound_message" in sql and "count(" in sql:
            ack_counts.append(sql)
        elif sql.startswith("SELECT") and "FROM activity" in sql and "activity.kind" in sql:
            duplicate_checks.append(sql)

    event.listen(Session, "before_flush", count)
    event.listen(app.engine, "before_cursor_execute", statement)
    try:
        assert IntakeRunner(app.factory, app.intake_context).run_once() == 4
    finally:
        event.remove(Session, "before_flush", count)
        app.close()
    assert len(flushes) == 1, f"rows pending at each flush: {flushes}"
    assert inserts.count("cases") == 1, "the two new cases, their ids known, in one INSERT"
    assert inserts.count("audit_event") == 1, "the batch's audit events in one INSERT, after the flush"
    assert len(contact_reads) == 1, f"the batch's senders looked up at once: {contact_reads}"
    assert len(ack_counts) == 1, "the senders' acknowledgements of the last hour counted at once"
    assert len(duplicate_checks) == 1, f"the batch's Message-IDs looked up as recorded at once: {duplicate_checks}"
    # On SQLite too, where the ORM would learn each new id from an INSERT of its own.
    assert inserts.count("activity") == 1, "the six activities (four in, two acknowledgements) in one INSERT"
    assert inserts.count("outbound_message") == 1, "the two acknowledgements in one INSERT"
    assert inserts.count("counter") == (1 if app.engine.dialect.name == "sqlite" else 0), \
        "SQLite's case counter written once for the two new cases; PostgreSQL's numbers come from a sequence"
    assert [r["outcome"] for r in sorted(env.json("inbound", "list"), key=lambda r: r["id"])] == \
        ["created", "threaded", "created", "threaded", "created"]


def test_a_batch_looks_up_the_cases_its_replies_answer_at_once(env: Env) -> None:
    """The stored messages a batch's replies answer are found, and their cases locked and
    loaded, with the batch, not once per reply (that was 8% of writing); a Message-ID not
    stored then is looked for again, since another worker may have stored it meanwhile."""
    env.inject(mail(message_id="<a@customer.test>"))
    env.inject(mail(subject="Scanner jammed", message_id="<b@customer.test>"))
    env.ok("run", "--once")
    for parent in ("<a@customer.test>", "<b@customer.test>", "<a@customer.test>"):
        env.inject(mail(subject="Re: it", body="More.\n", headers={"In-Reply-To": parent}))
    app = App(config_mod.load(env.config))
    app.prepare()
    thread_lookups: list[str] = []
    case_loads: list[str] = []

    def statement(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        flat = " ".join(sql.split())
        if flat.startswith("SELECT activity.message_id, activity.case_id, cases.merged_into_id"):
            thread_lookups.append(flat)
        elif flat.startswith("SELECT cases.id, cases.reference"):
            case_loads.append(flat)

    event.listen(app.engine, "before_cursor_execute", statement)
    try:
        assert IntakeRunner(app.factory, app.intake_context).run_once() == 3
    finally:
        app.close()
    assert len(thread_lookups) == 1, thread_lookups
    assert len(case_loads) == 1, case_loads
    if app.engine.dialect.name == "postgresql":
        assert "FOR UPDATE" in case_loads[0], "the cases locked as they are loaded, for the batch"
    assert [r["outcome"] for r in env.json("inbound", "list")].count("threaded") == 3
    incoming = {c["title"]: [a["kind"] for a in env.json("cases", "show", c["reference"])["activities"]]
                .count("incoming_email") for c in env.json("cases", "list")}
    assert incoming == {"Printer on fire": 3, "Scanner jammed": 2}


def test_a_message_id_stored_after_the_batch_looked_it_up_is_still_found(env: Env) -> None:
    env.inject(mail(message_id="<a@customer.test>"))
    env.ok("run", "--once")
    app = App(config_mod.load(env.config))
    app.prepare()
    try:
        with app.factory() as session:
            prefetch(session, [parse.parse(mail(headers={"In-Reply-To": "<late@customer.test>",
                                                         "References": "<a@customer.test>"}))], app.clock())
            lookup = StoreLookup(session)
            case_id = lookup.case_by_message_ids(["<a@customer.test>"])["<a@customer.test>"]
            # As another worker's committed activity would appear under READ COMMITTED.
            session.connection().execute(insert(Activity).values(
                case_id=case_id, kind="incoming_email", message_id="<late@customer.test>",
                created_at=app.clock()))
            assert lookup.case_by_message_ids(["<late@customer.test>", "<a@customer.test>"]) == {
                "<late@customer.test>": case_id, "<a@customer.test>": case_id}
            session.rollback()
    finally:
        app.close()


def test_header_injection_is_impossible(env: Env) -> None:
    raw = (b"From: =?utf-8?b?" + __import__("base64").b64encode("Eve\r\nBcc: victim@evil.test".encode())
           + b"?= <eve@customer.test>\r\nTo: support@example.test\r\nMessage-ID: <inj@customer.test>\r\n"
           b"Subject: =?utf-8?b?" + __import__("base64").b64encode("hi\r\nBcc: victim@evil.test\r\nX-Evil: 1".encode())
           + b"?=\r\n\r\nbody\r\n")
    env.inject(raw)
    env.ok("run", "--once")
    [ack] = env.peer.wait_for(1)
    assert ack.rcpt_tos == ["eve@customer.test"]
    msg = ack.message
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    header_block = ack.raw.split(b"\r\n\r\n", 1)[0]
    assert not any(line.startswith((b"Bcc:", b"X-Evil:")) for line in header_block.split(b"\r\n"))
    assert "Bcc: victim@evil.test" in msg["Subject"]  # kept as text, on one line


def test_agent_reply_is_relayed_to_the_customer(env: Env) -> None:
    env.inject(mail(message_id="<q@customer.test>"))
    env.ok("run", "--once")
    ref = _only_case(env)["reference"]
    [ack] = env.peer.wait_for(1)
    reply_to = env.json("cases", "show", ref)["agent_reply_to"]  # on every notice to agents
    assert reply_to.startswith(f"support+{ref}.") and reply_to.endswith("@example.test")
    assert reply_to != ack.message["Reply-To"].addresses[0].addr_spec, "not the customer's address"
    agent_mail = mail(subject=f"Re: Printer on fire [{ref}]", sender="Alice Agent <alice@example.test>",
                      body="Please unplug it first.\n\n> Help, my printer is on fire.\n", to=reply_to,
                      headers={"In-Reply-To": ack.message["Message-ID"]})
    env.inject(agent_mail)
    env.ok("run", "--once")

    _, relay = env.peer.wait_for(2)
    msg = relay.message
    assert relay.rcpt_tos == ["jane@customer.test"]
    assert getaddresses([msg["From"]])[0][1] == "support@example.test"
    assert "Alice Agent" in msg["From"]
    assert f"[{ref}]" in msg["Subject"]
    assert msg["In-Reply-To"] == "<q@customer.test>"
    assert msg["Auto-Submitted"] is None, "a person's reply is not auto-submitted"
    assert "unplug it first" in msg.get_body(("plain",)).get_content()
    assert "alice@example.test" not in relay.raw.decode(errors="replace").split("\n\n")[0]

    shown = env.json("cases", "show", ref)
    assert shown["first_response_at"] is not None
    assert [a["kind"] for a in shown["activities"]][-1] == "outgoing_email"
    assert any(e["action"] == "agent_reply" and e["actor"] == "agent:Alice Agent" for e in shown["audit"])


def test_a_forged_agent_reply_is_kept_as_an_unverified_note_and_not_relayed(env: Env) -> None:
    env.inject(mail(message_id="<q@customer.test>"))
    env.ok("run", "--once")
    ref = _only_case(env)["reference"]
    [ack] = env.peer.wait_for(1)
    forged_token = f"support+{ref}.aaaaaaaaaa@example.test"  # the right shape, the wrong signature
    customers = ack.message["Reply-To"].addresses[0].addr_spec  # she holds it: it proves no agent
    for to in ("support@example.test", forged_token, customers):  # the key in the subject, From alice: not enough
        env.inject(mail(subject=f"Re: [{ref}] refund approved", sender="Alice Agent <alice@example.test>",
                        body="Refund of 5000 EUR approved, send your bank details.\n", to=to))
    env.ok("run", "--once")
    assert len(sent_to(env, "jane@customer.test")) == 1, "nothing relayed to the customer"
    told = sent_to(env, "alice@example.test")  # each time: why, and the address that relays
    assert len(told) == 3 and all(agent_address(env, ref) in body_of(m) for m in told)
    shown = env.json("cases", "show", ref)
    notes = [a for a in shown["activities"] if a["kind"] == "note"]
    assert len(notes) == 3 and all(n["subject"].startswith("[unverified]") for n in notes)
    assert sum(e["action"] == "unverified_agent_mail" for e in shown["audit"]) == 3
    assert shown["first_response_at"] is None
    outcomes = [r["outcome"] for r in env.json("inbound", "list")]
    assert outcomes.count("unverified_note") == 3


def test_a_reply_to_the_signed_address_threads_without_subject_or_headers(env: Env) -> None:
    env.inject(mail(message_id="<q@customer.test>"))
    env.ok("run", "--once")
    ref = _only_case(env)["reference"]
    [ack] = env.peer.wait_for(1)
    env.inject(mail(subject="(no subject)", to=ack.message["Reply-To"].addresses[0].addr_spec))
    env.ok("run", "--once")
    assert len(env.json("cases", "list")) == 1
    assert env.json("cases", "show", ref)["activities"][-1]["subject"] == "(no subject)"


def test_agent_mail_without_a_case_is_quarantined(env: Env) -> None:
    env.inject(mail(subject="hello team", sender="alice@example.test"))
    env.ok("run", "--once")
    assert env.json("cases", "list") == []
    [row] = env.json("inbound", "list", "--quarantined")
    assert "does not reference a case" in row["error"]


def test_customer_reply_to_resolved_case_reopens_within_window(env: Env) -> None:
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa

    env.inject(mail())
    env.ok("run", "--once")
    ref = _only_case(env)["reference"]
    resolved_at = datetime.now(timezone.utc) - timedelta(days=1)
    with env.engine().begin() as conn:
        conn.execute(sa.text("UPDATE cases SET status='Resolved', status_reason='Problem Solved', resolved_at=:t"),
                     {"t": resolved_at})
    env.inject(mail(subject=f"Re: [{ref}] it is back"))
    env.ok("run", "--once")
    case = _only_case(env)
    assert (case["status"], case["status_reason"]) == ("Active", "In Progress")
    assert any(e["action"] == "reopened" for e in env.json("cases", "show", ref)["audit"])


def test_customer_reply_after_window_creates_linked_case(env: Env) -> None:
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa

    env.inject(mail())
    env.ok("run", "--once")
    ref = _only_case(env)["reference"]
    with env.engine().begin() as conn:
        conn.execute(sa.text("UPDATE cases SET status='Resolved', status_reason='Problem Solved', resolved_at=:t"),
                     {"t": datetime.now(timezone.utc) - timedelta(days=30)})
    env.inject(mail(subject=f"Re: Printer on fire [{ref}]", body="It is on fire again.\n"))
    env.ok("run", "--once")

    cases = env.json("cases", "list")
    assert len(cases) == 2
    new = next(c for c in cases if c["reference"] != ref)
    assert new["status"] == "Active"
    assert env.json("cases", "show", new["reference"])["previous_case"] == ref
    assert env.json("cases", "show", ref)["status"] == "Resolved"
    acks = env.peer.wait_for(2)
    assert f"[{new['reference']}]" in acks[1].message["Subject"]


def test_attachments_are_stored_by_hash_not_by_name(env: Env) -> None:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "jane@customer.test", "support@example.test", "log attached"
    msg["Message-ID"] = "<att@customer.test>"
    msg.set_content("see attachment")
    msg.add_attachment(b"\x00secret-bytes\x01", maintype="application", subtype="octet-stream",
                       filename="../../../../tmp/evil.sh")
    env.inject(msg.as_bytes())
    env.ok("run", "--once")
    shown = env.json("cases", "show", _only_case(env)["reference"])
    [att] = shown["activities"][0]["attachments"]
    assert att["filename"] == "../../../../tmp/evil.sh"
    stored = env.path / "data" / "attachments" / att["sha256"][:2] / att["sha256"][2:4] / att["sha256"]
    assert stored.read_bytes() == b"\x00secret-bytes\x01"
    assert not (env.path / "tmp" / "evil.sh").exists()


def test_html_only_mail_is_converted_and_sanitised(env: Env) -> None:
    from email.message import EmailMessage

    import sqlalchemy as sa

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "jane@customer.test", "support@example.test", "html"
    msg.set_content('<p>Hello <b>team</b><script>alert(1)</script><a href="javascript:x()" onclick="y()">x</a></p>',
                    subtype="html")
    env.inject(msg.as_bytes())
    env.ok("run", "--once")
    shown = env.json("cases", "show", _only_case(env)["reference"])
    assert "Hello team" in " ".join(shown["activities"][0]["text"].split())
    with env.engine().connect() as conn:
        html = conn.execute(sa.text("SELECT html FROM activity WHERE kind='incoming_email'")).scalar_one()
    assert "<script" not in html and "onclick" not in html and "javascript:" not in html
    assert "<b>team</b>" in html


def test_case_list_filters_and_tables(env: Env) -> None:
    env.inject(mail(subject="support one"))
    env.inject(mail(subject="billing one", to="billing@example.test"))
    env.ok("run", "--once")
    assert [c["title"] for c in env.json("cases", "list", "--queue", "billing")] == ["billing one"]
    assert len(env.json("cases", "list", "--status", "in progress")) == 2
    assert env.json("cases", "list", "--status", "Resolved") == []
    bad = env.cli("cases", "list", "--status", "Sleeping")
    assert bad.exit_code == 2 and "neither a status nor a status reason" in bad.output
    table = env.ok("cases", "list").splitlines()
    assert table[0].split()[:3] == ["reference", "status", "status"]
    assert len(table) == 3
    # Columns line up: the title column starts at the same offset on every row.
    assert len({line.index("one") for line in table[1:]}) == 1
    shown = env.ok("cases", "show", env.json("cases", "list", "--queue", "billing")[0]["reference"])
    assert "billing one" in shown and "incoming email" in shown
    missing = env.cli("cases", "show", "CAS-99999-ZZZZZZ")
    assert missing.exit_code == 1 and "no case CAS-99999-ZZZZZZ" in missing.output
