"""Parent/child cases, merging a duplicate, reopening, and a case's history."""

from __future__ import annotations

from conftest import Env, mail


def cases_by_title(env: Env) -> dict[str, str]:
    return {c["title"]: c["reference"] for c in env.json("cases", "list")}


def test_parent_child_and_cascading_resolution(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    for subject, sender in (("outage", "a@one.test"), ("me too", "b@two.test"), ("also me", "c@three.test"),
                            ("other", "d@four.test")):
        env.inject(mail(subject=subject, sender=sender))
    env.ok("run", "--once")
    refs = cases_by_title(env)
    env.ok("cases", "link", refs["me too"], "--parent", refs["outage"])
    env.ok("cases", "link", refs["also me"], "--parent", refs["outage"])
    assert env.json("cases", "show", refs["outage"])["children"] == [refs["me too"], refs["also me"]]
    assert env.json("cases", "show", refs["me too"])["parent"] == refs["outage"]
    cycle = env.cli("cases", "link", refs["outage"], "--parent", refs["me too"])
    assert cycle.exit_code == 1 and "would be a cycle" in cycle.output
    env.ok("cases", "resolve", refs["also me"], "--type", "Information Provided", "--narrative", "answered")
    out = env.ok("cases", "resolve", refs["outage"], "--type", "Problem Solved", "--narrative", "router replaced")
    assert f"(and 1 child case(s): {refs['me too']})" in out
    child = env.json("cases", "show", refs["me too"])
    assert (child["status"], child["status_reason"]) == ("Resolved", "Problem Solved")
    assert child["resolution"] == f"Resolved with its parent {refs['outage']}: router replaced"
    assert env.json("cases", "show", refs["other"])["status"] == "Active"
    # Each child's customer keeps their own thread: a reply from b@ threads onto b's case.
    env.inject(mail(subject=f"Re: [{refs['me too']}] me too", sender="b@two.test"))
    env.ok("run", "--once")
    assert len(env.json("cases", "show", refs["me too"])["activities"]) > len(child["activities"])


def test_merge_moves_the_mail_and_later_mail_follows(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    env.inject(mail(subject="printer broken", message_id="<p1@customer.test>"))
    env.inject(mail(subject="printer STILL broken", message_id="<p2@customer.test>"))
    env.ok("run", "--once")
    refs = cases_by_title(env)
    source, target = refs["printer STILL broken"], refs["printer broken"]
    before = len(env.json("cases", "show", source)["activities"])
    out = env.ok("cases", "merge", source, "--into", target)
    assert f"{source} merged into {target} ({before} activities moved)" in out
    merged = env.json("cases", "show", source)
    assert (merged["status"], merged["status_reason"], merged["merged_into"]) == ("Cancelled", "Merged", target)
    assert merged["activities"] == []
    assert len(env.json("cases", "show", target)["activities"]) == 2 + before
    # A reply to the source's key, and one answering the source's first mail, land on the target.
    env.inject(mail(subject=f"Re: [{source}] printer STILL broken", message_id="<p3@customer.test>"))
    env.inject(mail(subject="no key", headers={"In-Reply-To": "<p2@customer.test>"}))
    env.ok("run", "--once")
    assert len(env.json("cases", "list")) == 2, "no new case"
    assert len(env.json("cases", "show", target)["activities"]) == 4 + before
    history = env.json("cases", "history", target)
    assert any(e["action"] == "merged_in" and e["details"]["source"] == source for e in history)
    again = env.cli("cases", "merge", source, "--into", target)
    assert again.exit_code == 1 and "merge an active case" in again.output
    reopen = env.cli("cases", "reopen", source, "--reason", "oops")
    assert reopen.exit_code == 1 and f"was merged into {target}" in reopen.output


def test_reopen_and_history(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    env.inject(mail(subject="question"))
    env.ok("run", "--once")
    ref = cases_by_title(env)["question"]
    env.ok("cases", "resolve", ref, "--type", "Information Provided", "--narrative", "answered")
    assert "reopened (Resolved, Information Provided -> Active, In Progress)" in \
        env.ok("cases", "reopen", ref, "--reason", "customer called back")
    active = env.cli("cases", "reopen", ref, "--reason", "again")
    assert active.exit_code == 1 and "already active" in active.output
    actions = [e["action"] for e in env.json("cases", "history", ref)]
    assert actions[0] == "created" and actions[-2:] == ["resolved", "reopened"]
    table = env.ok("cases", "history", ref)
    assert "reason=customer called back" in table and "cli:" in table
