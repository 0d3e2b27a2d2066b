"""Pure parts of the pipeline: reference keys, the threader and the disposition, with plain data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import mail
from maild.disposition import AckPolicy, CaseSnapshot, decide
from maild.parse import parse
from maild.refkeys import SUFFIX_ALPHABET, clean_title, find_references, make_reference, tag_subject
from maild.threader import match

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
POLICY = AckPolicy(enabled=True, max_per_sender_per_hour=5, reopen_window=timedelta(days=7))


def test_reference_format_and_uniqueness() -> None:
    ref = make_reference("CAS", 1234)
    assert ref.startswith("CAS-01234-") and len(ref) == len("CAS-01234-AB12CD")
    assert all(c in SUFFIX_ALPHABET for c in ref[-6:])
    assert make_reference("CAS", 1234567, "ABCDEF") == "CAS-1234567-ABCDEF"
    refs = [make_reference("CAS", 1) for _ in range(200)]
    assert len(set(refs)) > 190
    assert set("".join(ref[-6:] for ref in refs)) == set(SUFFIX_ALPHABET), "every character drawn"


@pytest.mark.parametrize("subject", [
    "Re: Printer [CAS-01234-AB12CD]",
    "AW: RE: Fwd: [cas-01234-ab12cd] Printer",
    "FW:[ CAS-01234-AB12CD ]",
    "Re: Héllo [CAS-01234-AB12CD] more",
])
def test_find_references_tolerates_prefixes_case_and_spacing(subject: str) -> None:
    assert find_references(subject, "CAS") == ["CAS-01234-AB12CD"]


def test_prefix_is_not_regex_syntax() -> None:
    assert find_references("[A.B-01234-AB12CD]", "A.B") == ["A.B-01234-AB12CD"]
    assert find_references("[AXB-01234-AB12CD]", "A.B") == []
    assert find_references("[OTHER-01234-AB12CD] and CAS-01234-AB12CD unbracketed", "CAS") == []


def test_titles_and_tags() -> None:
    assert clean_title("Re: AW: Fwd: Printer on fire [CAS-01234-AB12CD]", "CAS") == "Printer on fire"
    assert clean_title("RE[2]: SV: VS:  spaced   out ", "CAS") == "spaced out"
    assert tag_subject("Re: x", "CAS-01234-AB12CD") == "Re: x [CAS-01234-AB12CD]"
    assert tag_subject("Re: x [cas-01234-ab12cd]", "CAS-01234-AB12CD") == "Re: x [cas-01234-ab12cd]"


@given(st.text(max_size=200))
def test_find_references_never_fails_on_any_subject(subject: str) -> None:
    for ref in find_references(subject, "CAS"):
        assert ref.startswith("CAS-")


class Lookup:
    def __init__(self, refs: dict[str, int], ids: dict[str, int]) -> None:
        self.refs, self.ids = refs, ids

    def case_by_reference(self, reference: str) -> int | None:
        return self.refs.get(reference)

    def case_by_message_ids(self, message_ids: list[str]) -> dict[str, int]:
        return {m: self.ids[m] for m in message_ids if m in self.ids}


def _mail(subject: str = "hi", **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\n" for k, v in headers.items())
    return f"From: a@customer.test\nTo: support@example.test\nSubject: {subject}\n{extra}\nbody\n".encode()


def test_threader_prefers_the_key_then_in_reply_to_then_the_newest_reference() -> None:
    lookup = Lookup({"CAS-00001-AAAAAA": 1}, {"<ack@x>": 2, "<old@x>": 3, "<new@x>": 4})
    m = match(parse(_mail("Re: [CAS-00001-AAAAAA]", In_Reply_To="<ack@x>")), lookup, "CAS")
    assert m is not None and (m.case_id, m.via) == (1, "reference-key")
    m = match(parse(_mail("Re: x", In_Reply_To="<ack@x>", References="<old@x> <new@x>")), lookup, "CAS")
    assert m is not None and (m.case_id, m.via) == (2, "in-reply-to")
    m = match(parse(_mail("Re: x", References="<old@x> <new@x> <unknown@x>")), lookup, "CAS")
    assert m is not None and (m.case_id, m.via, m.key) == (4, "references", "<new@x>")
    # An unknown key falls through to the headers, and nothing known means a new case.
    m = match(parse(_mail("[CAS-00009-ZZZZZZ]", In_Reply_To="<old@x>")), lookup, "CAS")
    assert m is not None and m.case_id == 3
    assert match(parse(_mail("fresh")), lookup, "CAS") is None


def _case(status: str, resolved_days_ago: float | None = None) -> CaseSnapshot:
    resolved = NOW - timedelta(days=resolved_days_ago) if resolved_days_ago is not None else None
    return CaseSnapshot(7, "CAS-00007-AAAAAA", status, resolved)


@pytest.mark.parametrize(("case", "agent", "expected"), [
    (None, None, "create"),
    (_case("Active"), None, "append"),
    (_case("Resolved", 3), None, "reopen"),
    (_case("Resolved", 8), None, "follow_up"),
    (_case("Cancelled"), None, "follow_up"),
    (_case("Active"), "Alice", "agent_reply"),
    (_case("Resolved", 1), "Alice", "agent_reply"),
    (None, "Alice", "quarantine"),
])
def test_disposition_table(case: CaseSnapshot | None, agent: str | None, expected: str) -> None:
    d = decide(case=case, agent=agent, no_reply_reason=None, acks_last_hour=0, policy=POLICY, now=NOW)
    assert d.action == expected
    assert d.acknowledge == (expected in ("create", "follow_up"))


def test_acknowledgement_refusals() -> None:
    def reason(**kw: object) -> str | None:
        args: dict[str, object] = {"case": None, "agent": None, "no_reply_reason": None, "acks_last_hour": 0,
                                   "policy": POLICY, "now": NOW, **kw}
        return decide(**args).no_ack_reason  # type: ignore[arg-type]

    assert reason() is None
    assert reason(no_reply_reason="bounce") == "bounce"
    assert reason(acks_last_hour=5).startswith("rate limit")
    assert reason(policy=AckPolicy(False, 5, timedelta(days=7))) == "acknowledgements are disabled for this queue"


def test_a_stranger_with_the_key_opens_a_linked_case_or_is_held(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ack_limit=100)
    env.inject(mail(subject="contract question", sender="Jane <jane@customer.test>", message_id="<c1@customer.test>",
                    headers={"Cc": "boss@customer.test"}))
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    ref = case["reference"]
    # The display-name trick: judged by the address, never by the name.
    env.inject(mail(subject=f"Re: [{ref}] contract question", sender='"jane@customer.test" <evil@attacker.test>'))
    env.inject(mail(subject=f"Re: [{ref}] contract question", sender="boss@customer.test"))  # was on Cc
    env.ok("run", "--once")
    cases = env.json("cases", "list")
    assert len(cases) == 2
    linked = next(c for c in cases if c["reference"] != ref)
    assert linked["customer_email"] == "evil@attacker.test"
    assert env.json("cases", "show", linked["reference"])["previous_case"] == ref
    original = env.json("cases", "show", ref)
    assert [a["from"] for a in original["activities"] if a["kind"] == "incoming_email"] == \
        ["jane@customer.test", "boss@customer.test"]
    # The stricter choice: hold it for review.
    env.config.write_text(env.config.read_text().replace("reopen_window_days = 7",
                                                         'reopen_window_days = 7\nunknown_participant = "quarantine"'))
    env.inject(mail(subject=f"Re: [{ref}] contract question", sender="mallory@attacker.test"))
    env.ok("run", "--once")
    held = [r for r in env.json("inbound", "list") if r["state"] == "quarantined"]
    assert len(held) == 1 and "mallory@attacker.test is not a participant" in held[0]["error"]
    assert len(env.json("cases", "list")) == 2
