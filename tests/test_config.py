"""Configuration: the example is a working default, and every error names file, key and problem."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import MAILD, REPO
from maild import config
from maild.errors import ConfigError


def run_maild(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """As a user types it: ``maild --config config.toml ...`` from the config's folder."""
    return subprocess.run([MAILD, "--config", cfg.name, *args], capture_output=True, text=True, timeout=60,
                          cwd=cfg.parent)


def test_example_config_is_valid_and_resolves_paths_against_its_folder() -> None:
    cfg = config.load(REPO / "config.example.toml")
    assert cfg.database.url == f"sqlite:///{REPO / 'var' / 'maild.db'}"
    assert cfg.paths.templates == REPO / "templates"
    assert cfg.intake.smtp.port == 2525 and cfg.intake.smtp.host == "127.0.0.1"
    assert cfg.outgoing.transport == "maildir"
    assert cfg.queue_for_address("Support@Example.TEST") == "support"
    assert cfg.queue_for_address("billing@example.test") == "billing"
    assert [a.name for a in cfg.agents] == ["Alice Agent", "Bob Agent"]


def test_example_config_documents_an_imap_mailbox_that_validates_when_uncommented(tmp_path: Path) -> None:
    text = (REPO / "config.example.toml").read_text()
    start = text.index("# [queues.support.imap]")
    block = text[start:text.index("\n\n", start)].splitlines()
    uncommented = [line[2:] for line in block if not line.startswith("# # ")]
    keys = {line.lstrip("# ").split("=")[0].strip() for line in block if "=" in line}
    assert set(config.ImapConfig.model_fields) <= keys | {"password"}, "every IMAP key is documented"
    example = text.replace("\n".join(block), "\n".join(uncommented))
    (tmp_path / "config.toml").write_text(example)
    imap = config.load(tmp_path / "config.toml").queues["support"].imap
    assert imap is not None and imap.security == "ssl" and imap.after == "move" and imap.effective_port == 993


BAD = [
    ('[intake.smtp]\nport = "abc"\n', 'intake.smtp.port: expected an integer, got "abc"'),
    ("[intake.smtp]\nport = 70000\n", "intake.smtp.port: Input should be less than or equal to 65535"),
    ("[outgoing]\ntransport = \"carrier-pigeon\"\n", "outgoing.transport: expected 'maildir' or 'smtp'"),
    ("[databse]\nurl = \"x\"\n", "databse: unknown key"),
    ("[queues.support]\naddresses = [\"not-an-address\"]\n", "queues.support.addresses.0: expected an email address"),
    ("[queues.support]\nname = \"x\"\n", "queues.support.addresses: required key is missing"),
    ("[cases]\nreference_prefix = \"c-s\"\n", "reference_prefix: expected 2-10 upper-case letters"),
    ("[outgoing.smtp]\npassword = \"a\"\npassword_env = \"B\"\n", "give only one of password, password_env"),
    ("[[agents]]\nname = \"X\"\nemails = [\"support@example.test\"]\n", "is a queue address and cannot be an agent"),
    ("[queues.Bad]\naddresses = [\"b@example.test\"]\n", "queue names are lower-case"),
    ("this is not toml", "not valid TOML"),
    ("[[teams]]\nname = \"desk\"\nagents = [\"Ghost\"]\n", "teams.0.agents: unknown agent 'Ghost'"),
    ("[[teams]]\nname = \"desk\"\nagents = []\n", "teams.0.agents: Tuple should have at least 1 item"),
    ("[queues.support]\naddresses = [\"s@example.test\"]\nunknown_senders = \"maybe\"\n",
     "queues.support.unknown_senders: expected 'create', 'create_with_account' or 'refuse'"),
    ("[intake]\nbatch = 0\n", 'intake.batch: expected "auto" or a whole number from 1 to 500, got 0'),
]


@pytest.mark.parametrize(("snippet", "expected"), BAD, ids=[b[1][:30] for b in BAD])
def test_bad_config_names_file_key_and_problem(tmp_path: Path, snippet: str, expected: str) -> None:
    cfg = tmp_path / "config.toml"
    base = '[queues.support]\naddresses = ["support@example.test"]\n'
    cfg.write_text(snippet if "queues.support" in snippet or "toml" in snippet else base + snippet)
    with pytest.raises(ConfigError) as err:
        config.load(cfg)
    assert str(err.value).startswith(f"{cfg}: ")
    assert expected in str(err.value)


def test_bad_config_exits_2_with_one_clear_line_and_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[queues.support]\naddresses = ["support@example.test"]\n[intake.smtp]\nport = "abc"\n')
    for args in (["run", "--once"], ["db", "upgrade"], ["cases", "list"]):
        result = run_maild(cfg, *args)
        assert result.returncode == 2, result
        assert result.stderr.strip() == 'maild: config.toml: intake.smtp.port: expected an integer, got "abc"'
        assert "Traceback" not in result.stderr + result.stdout


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_maild(tmp_path / "nope.toml", "cases", "list")
    assert result.returncode == 2
    assert "nope.toml: no such config file" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/x.db"\n[queues.support]\naddresses = ["s@example.test"]\n')
    result = subprocess.run([MAILD, "db", "upgrade"], capture_output=True, text=True, timeout=60,
                            env={"MAILD_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.db").exists()


def test_secrets_inline_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "smtp.secret"
    secret_file.write_text("from-file\nignored second line\n")
    base = '[queues.support]\naddresses = ["s@example.test"]\n[outgoing.smtp]\n'
    cases = {'password = "inline"': "inline", 'password_env = "MAILD_T_PW"': "from-env",
             'password_file = "smtp.secret"': "from-file"}
    monkeypatch.setenv("MAILD_T_PW", "from-env")
    for line, expected in cases.items():
        (tmp_path / "c.toml").write_text(base + line + "\n")
        assert config.load(tmp_path / "c.toml").outgoing.smtp.resolve() == expected
    monkeypatch.delenv("MAILD_T_PW")
    (tmp_path / "c.toml").write_text(base + 'password_env = "MAILD_T_PW"\n')
    with pytest.raises(ConfigError, match="MAILD_T_PW is not set"):
        config.load(tmp_path / "c.toml").outgoing.smtp.resolve()


def test_status_reasons_extend_the_built_in_ones(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[queues.support]\naddresses = ["s@example.test"]\n'
                   '[cases.status_reasons]\nactive = ["Waiting for Vendor"]\nresolved = ["Workaround Given"]\n')
    result = run_maild(cfg, "cases", "statuses")
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    for expected in ("Active In Progress", "Active Waiting for Vendor", "Resolved Workaround Given",
                     "Cancelled Merged"):
        assert expected in lines
    cfg.write_text('[queues.support]\naddresses = ["s@example.test"]\n[cases.status_reasons]\nresolved = ["On Hold"]\n')
    with pytest.raises(ConfigError, match="'On Hold' is both Active and Resolved"):
        config.load(cfg)


def test_reply_token_key_is_created_once_privately_and_plus_addresses_map_to_queues(tmp_path: Path) -> None:
    import stat

    from maild.replytokens import address, load_key, reference_from

    path = tmp_path / "cfg" / "config.toml"
    path.parent.mkdir()
    path.write_text('[queues.support]\naddresses = ["support@example.test"]\n')
    cfg = config.load(path)
    key_file = cfg.security.reply_token_key_file
    assert key_file == path.parent / "var" / "reply-token.key"
    key = load_key(key_file)
    assert load_key(key_file) == key and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    signed = address("support@example.test", "CAS-00042-ABC123", key)
    assert cfg.queue_for_address(signed) == "support"
    assert reference_from(["x@y.test", signed.upper()], key, "CAS") == "CAS-00042-ABC123"
    assert reference_from([signed], b"another key" * 4, "CAS") is None
    assert reference_from([signed.replace("CAS-00042", "CAS-00043")], key, "CAS") is None


def test_customer_and_agent_reply_addresses_differ_and_say_which_they_are(tmp_path: Path) -> None:
    from maild.replytokens import AGENT, CUSTOMER, Signed, address, signed_from

    key = b"k" * 64
    customers = address("support@example.test", "CAS-00042-ABC123", key)
    agents = address("support@example.test", "CAS-00042-ABC123", key, AGENT)
    assert customers != agents and agents.startswith("support+CAS-00042-ABC123.")
    assert signed_from([customers], key, "CAS") == Signed("CAS-00042-ABC123", CUSTOMER)
    assert signed_from([agents], key, "CAS") == Signed("CAS-00042-ABC123", AGENT)
    other_case = address("support@example.test", "CAS-00043-ABC123", key, AGENT)
    assert signed_from([agents.replace("00042", "00043")], key, "CAS") is None, "a signature fits one case"
    assert signed_from([other_case], key, "CAS") == Signed("CAS-00043-ABC123", AGENT)


def test_reply_addresses_already_sent_keep_their_signatures() -> None:
    """Customers answer mail sent long ago: a reference's signature must never change."""
    from maild.replytokens import AGENT, address

    key = b"k" * 64
    assert address("support@example.test", "CAS-00042-ABC123", key) == \
        "support+CAS-00042-ABC123.wzznlvspvj@example.test"
    assert address("support@example.test", "CAS-00042-ABC123", key, AGENT) == \
        "support+CAS-00042-ABC123.quoq575lwu@example.test"


def test_workers_starting_together_share_one_reply_token_key(tmp_path: Path) -> None:
    import threading

    from maild.replytokens import load_key

    for round_ in range(20):  # bounded: each round races eight threads on a fresh path
        path = tmp_path / f"r{round_}" / "reply-token.key"
        keys: list[bytes] = []
        threads = [threading.Thread(target=lambda: keys.append(load_key(path))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(keys) == 8 and len(set(keys)) == 1
        assert [p.name for p in path.parent.iterdir()] == ["reply-token.key"], "no temporary files left"


def test_parse_workers_default_to_auto_and_take_a_number() -> None:
    assert config.IntakeConfig().parse_workers == "auto"
    assert config.IntakeConfig(parse_workers=3).parse_workers == 3
    assert config.IntakeConfig(parse_workers=0).parse_workers == 0
    for bad in (-1, 33, "many", True, 1.5):
        with pytest.raises(ValueError, match='expected "auto" or a whole number from 0 to 32'):
            config.IntakeConfig(parse_workers=bad)


def test_intake_batch_defaults_to_auto_and_takes_a_number() -> None:
    assert config.IntakeConfig().batch == "auto"
    assert config.IntakeConfig(batch=1).batch == 1
    assert config.IntakeConfig(batch=500).batch == 500
    for bad in (0, 501, "big", True, 20.0):
        with pytest.raises(ValueError, match='expected "auto" or a whole number from 1 to 500'):
            config.IntakeConfig(batch=bad)


@pytest.mark.parametrize(("setting", "url", "cpus", "workers"), [
    ("auto", "sqlite:///maild.db", 2, 1),  # SQLite's one writer: a worker is how a second CPU helps
    ("auto", "sqlite:////var/lib/maild/maild.db", 8, 1),
    ("auto", "sqlite:///maild.db", 1, 0),  # no CPU to spare: it would only take turns with the writer
    ("auto", "postgresql+psycopg://maild@db/maild", 8, 0),  # more daemons use more CPUs there
    (0, "sqlite:///maild.db", 8, 0),
    (2, "postgresql+psycopg://maild@db/maild", 1, 2),  # a number is taken as it is
])
def test_parse_workers_auto_means_one_on_sqlite_with_a_spare_cpu(setting: int | str, url: str, cpus: int,
                                                                  workers: int) -> None:
    from maild.parsepool import workers_for

    assert workers_for(setting, url, cpus=cpus) == workers  # type: ignore[arg-type]
