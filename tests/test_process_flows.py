"""Business process flows: stages per case type or subject, advancing, and resolution at the final stage."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import MAILD, REPO, Env, mail
from maild import config

PROCESSES = """
[[processes]]
name = "standard"
stages = [
  { name = "Identify", requires = ["customer", "case_type"] },
  { name = "Research", requires = ["severity", "owner"] },
  { name = "Resolve" },
]
require_final_stage_to_resolve = true

[[processes]]
name = "refunds"
subjects = ["Billing"]
stages = [{ name = "Verify", requires = ["owner"] }, { name = "Refund" }]

[[processes]]
name = "questions"
case_types = ["Question"]
stages = [{ name = "Answer" }]
"""

RULES = """
subjects = ["Billing > Refund", "Hardware"]

[[creation]]
name = "refunds"
when = { field = "subject", contains = "refund" }
set = { subject = "Billing > Refund" }

[[creation]]
name = "outages"
when = { field = "subject", contains = "outage" }
set = { severity = "sev1" }
"""


def flow_env(make_env, tmp_path: Path, extra: str = PROCESSES) -> Env:  # type: ignore[no-untyped-def]
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10-creation.toml").write_text(RULES)
    return make_env(rules=folder.as_posix(), ack_limit=100, extra=extra)  # type: ignore[no-any-return]


def open_cases(env: Env, *titles: str) -> dict[str, str]:
    for title in titles:
        env.inject(mail(subject=title))
    env.ok("run", "--once")
    return {c["title"]: c["reference"] for c in env.json("cases", "list")}


def refused(env: Env, *args: str) -> str:
    result = env.cli(*args)
    assert result.exit_code == 1, result.output
    return result.output


def test_default_process_advances_only_when_the_stage_fields_are_set(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = flow_env(make_env, tmp_path)
    ref = open_cases(env, "outage at the plant")["outage at the plant"]
    shown = env.ok("cases", "stage", ref)
    assert f"{ref}: process standard, stage Identify since" in shown
    assert "> Identify  requires customer, case_type\n  Research  requires severity, owner\n  Resolve\n" in shown
    assert "still needed before the next stage: case_type" in shown
    assert f"{ref}: stage Identify needs case_type before it can advance" in refused(env, "cases", "stage", ref,
                                                                                     "--next")
    assert env.ok("cases", "set-type", ref, "Problem").strip() == f"{ref}: case type Problem"
    assert env.ok("cases", "stage", ref, "--next").strip() == f"{ref}: stage Identify -> Research (process standard)"
    assert f"{ref}: stage Research needs owner before it can advance" in refused(env, "cases", "stage", ref, "--next")
    env.ok("cases", "assign", ref, "--agent", "Alice Agent")
    view = env.json("cases", "stage", ref, "--next")
    assert (view["process"], view["stage"], view["missing"], view["final"]) == ("standard", "Resolve", [], True)
    assert [s["name"] for s in view["stages"] if s["current"]] == ["Resolve"]
    assert f"{ref}: Resolve is the final stage of process standard" in refused(env, "cases", "stage", ref, "--next")
    shown = env.json("cases", "show", ref)
    assert (shown["case_type"], shown["process"], shown["stage"]) == ("Problem", "standard", "Resolve")
    assert "stage:              Resolve" in env.ok("cases", "show", ref)
    moves = [(e["details"]["from"], e["details"]["to"]) for e in env.json("cases", "history", ref)
             if e["action"] == "stage_changed"]
    assert moves == [("Identify", "Research"), ("Research", "Resolve")]
    assert "stage_changed" in env.ok("cases", "history", ref) and "to=Research" in env.ok("cases", "history", ref)


def test_every_missing_field_is_named(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = flow_env(make_env, tmp_path)
    ref = open_cases(env, "printer jammed")["printer jammed"]
    env.ok("cases", "set-type", ref, "Problem")
    env.ok("cases", "stage", ref, "--next")
    assert f"{ref}: stage Research needs severity, owner before it can advance" in \
        refused(env, "cases", "stage", ref, "--next")
    assert env.json("cases", "stage", ref)["missing"] == ["severity", "owner"]


def test_resolution_waits_for_the_final_stage_when_the_process_says_so(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = flow_env(make_env, tmp_path)
    refs = open_cases(env, "outage in hall 2", "refund please")
    ref = refs["outage in hall 2"]
    env.ok("cases", "set-type", ref, "Problem")
    env.ok("cases", "stage", ref, "--next")
    out = refused(env, "cases", "resolve", ref, "--type", "Problem Solved", "--narrative", "fixed")
    assert f"{ref} is at stage Research; process standard requires the final stage Resolve before resolution" in out
    assert env.json("cases", "show", ref)["status"] == "Active"
    env.ok("cases", "assign", ref, "--agent", "Alice Agent")
    env.ok("cases", "stage", ref, "--next")
    env.ok("cases", "resolve", ref, "--type", "Problem Solved", "--narrative", "fixed")
    assert env.json("cases", "show", ref)["status"] == "Resolved"
    # The refunds process does not require its final stage: resolving at its first stage is fine.
    refund = refs["refund please"]
    assert env.json("cases", "stage", refund)["stage"] == "Verify"
    env.ok("cases", "resolve", refund, "--type", "Information Provided", "--narrative", "refunded")
    assert env.json("cases", "show", refund)["status"] == "Resolved"


def test_subject_and_type_choose_the_process_and_a_new_process_starts_over(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = flow_env(make_env, tmp_path)
    refs = open_cases(env, "refund please", "a plain question")
    refund, plain = refs["refund please"], refs["a plain question"]
    view = env.json("cases", "stage", refund)
    assert (view["process"], view["stage"]) == ("refunds", "Verify"), "Billing > Refund is under Billing"
    env.ok("cases", "assign", refund, "--agent", "Alice Agent")
    env.ok("cases", "stage", refund, "--next")
    assert env.json("cases", "stage", refund)["stage"] == "Refund"
    # The case type wins over the subject; the case starts the new process at its first stage.
    said = env.ok("cases", "set-type", refund, "question").strip()
    assert said == f"{refund}: case type Question; process questions, stage Answer"
    assert (env.json("cases", "stage", refund)["process"], env.json("cases", "stage", refund)["stage"]) == \
        ("questions", "Answer")
    last = [e for e in env.json("cases", "history", refund) if e["action"] in ("case_type_changed", "stage_changed")]
    assert [e["action"] for e in last] == ["stage_changed", "case_type_changed", "stage_changed"]
    assert last[-1]["details"] == {"process": "questions", "from": "Refund", "to": "Answer",
                                   "reason": "process changed from refunds to questions"}
    assert last[1]["details"] == {"previous": None, "case_type": "Question"}
    # A type no process lists keeps the default process.
    assert env.json("cases", "stage", plain)["process"] == "standard"
    env.ok("cases", "set-type", plain, "Request")
    assert env.json("cases", "stage", plain)["process"] == "standard"


def test_without_processes_a_case_has_no_stage(env: Env) -> None:
    ref = open_cases(env, "hello")["hello"]
    assert "no business process flow applies" in env.ok("cases", "stage", ref)
    assert "no business process flow applies" in refused(env, "cases", "stage", ref, "--next")
    assert env.json("cases", "show", ref)["stage"] is None
    env.ok("cases", "resolve", ref, "--type", "Information Provided", "--narrative", "answered")
    assert "no case CAS-99999-XXXXXX" in refused(env, "cases", "stage", "CAS-99999-XXXXXX")


BAD = [
    ('stages = [{ name = "Identify", requires = ["colour"] }]',
     "processes.0.stages.0.requires.0: expected 'case_type', 'subject', 'priority', 'severity', 'owner', "
     "'customer', 'account', 'parent' or 'entitlement', got \"colour\""),
    ('stages = [{ name = "Research" }, { name = "research" }]',
     "processes.0.stages: stage 'research' is listed twice; stage names are unique within a process"),
    ("stages = []", "processes.0.stages: a process needs at least one stage"),
    ('case_types = ["Problem"]\nstages = [{ name = "A" }]\n[[processes]]\nname = "other"\ncase_types = ["problem"]\n'
     'stages = [{ name = "B" }]',
     "processes.1.case_types: case type 'problem' already belongs to processes.0; a case follows one process"),
    ('subjects = ["Billing"]\nstages = [{ name = "A" }]\n[[processes]]\nname = "other"\nsubjects = ["billing"]\n'
     'stages = [{ name = "B" }]',
     "processes.1.subjects: subject 'billing' already belongs to processes.0"),
    ('stages = [{ name = "A" }]\n[[processes]]\nname = "other"\nstages = [{ name = "B" }]',
     "processes.1: a second default process (no case_types and no subjects); processes.0 is the default already"),
    ('case_types = ["Problem"]\nstages = [{ name = "A" }]\n[[processes]]\nname = "standard"\nstages = [{ name = "B" }]',
     "processes.1.name: process 'standard' is already defined at processes.0"),
    ('stages = [{ name = "A", needs = ["owner"] }]', "processes.0.stages.0.needs: unknown key"),
]


@pytest.mark.parametrize(("snippet", "expected"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_process_config_names_the_key_without_a_traceback(tmp_path: Path, snippet: str, expected: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[queues.support]\naddresses = ["support@example.test"]\n\n[[processes]]\nname = "standard"\n'
                   f"{snippet}\n")
    result = subprocess.run([MAILD, "--config", cfg.name, "cases", "list"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"maild: config.toml: {expected}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr + result.stdout


def test_example_config_documents_processes_that_validate_when_uncommented(tmp_path: Path) -> None:
    text = (REPO / "config.example.toml").read_text()
    start = text.index("# [[processes]]")
    block = text[start:text.index("\n\n", start)].splitlines()
    uncommented = [line[2:] if line.startswith("# ") and not line.startswith("# # ") else "" for line in block]
    (tmp_path / "config.toml").write_text(text.replace("\n".join(block), "\n".join(uncommented)))
    processes = config.load(tmp_path / "config.toml").processes
    assert [p.name for p in processes] == ["standard", "refunds"]
    assert [s.name for s in processes[0].stages] == ["Identify", "Research", "Resolve"]
    assert processes[0].require_final_stage_to_resolve and processes[1].subjects == ("Billing > Refund",)
    keys = {line.lstrip("# ").split("=")[0].strip() for line in block if "=" in line}
    assert set(config.ProcessConfig.model_fields) <= keys, "every process key is documented"
