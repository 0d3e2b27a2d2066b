"""The knowledge base: versioned articles, search on both databases, articles mailed to a
case's customer and linked, usage counters, drafts from resolved cases, and imports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import Env, mail
from test_agent_mail import body_of, open_case, sent_to


def add(env: Env, title: str, body: str, *extra: str, publish: bool = True) -> int:
    out = env.ok("kb", "add", "--title", title, "--body", body, *extra)
    number = int(out.split()[1])
    if publish:
        env.ok("kb", "publish", str(number))
    return number


def article(env: Env, number: int, *extra: str) -> Any:
    return env.json("kb", "show", str(number), *extra)


def found(env: Env, query: str, *extra: str) -> list[int]:
    return [r["number"] for r in env.json("kb", "search", query, *extra)]


def test_editing_a_published_article_keeps_the_old_version(env: Env) -> None:
    n = add(env, "Reset a password", "Click *Forgot password*.", "--keywords", "login, password", publish=False)
    env.ok("kb", "edit", str(n), "--body", "Click *Forgot password* on the login page.")
    assert article(env, n)["current_version"] == 1, "a draft is edited in place"
    env.ok("kb", "publish", str(n))
    assert "version 2" in env.ok("kb", "edit", str(n), "--title", "Reset your password")
    now, old = article(env, n), article(env, n, "--version", "1")
    assert (now["version"], now["title"], now["state"]) == (2, "Reset your password", "published")
    assert (old["version"], old["title"]) == (1, "Reset a password")
    assert now["body"] == old["body"] == "Click *Forgot password* on the login page."
    assert now["keywords"] == "login, password"
    assert found(env, "your password") == [n], "search sees the current version"
    assert found(env, "reset a password") == []
    env.ok("kb", "archive", str(n))
    assert env.json("kb", "list", "--state", "archived")[0]["number"] == n
    assert found(env, "password") == [], "archived articles are not searched"
    assert env.cli("kb", "show", str(n), "--version", "3").exit_code == 1


def test_search_finds_every_term_and_ranks_by_relevance_and_use(env: Env) -> None:
    reset = add(env, "Reset your password", "Use the reset link. The password must have 12 characters.")
    mention = add(env, "Account settings", "You can change the language, the time zone and the password here; "
                                           "a reset of all settings is under Advanced.")
    add(env, "Printer on fire", "Unplug the printer. Do not reset it.")
    draft = add(env, "Password reset for admins", "Admins reset a password from the console.", publish=False)
    assert found(env, "reset password") == [reset, mention], "title matches rank first; drafts are not searched"
    assert found(env, "RESET Password!") == [reset, mention], "case and punctuation do not matter"
    assert set(found(env, "reset password", "--all-states")) == {reset, mention, draft}
    assert found(env, "printer password") == [], "every term is required"
    assert found(env, "fire") == [3]
    assert found(env, "reset password", "--limit", "1") == [reset]
    for _ in range(3):
        env.ok("kb", "rate", str(reset), "--not-helpful")
        env.ok("kb", "rate", str(mention), "--helpful")
    assert found(env, "reset password") == [mention, reset], "helpful ratings lift an article"
    assert article(env, mention)["helpful_yes"] == 3


def test_an_article_is_sent_to_the_customer_linked_and_counted(env: Env) -> None:
    n = add(env, "Printer fire checklist", "1. Unplug the printer.\n2. Call the fire brigade.\n")
    ref, _ = open_case(env)
    said = env.ok("kb", "send", str(n), "--case", ref)
    assert f"article {n}" in said and "jane@customer.test" in said
    env.ok("run", "--once")
    [sent] = env.peer.wait_for(1)
    msg = sent.message
    assert sent.rcpt_tos == ["jane@customer.test"] and msg["From"].addresses[0].addr_spec == "support@example.test"
    assert f"[{ref}]" in msg["Subject"] and "Printer fire checklist" in msg["Subject"]
    assert msg["Reply-To"].startswith(f"support+{ref}.") and msg["Reply-To"].endswith("@example.test"), \
        "the case's signed reply address"
    assert "2. Call the fire brigade." in body_of(msg)
    case = env.json("cases", "show", ref)
    assert [a["subject"] for a in case["activities"] if a["kind"] == "outgoing_email"][-1] == msg["Subject"]
    assert case["first_response_at"] is not None
    assert case["articles"] == [{"number": n, "title": "Printer fire checklist", "sent": True,
                                 "linked_at": case["articles"][0]["linked_at"], "suggested": False,
                                 "helpful": None, "rating_comment": None}]
    assert f"article:            {n} 'Printer fire checklist' (sent)" in env.ok("cases", "show", ref)
    env.ok("kb", "send", str(n), "--case", ref)
    counts = article(env, n)
    assert (counts["times_sent"], counts["times_linked"], counts["times_resolved"]) == (2, 1, 0)
    env.ok("cases", "resolve", ref, "--type", "Problem Solved", "--narrative", "The checklist helped.")
    assert article(env, n)["times_resolved"] == 1, "resolved with the article linked"
    other = add(env, "Unlinked", "Not sent anywhere.")
    assert article(env, other)["times_resolved"] == 0
    [row] = [r for r in env.json("kb", "stats")["articles"] if r["number"] == n]
    assert (row["linked"], row["sent"], row["resolved"]) == (1, 2, 1)


def test_only_published_articles_are_sent(env: Env) -> None:
    n = add(env, "Draft only", "Not yet.", publish=False)
    ref, _ = open_case(env)
    result = env.cli("kb", "send", str(n), "--case", ref)
    assert result.exit_code == 1 and f"no published article {n}" in result.output
    result = env.cli("kb", "send", "99", "--case", ref)
    assert result.exit_code == 1 and "no published article 99" in result.output
    env.ok("run", "--once")
    assert env.peer.received == []
    assert article(env, n)["times_linked"] == 0


def test_a_resolved_case_becomes_a_draft_article(env: Env) -> None:
    ref, _ = open_case(env)
    assert "resolve it first" in env.cli("cases", "to-kb", ref).output
    env.ok("cases", "resolve", ref, "--type", "Problem Solved", "--narrative",
           "Replace the printer fuse; the printer then works again.")
    out = env.ok("cases", "to-kb", ref)
    n = int(out.split()[1])
    a = article(env, n)
    assert (a["state"], a["title"]) == ("draft", "Printer on fire")
    assert "Help, my printer is on fire." in a["body"] and "Replace the printer fuse" in a["body"]
    assert a["keywords"].split(", ")[0] == "printer", "the most used title term leads"
    assert "on" not in a["keywords"].split(", "), "stopwords are left out"
    assert "already became article" in env.cli("cases", "to-kb", ref).output


def test_import_is_idempotent_and_names_bad_files(env: Env, tmp_path: Path) -> None:
    kb = tmp_path / "articles"
    kb.mkdir()
    (kb / "vpn.md").write_text("---\ntitle: Connect to the VPN\nkeywords: [vpn, remote]\nstate: published\n---\n"
                               "Install the client.\n")
    (kb / "printer.md").write_text("---\nid: printer-fire\ntitle: Printer on fire\n---\nUnplug it.\n")
    (kb / "broken.md").write_text("---\ntitle: [unclosed\n---\nBody.\n")
    result = env.cli("kb", "import", str(kb))
    assert result.exit_code == 1
    assert "broken.md" in result.output and "bad front matter" in result.output and "Traceback" not in result.output
    assert "2 created" in result.output
    listed = {a["title"]: a for a in env.json("kb", "list")}
    assert set(listed) == {"Connect to the VPN", "Printer on fire"}
    assert listed["Connect to the VPN"]["state"] == "published" and listed["Printer on fire"]["state"] == "draft"
    (kb / "broken.md").unlink()
    assert "0 created, 0 updated, 2 unchanged" in env.ok("kb", "import", str(kb))
    (kb / "vpn.md").write_text("---\ntitle: Connect to the VPN\nstate: published\n---\nInstall the new client.\n")
    assert "0 created, 1 updated, 1 unchanged" in env.ok("kb", "import", str(kb))
    assert len(env.json("kb", "list")) == 2, "matched by file name, not duplicated"
    vpn = article(env, listed["Connect to the VPN"]["number"])
    assert (vpn["version"], vpn["body"]) == (2, "Install the new client.\n")
    assert found(env, "new client") == [vpn["number"]]


def suggesting_env(make_env: Any, tmp_path: Path) -> Env:
    """An installation whose rule adds two articles to acknowledgements of password mail."""
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10-creation.toml").write_text(
        '[[creation]]\nname = "suggest"\nwhen = { field = "subject", contains = "password" }\n'
        'set = { suggest_articles = 2 }\n')
    env: Env = make_env(rules=folder.as_posix(), ack_limit=100)
    return env


def test_a_rule_adds_matching_articles_to_the_acknowledgement(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = suggesting_env(make_env, tmp_path)
    reset = add(env, "Reset your password", "Use the *Forgot password* link on the login page.")
    add(env, "Printer on fire", "Unplug the printer.")
    draft = add(env, "Password policy draft", "Twelve characters.", publish=False)
    env.inject(mail(subject="Password forgotten", body="I cannot log in, how do I reset my password?\n"))
    env.ok("run", "--once")
    [ack] = env.peer.wait_for(1)
    text = body_of(ack.message)
    assert "may already answer" in text and f"Reset your password (article {reset})" in text
    assert "Forgot password" in text, "with an excerpt of the article"
    assert "Printer on fire" not in text and f"article {draft})" not in text
    html = str(ack.message.get_body(("html",)).get_content())
    assert "Reset your password" in html
    env.peer.received.clear()
    env.inject(mail(subject="Printer question", body="How do I reset my password?\n"))
    env.ok("run", "--once")
    [plain] = env.peer.wait_for(1)
    assert "may already answer" not in body_of(plain.message), "only where a rule asks for suggestions"


def test_suggest_articles_is_checked_when_the_rules_load(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10-creation.toml").write_text('[[creation]]\nname = "many"\nset = { suggest_articles = 50 }\n')
    env: Env = make_env(rules=folder.as_posix())
    result = env.cli("rules", "check")
    assert result.exit_code != 0 and "suggest_articles" in result.output


def test_suggestions_search_by_a_messages_most_telling_words(env: Env) -> None:
    from maild import knowledge
    from maild.app import load_app
    from maild.db import transaction

    common = [add(env, f"Printer tip {i}", "The printer needs paper and toner.") for i in range(8)]
    fuser = add(env, "Printer fuser replacement", "Replace the fuser when pages smear.")
    app = load_app(env.config)
    try:
        with transaction(app.factory) as session:
            message = "My printer printer printer smears pages; the fuser, maybe? printer again."
            [first, *_] = knowledge.suggestions(session, "printer trouble", message, 3)
            assert first["number"] == fuser, "the article with the rare word the message carries"
            # Counted over published articles' titles, keywords and bodies, in memory.
            index, _ = knowledge._ARTICLES.current(session)
            words = index.rarest(["printer", "fuser", "nowhere", "toner"])
            assert words == ["fuser", "toner", "printer"], "rarest first; words in no article dropped"
            art = knowledge.add(session, knowledge.Text(title="Fuser", body="fuser fuser"), author="t",
                                now=app.clock())
            assert knowledge._ARTICLES.current(session)[0].frequency["fuser"] == 1, "a draft does not count"
            knowledge.set_state(session, art, "published", now=app.clock())
            assert knowledge._ARTICLES.current(session)[0].frequency["fuser"] == 2
    finally:
        app.close()
    assert len(common) == 8


def test_suggestions_follow_articles_published_edited_and_archived_meanwhile(env: Env) -> None:
    """Suggestions rank titles and keywords in an index each process keeps; a change made by
    another process (the command line) is seen by the next transaction, one made in the same
    transaction at once."""
    from maild import knowledge
    from maild.app import load_app
    from maild.db import transaction

    vpn = add(env, "VPN client setup", "Install it.")
    app = load_app(env.config)

    def suggested(subject: str) -> list[int]:
        with transaction(app.factory) as session:
            return [r["number"] for r in knowledge.suggestions(session, subject, "", 3)]

    try:
        assert suggested("vpn problem") == [vpn]
        token = add(env, "VPN token expired", "Ask for a new token.", publish=False)
        assert suggested("vpn token") == [vpn], "a draft is not suggested"
        env.ok("kb", "publish", str(token))
        assert suggested("vpn token") == [token, vpn], "published elsewhere: seen"
        env.ok("kb", "edit", str(vpn), "--title", "Remote access client setup")
        assert suggested("vpn token") == [token], "a published article's new title replaces the old"
        assert suggested("remote access") == [vpn]
        env.ok("kb", "archive", str(token))
        assert suggested("vpn token") == [], "archived: no longer suggested"
        with transaction(app.factory) as session:
            art = knowledge.add(session, knowledge.Text(title="Token reset"), author="t", now=app.clock())
            knowledge.set_state(session, art, "published", now=app.clock())
            assert [r["number"] for r in knowledge.suggestions(session, "token", "", 3)] == [art.number], \
                "published in this transaction: seen in it"
    finally:
        app.close()


def test_boosting_counters_are_read_at_most_a_minute_old(env: Env) -> None:
    """Resolved cases and ratings reorder suggestions within a minute (no query per suggestion);
    a change to the knowledge base reloads them at once."""
    import sqlalchemy as sa

    from maild import knowledge
    from maild.app import load_app
    from maild.db import transaction
    from maild.kbindex import Articles

    first = add(env, "Printer jam", "Open the tray.")
    second = add(env, "Printer jam again", "Open the back.")
    app = load_app(env.config)
    try:
        articles = Articles(ttl=3600)
        with transaction(app.factory) as session:
            before = articles.current(session)[1]
        with env.engine().begin() as conn:
            conn.execute(sa.text("UPDATE kb_article SET times_resolved = 5 WHERE number = :n"), {"n": second})
        with transaction(app.factory) as session:
            ids = {r["number"]: r["id"] for r in knowledge.search(session, "printer jam", limit=5)}
            assert articles.current(session)[1] == before, "remembered within the minute"
            assert Articles(ttl=0).current(session)[1][ids[second]] == (5, 0, 0), "then read again"
        env.ok("kb", "edit", str(first), "--title", "Printer paper jam")
        with transaction(app.factory) as session:
            assert articles.current(session)[1][ids[second]] == (5, 0, 0), "the knowledge base changed: read again"
    finally:
        app.close()


def test_headings_rank_rare_words_and_titles_first() -> None:
    from maild.kbindex import Index

    tips = [(i, i, f"Printer tip {i}", "", "") for i in range(4, 10)]
    index = Index.build(7, [(1, 1, "Printer setup", "printer, paper", ""), (2, 2, "Printer fuser", "", ""),
                            (3, 3, "Account settings", "fuser", "Open Settings."), *tips])
    assert [i for _, i in index.rank(["fuser"], 10)] == [2, 3], "a title weighs more than a keyword"
    assert [i for _, i in index.rank(["printer", "fuser"], 10)][0] == 2, "the rare word decides"
    assert [i for _, i in index.rank(["printer", "fuser"], 2)] == [2, 3]
    assert index.rank(["nowhere"], 10) == [] and index.generation == 7
    assert index.shown[3].excerpt == "Open Settings."


def test_suggestions_prefer_titles_and_keywords_and_fill_up_from_bodies(env: Env) -> None:
    from maild import knowledge
    from maild.app import load_app
    from maild.db import transaction

    body_only = add(env, "Billing questions", "To change the invoice address, invoice settings, invoice again.")
    titled = add(env, "Invoice address", "Open Settings.")
    keyworded = add(env, "Account settings", "Open Settings.", "--keywords", "invoice")
    add(env, "Printer fire", "Unplug it.")
    app = load_app(env.config)
    try:
        with transaction(app.factory) as session:
            found = [r["number"] for r in knowledge.suggestions(session, "invoice", "Where is my invoice?", 3)]
    finally:
        app.close()
    assert found[:2] == [titled, keyworded] or found[:2] == [keyworded, titled], \
        "title and keyword matches come first, though the body match uses the word most"
    assert found[2] == body_only, "a body match fills the place left"
