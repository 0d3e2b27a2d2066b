"""``maild customers import|list|show``: line-by-line verdicts, bad lines rejected, the rest imported."""

from __future__ import annotations

from pathlib import Path

from conftest import Env, mail

CSV = """email,name,account,tier,domain
jane@acme.test,Jane Doe,Acme,Gold,acme.test
bob@acme.test,Bob,Acme,,
not-an-email,Nobody,,,
jane@acme.test,Jane Again,Acme,,
solo@home.test,Solo,,,
x@tier.test,X,,silver,
too@many.test,A,B,c,d,e
"""


def test_import_reports_each_line_and_rejects_bad_ones(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(CSV)
    result = env.cli("customers", "import", str(path))
    assert result.exit_code == 1, "rejected lines make the exit status 1"
    out = result.output
    assert "line 2: created jane@acme.test (account Acme)" in out
    assert "line 4: rejected not-an-email (invalid email:" in out
    assert "line 5: rejected jane@acme.test (the same email appears earlier in the file)" in out
    assert "line 7: rejected x@tier.test (a tier belongs to an account: give the account too)" in out
    assert "line 8: rejected too@many.test (more cells than columns)" in out
    assert "3 created, 0 updated, 0 unchanged, 4 rejected; 1 new account(s)" in out
    gold = env.json("customers", "list", "--tier", "gold")
    assert [c["email"] for c in gold] == ["bob@acme.test", "jane@acme.test"]
    assert gold[1] == {"email": "jane@acme.test", "name": "Jane Doe", "account": "Acme", "tier": "gold",
                       "domain": "acme.test", "created_at": gold[1]["created_at"]}
    # Importing again changes nothing; a changed name is an update.
    path.write_text("email,name,account\njane@acme.test,Jane D.,Acme\nsolo@home.test,Solo,\n")
    again = env.ok("customers", "import", str(path))
    assert "line 2: updated jane@acme.test (name)" in again and "0 created, 1 updated, 1 unchanged" in again


def test_show_lists_the_customers_cases_and_import_feeds_the_rules(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("email,name,account,tier\njane@customer.test,Jane Doe,Customer Inc,gold\n")
    env.ok("customers", "import", str(path))
    env.inject(mail(subject="hello"))
    env.ok("run", "--once")
    shown = env.json("customers", "show", "JANE@customer.test")
    assert (shown["account"], shown["tier"]) == ("Customer Inc", "gold")
    assert [c["title"] for c in shown["cases"]] == ["hello"]
    assert "Customer Inc" in env.ok("customers", "show", "jane@customer.test")
    missing = env.cli("customers", "show", "nobody@x.test")
    assert missing.exit_code == 1 and "no customer with email nobody@x.test" in missing.output


def test_a_csv_without_an_email_column_is_refused(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("mail,name\na@b.test,A\n")
    result = env.cli("customers", "import", str(path))
    assert result.exit_code == 1 and "must name an 'email' column" in result.output


def test_a_large_import_shows_progress_and_finishes(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("email,account,tier\n" + "".join(f"c{i}@big{i % 50}.test,Big {i % 50},bronze\n"
                                                    for i in range(2500)))
    result = env.maild("customers", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert b"2500 created, 0 updated, 0 unchanged, 0 rejected; 50 new account(s)" in result.stdout
    assert len(env.json("customers", "list", "--account", "big 7")) == 50
