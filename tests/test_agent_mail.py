"""Agents working a case from their mail client: commands at the top of a reply, internal
notes, proof of who wrote (signed reply address or a trusted DKIM/DMARC pass), and the
notices agents get. End to end through ``maild inject`` and ``maild run --once``, with
outgoing mail captured by a real SMTP peer, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from conftest import Env, mail

ALICE = "Alice Agent <alice@example.test>"
BOB = '\n[[agents]]\nname = "Bob Agent"\nemails = ["bob@example.test"]\n'


def queue_keys(env: Env, **keys: Any) -> None:
    """Set keys of [queues.support] in the test config."""
    lines = "".join(f"\n{k} = {_toml(v)}" for k, v in keys.items())
    env.config.write_text(env.config.read_text().replace('name = "Example Support"', 'name = "Example Support"' + lines))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def open_case(env: Env) -> tuple[str, str]:
    """A customer's case; returns its reference and the agents' signed reply address."""
    env.inject(mail(message_id="<q@customer.test>"))
    env.ok("run", "--once")
    env.peer.wait_for(1)
    env.peer.received.clear()
    ref = env.json("cases", "list")[0]["reference"]
    return ref, agent_address(env, ref)


def agent_address(env: Env, ref: str) -> str:
    return str(env.json("cases", "show", ref)["agent_reply_to"])


def agent_reply(env: Env, ref: str, to: str, body: str, sender: str = ALICE, **headers: str) -> None:
    env.inject(mail(subject=f"Re: [{ref}] Printer on fire", sender=sender, to=to, body=body, headers=headers))
    env.ok("run", "--once")


def sent_to(env: Env, address: str) -> list[Any]:
    return [m.message for m in env.peer.received if address in m.rcpt_tos]


def body_of(msg: Any) -> str:
    return str(msg.get_body(("plain",)).get_content())


def test_commands_run_are_stripped_from_the_relayed_text_and_confirmed(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra=BOB)
    ref, signed = open_case(env)
    agent_reply(env, ref, signed, "#priority high\n#assign bob agent\n#resolve Problem Solved 45m\n\n"
                "Hi Jane, the fuse was replaced.\n\nAlice\n")
    case = env.json("cases", "show", ref)
    assert (case["status"], case["status_reason"], case["priority"], case["owner"]) == \
        ("Resolved", "Problem Solved", "high", "Bob Agent")
    env.peer.wait_for(2)
    [relayed] = sent_to(env, "jane@customer.test")
    assert "the fuse was replaced" in body_of(relayed) and "#" not in body_of(relayed)
    [confirmation] = sent_to(env, "alice@example.test")
    assert confirmation["Subject"].strip().startswith("Done:") and ref in confirmation["Subject"]
    text = body_of(confirmation)
    assert "priority normal -> high" in text and "owner Bob Agent" in text and "resolved: Problem Solved" in text
    history = {e["action"]: e for e in env.json("cases", "history", ref)}
    assert history["resolved"]["actor"] == "agent:Alice Agent"
    assert history["resolved"]["details"]["time_spent_minutes"] == 45
    assert "fuse was replaced" in _resolution(env, ref), "the reply's text is the resolution narrative"


def _resolution(env: Env, ref: str) -> str:
    import sqlalchemy as sa

    with env.engine().connect() as conn:
        return str(conn.execute(sa.text("SELECT resolution FROM cases WHERE reference = :r"), {"r": ref}).scalar())


def test_a_bad_command_does_nothing_and_the_agent_is_told_which(env: Env) -> None:
    ref, signed = open_case(env)
    agent_reply(env, ref, signed, "#priority high\n#stauts on-hold\nDear Jane, done.\n")
    case = env.json("cases", "show", ref)
    assert (case["status_reason"], case["priority"]) == ("In Progress", "normal"), "no command ran"
    [error] = env.peer.wait_for(1)
    assert error.rcpt_tos == ["alice@example.test"], "nothing went to the customer"
    assert " ".join(error.message["Subject"].split()).startswith("Not done: #stauts on-hold: unknown command")
    notes = [a for a in case["activities"] if a["kind"] == "note"]
    assert len(notes) == 1 and "command error" in notes[0]["subject"], ("the mail is kept", case["activities"])
    assert [r["outcome"] for r in env.json("inbound", "list")].count("command_error") == 1


def test_a_command_that_fails_undoes_the_commands_before_it(env: Env) -> None:
    ref, signed = open_case(env)
    agent_reply(env, ref, signed, "#priority urgent\n#assign nobody\nText for Jane.\n")
    case = env.json("cases", "show", ref)
    assert case["priority"] == "normal" and case.get("owner") is None
    [error] = env.peer.wait_for(1)
    assert error.rcpt_tos == ["alice@example.test"]
    assert "#assign nobody: no agent 'nobody'" in body_of(error.message)
    assert not [a for a in case["activities"] if a["kind"] == "outgoing_email" and "Text for Jane" in (a["text"] or "")]


def test_note_command_and_comment_address_are_never_relayed(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    queue_keys(env, comment_addresses=["support-comment@example.test"])
    ref, signed = open_case(env)
    agent_reply(env, ref, signed, "#note\nCustomer is a reseller, check the contract.\n")
    comment = signed.replace("support+", "support-comment+")
    agent_reply(env, ref, comment, "Called the customer, no answer.\n")
    env.ok("outbox", "list")
    case = env.json("cases", "show", ref)
    notes = [a for a in case["activities"] if a["kind"] == "note"]
    assert [n["subject"].split("]")[0] for n in notes] == ["[internal note", "[internal note"]
    env.peer.wait_for(1)  # the #note confirmation, to Alice only
    assert sent_to(env, "jane@customer.test") == []
    assert all(m.rcpt_tos == ["alice@example.test"] for m in env.peer.received)


def test_dkim_pass_from_a_trusted_server_proves_the_agent(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra='\n[security]\ntrusted_authserv_ids = ["mx.example.test"]\n')
    ref, _ = open_case(env)
    forged = {"Authentication-Results": "evil.test; dkim=pass header.d=example.test"}
    agent_reply(env, ref, "support@example.test", "Not from the trusted server.\n", **forged)
    other_domain = {"Authentication-Results": "mx.example.test; dkim=pass header.d=attacker.test"}
    agent_reply(env, ref, "support@example.test", "Signed by someone else.\n", **other_domain)
    good = {"Authentication-Results": "mx.example.test; spf=pass smtp.mailfrom=example.test; "
                                      "dkim=pass header.d=example.test header.s=s1; dmarc=pass header.from=example.test"}
    agent_reply(env, ref, "support@example.test", "#status on-hold\nWe ordered the part.\n", **good)
    case = env.json("cases", "show", ref)
    assert case["status_reason"] == "On Hold"
    notes = [a["subject"] for a in case["activities"] if a["kind"] == "note"]
    assert len(notes) == 2 and all(n.startswith("[unverified]") for n in notes)
    env.peer.wait_for(4)  # the two notes' notices to Alice, the command's confirmation, the reply
    [relayed] = sent_to(env, "jane@customer.test")
    assert "ordered the part" in body_of(relayed)


def test_an_agents_auto_reply_is_filed_as_one_and_runs_nothing(env: Env) -> None:
    ref, signed = open_case(env)
    agent_reply(env, ref, signed, "#resolve Problem Solved\nI am out of office until Monday.\n",
                **{"Auto-Submitted": "auto-replied"})
    case = env.json("cases", "show", ref)
    assert case["status"] == "Active"
    assert [a["kind"] for a in case["activities"]][-1] == "auto_reply"
    env.ok("run", "--once")
    assert env.peer.received == []


def test_kb_command_sends_a_published_article_and_names_an_unknown_one(env: Env) -> None:
    number = env.ok("kb", "add", "--title", "Printer fire checklist", "--body", "Unplug the printer.").split()[1]
    env.ok("kb", "publish", number)
    ref, signed = open_case(env)
    agent_reply(env, ref, signed, "#kb 42\nSee the article.\n")
    [error] = env.peer.wait_for(1)
    assert error.rcpt_tos == ["alice@example.test"] and "no published article 42" in body_of(error.message)
    env.peer.received.clear()
    agent_reply(env, ref, signed, f"#kb {number}\nSee the article.\n")
    env.peer.wait_for(3)
    to_customer = sent_to(env, "jane@customer.test")
    [article] = [m for m in to_customer if "Printer fire checklist" in m["Subject"]]
    assert ref in article["Subject"] and "Unplug the printer." in body_of(article)
    [confirmation] = sent_to(env, "alice@example.test")
    assert confirmation["Subject"].strip().startswith("Done:") and f"article {number}" in body_of(confirmation)
    shown = env.json("kb", "show", number)
    assert (shown["times_sent"], shown["times_linked"]) == (1, 1)


def test_agents_are_told_of_new_cases_replies_and_assignments(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra=BOB)
    queue_keys(env, agents=["Alice Agent", "Bob Agent"], notify_agents=["new_case", "customer_reply", "assigned"])
    ref, ack = open_case_keeping_notices(env)
    new = [m for m in env.peer.received if m.message["Subject"].strip().startswith("New case")]
    assert sorted(r for m in new for r in m.rcpt_tos) == ["alice@example.test", "bob@example.test"]
    signed = agent_address(env, ref)
    assert all(ref in m.message["Subject"] and m.message["Reply-To"] == signed for m in new), "agents' address"
    assert ack.message["Reply-To"] != signed, "the customer's address is another"
    # Answering the notice is how an agent answers the customer.
    agent_reply(env, ref, new[0].message["Reply-To"], "Please unplug it.\n")
    assert "relayed" in [r["outcome"] for r in env.json("inbound", "list")]
    env.peer.received.clear()
    env.ok("cases", "assign", ref, "--agent", "Bob Agent")
    env.ok("run", "--once")
    [assigned] = env.peer.wait_for(1)
    assert assigned.rcpt_tos == ["bob@example.test"] and assigned.message["Subject"].startswith("Assigned to you")
    env.peer.received.clear()
    env.inject(mail(subject=f"Re: [{ref}] Printer on fire", body="It is still smoking.\n"))
    env.ok("run", "--once")
    [reply] = env.peer.wait_for(1)
    assert reply.rcpt_tos == ["bob@example.test"] and "still smoking" in body_of(reply.message)


def open_case_keeping_notices(env: Env) -> tuple[str, Any]:
    env.inject(mail(message_id="<q@customer.test>"))
    env.ok("run", "--once")
    env.peer.wait_for(3)
    ack = next(m for m in env.peer.received if m.rcpt_tos == ["jane@customer.test"])
    return env.json("cases", "list")[0]["reference"], ack


def test_the_agent_who_takes_a_case_by_mail_is_not_told_about_it(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    queue_keys(env, notify_agents=["assigned"])
    ref, signed = open_case(env)
    agent_reply(env, ref, signed, "#assign Alice Agent\n")
    [confirmation] = env.peer.wait_for(1)
    assert confirmation.message["Subject"].strip().startswith("Done:"), "a confirmation, not an assignment notice"
    assert env.json("cases", "show", ref)["owner"] == "Alice Agent"


def test_rules_test_threads_by_the_signed_address_as_intake_does(env: Env, tmp_path: Any) -> None:
    ref, _ = open_case(env)
    eml = tmp_path / "reply.eml"
    # No key in the subject and no thread headers: only the signed address ties it to the case.
    eml.write_bytes(mail(subject="(no subject)", to=f"support+{ref}.x@example.test"))
    assert env.json("rules", "test", str(eml))["outcome"].startswith("create"), "a wrong signature threads nothing"
    eml.write_bytes(mail(subject="(no subject)", to=_customer_address(env, ref)))
    out = env.json("rules", "test", str(eml))
    assert ref in str(out) and not out["outcome"].startswith("create"), out["outcome"]


def _customer_address(env: Env, ref: str) -> str:
    from maild import config, replytokens

    key = replytokens.load_key(config.load(env.config).security.reply_token_key_file)
    return replytokens.address("support@example.test", ref, key)
