"""A realistic support mailbox through the real daemon: bench/realworld.py at a small size.

150 generated messages (customers at companies and at public providers, replies by the
customer, by Cc'd colleagues and by colleagues who were not on the thread, out-of-office
replies, a reused Message-ID, broken headers), loaded into Dovecot and drained by
``maild run --once``; then DSNs bouncing some of maild's acknowledgements, drained again.
The ground truth says which thread each message belongs to; the database must agree. A
failure names each message and case that went wrong (see ``Verdict.explain``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import Mailbox

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import realworld  # noqa: E402


@pytest.mark.slow
def test_a_realistic_mailbox_is_stored_once_threaded_right_and_never_cased_from_robots(
        db_url: str, mailbox: Mailbox) -> None:
    opts = realworld.Options(messages=150, seed=11, timeout=50.0)
    verdict = realworld.check_mailbox(opts, mailbox.server, mailbox.user, db_url=db_url)
    assert verdict.replies > 0 and verdict.kinds[realworld.DSN]["messages"] > 0, "the corpus lacks replies or DSNs"
    assert not verdict.unmatched_rows, f"stored rows that are none of the generated messages: {verdict.unmatched_rows}"
    if verdict.failures():
        pytest.fail(f"seed {opts.seed}, {verdict.database}, {verdict.messages} messages:\n{verdict.explain()}",
                    pytrace=False)
