"""Customers rate knowledge articles by mail: "yes"/"no" to an article mail, "article 42
helped" to an acknowledgement that suggested it; one vote per case, counted in the ranking,
and "it helped" resolves the case."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import Env, mail
from test_agent_mail import body_of, open_case, queue_keys
from test_knowledge import add, article, suggesting_env
from maild.articleratings import Verdict, verdict
from maild.disposition import AckPolicy, CaseSnapshot, decide


@pytest.mark.parametrize(("text", "expected"), [
    ("yes", Verdict(None, True, "")),
    ("Yes, thanks!", Verdict(None, True, "thanks!")),
    ("No, the printer still fails\nafter a restart\n> quoted", Verdict(None, False, "the printer still fails\nafter a restart")),
    ("not helpful", Verdict(None, False, "")),
    ("That worked, thanks", Verdict(None, True, "thanks")),
    ("\U0001F44D", Verdict(None, True, "")),
    ("article 42 helped", Verdict(42, True, "")),
    ("KB 42: not helpful", Verdict(42, False, "")),
    ("#42 yes - thanks", Verdict(42, True, "thanks")),
    ("Article 7 didn't help, still broken", Verdict(7, False, "still broken")),
    ("No idea what you mean", None),
    ("3 printers still fail", None),
    ("", None),
])
def test_the_first_line_of_a_reply_is_read_as_a_rating(text: str, expected: Verdict | None) -> None:
    assert verdict(text) == expected


def test_a_thank_you_settles_the_case_but_a_question_does_not() -> None:
    assert verdict("article 3 helped, thanks").settles_it  # type: ignore[union-attr]
    assert not verdict("article 3 helped, but how do I print in colour?").settles_it  # type: ignore[union-attr]
    assert not verdict("yes\nbut now the scanner is broken too").settles_it  # type: ignore[union-attr]
    assert not verdict("no").settles_it  # type: ignore[union-attr]


def test_a_rating_alone_does_not_reopen_a_resolved_case() -> None:
    now = datetime(2026, 11, 26, tzinfo=timezone.utc)
    case = CaseSnapshot(1, "CAS-1", "Resolved", now - timedelta(hours=1))
    policy = AckPolicy(True, 10, timedelta(days=7))
    assert decide(case=case, agent=None, no_reply_reason=None, acks_last_hour=0, policy=policy, now=now,
                  article_rating_only=True).action == "kb_rating"
    assert decide(case=case, agent=None, no_reply_reason=None, acks_last_hour=0, policy=policy, now=now).action \
        == "reopen"


def sent_article(env: Env) -> tuple[int, str, Any]:
    """An article mailed to a case's customer: its number, the case, and the mail."""
    n = add(env, "Printer fire checklist", "1. Unplug the printer.\n")
    ref, _ = open_case(env)
    env.ok("kb", "send", str(n), "--case", ref)
    env.ok("run", "--once")
    [sent] = env.peer.wait_for(1)
    env.peer.received.clear()
    return n, ref, sent.message


def answer(env: Env, ref: str, body: str, in_reply_to: str | None = None,
           sender: str = "Jane Doe <jane@customer.test>") -> None:
    headers = {"In-Reply-To": in_reply_to, "References": in_reply_to} if in_reply_to else {}
    env.inject(mail(subject=f"Re: Printer fire checklist [{ref}]", body=body, sender=sender, headers=headers))
    env.ok("run", "--once")


def test_yes_to_an_article_mail_rates_it_and_resolves_the_case(env: Env) -> None:
    n, ref, msg = sent_article(env)
    assert "Did this article help?" in body_of(msg)
    answer(env, ref, "Yes, thanks!\n", msg["Message-ID"])
    counts = article(env, n)
    assert (counts["helpful_yes"], counts["helpful_no"]) == (1, 0)
    case = env.json("cases", "show", ref)
    assert (case["status"], case["status_reason"]) == ("Resolved", "Problem Solved")
    assert f"article {n} solved it" in case["resolution"]
    assert article(env, n)["times_resolved"] == 1
    assert case["articles"][0]["helpful"] is True and case["articles"][0]["rating_comment"] == "thanks!"
    assert "(sent, customer: helpful)" in env.ok("cases", "show", ref)
    assert [a["kind"] for a in case["activities"]].count("incoming_email") == 2, "the answer is kept on the case"


def test_a_customer_changing_their_mind_moves_their_one_vote(env: Env) -> None:
    n, ref, msg = sent_article(env)
    answer(env, ref, "No, it still smokes.\n", msg["Message-ID"])
    case = env.json("cases", "show", ref)
    assert case["status"] == "Active", "a no is work for an agent"
    assert (article(env, n)["helpful_yes"], article(env, n)["helpful_no"]) == (0, 1)
    answer(env, ref, "not helpful\n", msg["Message-ID"])
    assert (article(env, n)["helpful_yes"], article(env, n)["helpful_no"]) == (0, 1), "one vote per case"
    answer(env, ref, "Yes, it helped after all\n", msg["Message-ID"])
    assert (article(env, n)["helpful_yes"], article(env, n)["helpful_no"]) == (1, 0)


def test_yes_to_some_other_mail_is_not_a_vote(env: Env) -> None:
    n, ref, _ = sent_article(env)
    answer(env, ref, "yes\n", "<q@customer.test>")  # answers the customer's own first mail, not the article
    answer(env, ref, "yes\n")  # answers nothing in particular
    assert (article(env, n)["helpful_yes"], article(env, n)["helpful_no"]) == (0, 0)
    assert env.json("cases", "show", ref)["status"] == "Active"


def test_only_the_cases_own_people_can_rate(env: Env) -> None:
    n, ref, msg = sent_article(env)
    answer(env, ref, "article %d did not help\n" % n, sender="Mallory <mallory@elsewhere.test>")
    assert (article(env, n)["helpful_yes"], article(env, n)["helpful_no"]) == (0, 0)


def test_a_rating_on_a_resolved_case_is_counted_without_reopening_it(env: Env) -> None:
    n, ref, msg = sent_article(env)
    env.ok("cases", "resolve", ref, "--type", "Problem Solved", "--narrative", "Checklist sent.")
    answer(env, ref, f"article {n} did not help\n")
    case = env.json("cases", "show", ref)
    assert case["status"] == "Resolved" and article(env, n)["helpful_no"] == 1
    assert env.count("SELECT count(*) FROM inbound_message WHERE outcome = 'kb_rating'") == 1
    answer(env, ref, f"article {n} did not help: the printer burns on\n")
    assert env.json("cases", "show", ref)["status"] == "Active", "a complaint with details reopens it"


def test_article_n_helped_rates_a_suggestion_and_resolves_the_case(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = suggesting_env(make_env, tmp_path)
    reset = add(env, "Reset your password", "Use the *Forgot password* link on the login page.")
    policy = add(env, "Password rules", "Twelve characters, one of them a digit, to reset a password.")
    env.inject(mail(subject="Password forgotten", body="How do I reset my password?\n"))
    env.ok("run", "--once")
    [ack] = env.peer.wait_for(1)
    assert f'reply "article N helped"' in body_of(ack.message)
    ref = env.json("cases", "list")[0]["reference"]
    case = env.json("cases", "show", ref)
    assert {a["number"] for a in case["articles"] if a["suggested"]} == {reset, policy}
    assert article(env, reset)["times_linked"] == 0, "a suggestion is not yet a link"
    env.inject(mail(subject=f"Re: Password forgotten [{ref}]", body=f"Article {reset} helped, thanks!\n",
                    headers={"In-Reply-To": ack.message["Message-ID"]}))
    env.ok("run", "--once")
    case = env.json("cases", "show", ref)
    assert case["status"] == "Resolved"
    assert (article(env, reset)["helpful_yes"], article(env, reset)["times_linked"],
            article(env, reset)["times_resolved"]) == (1, 1, 1)
    assert (article(env, policy)["times_linked"], article(env, policy)["times_resolved"]) == (0, 0), \
        "the suggestion nobody confirmed resolved nothing"


def test_a_queue_can_leave_resolving_to_agents(env: Env) -> None:
    queue_keys(env, resolve_on_helpful_article=False)
    n, ref, msg = sent_article(env)
    answer(env, ref, "yes\n", msg["Message-ID"])
    assert article(env, n)["helpful_yes"] == 1 and env.json("cases", "show", ref)["status"] == "Active"


def test_an_agent_sending_a_suggested_article_makes_it_a_link(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = suggesting_env(make_env, tmp_path)
    reset = add(env, "Reset your password", "Use the *Forgot password* link on the login page.")
    env.inject(mail(subject="Password forgotten", body="How do I reset my password?\n"))
    env.ok("run", "--once")
    ref = env.json("cases", "list")[0]["reference"]
    env.ok("kb", "send", str(reset), "--case", ref)
    [link] = env.json("cases", "show", ref)["articles"]
    assert (link["suggested"], link["sent"]) == (False, True)
    assert article(env, reset)["times_linked"] == 1
    env.ok("cases", "resolve", ref, "--type", "Problem Solved", "--narrative", "Sent the article.")
    assert article(env, reset)["times_resolved"] == 1
