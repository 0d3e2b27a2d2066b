"""How long rule evaluation takes per message against a large rule set (default 200 rules).

Writes 200 realistic creation and routing rules (keywords, regexes, domain lists, headers,
any/all/not) where almost none match, so every message walks the whole list: the worst
case. Then times ``facts_for`` + ``evaluate`` over a generated corpus and, for scale, the
parse of the same messages (the per-message cost intake already pays).

    .venv/bin/python bench/rules.py [--rules 200] [--messages 2000] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import intake as corpus_mod  # noqa: E402  (bench/intake.py: the realistic corpus generator)

from maild.parse import parse  # noqa: E402
from maild.rules import evaluate, facts_for, load  # noqa: E402

WORDS = ["invoice", "refund", "outage", "password", "license", "renewal", "quote", "shipping", "warranty",
         "upgrade", "cancel", "contract", "login", "crash", "slow", "backup", "migration", "api", "billing", "vpn"]


def rule_text(i: int, rng: random.Random) -> str:
    """One rule whose condition is unlikely to match (made-up words), of one of five shapes."""
    word = f"{rng.choice(WORDS)}-{i}x"
    shapes = [
        f'{{ field = "subject", contains = "{word}" }}',
        f'{{ field = "body", matches = "(?:{word}|zz{i}q)\\\\d+" }}',
        f'{{ field = "from_domain", in = ["c{i}.example", "d{i}.example", "e{i}.example"] }}',
        f'{{ field = "header:X-Customer-Id", equals = "{i}" }}',
        f'{{ all = [ {{ field = "subject", starts_with = "{word}" }}, '
        f'{{ not = {{ field = "has_attachment", equals = true }} }} ] }}',
    ]
    if i % 2:
        return f'[[routing]]\nname = "route {i}"\nwhen = {shapes[i % 5]}\nqueue = "billing"\npriority = "high"\n'
    return f'[[creation]]\nname = "create {i}"\nwhen = {shapes[i % 5]}\nset = {{ severity = "s{i}" }}\n'


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=200)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--output", type=Path)
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "10-bench.toml").write_text("\n".join(rule_text(i, rng) for i in range(opts.rules)))
        t0 = time.perf_counter()
        ruleset = load(folder, queues=["support", "billing"], agents=[])
        load_ms = (time.perf_counter() - t0) * 1000
    corpus = corpus_mod.generate(opts.messages, 200, opts.seed)
    t0 = time.perf_counter()
    mails = [parse(g.raw) for g in corpus]
    parse_us = (time.perf_counter() - t0) / len(mails) * 1e6
    t0 = time.perf_counter()
    facts = [facts_for(m, queue="support") for m in mails]
    facts_us = (time.perf_counter() - t0) / len(mails) * 1e6
    t0 = time.perf_counter()
    matched = sum(1 for f in facts if evaluate(ruleset, f, "support").trace)
    eval_us = (time.perf_counter() - t0) / len(facts) * 1e6
    figures = {"rules": opts.rules, "messages": len(mails), "load_ms": round(load_ms, 1),
               "facts_us_per_message": round(facts_us, 1), "evaluate_us_per_message": round(eval_us, 1),
               "parse_us_per_message": round(parse_us, 1), "messages_matching_a_rule": matched,
               "rules_share_of_parse": round((facts_us + eval_us) / parse_us, 3)}
    print(f"maild rule evaluation: {opts.rules} rules, {len(mails)} messages (seed {opts.seed})")
    print(f"  load and check the rule files: {load_ms:8.1f} ms")
    print(f"  facts per message:             {facts_us:8.1f} µs")
    print(f"  evaluate per message:          {eval_us:8.1f} µs  ({matched} messages matched a rule)")
    print(f"  parse per message (for scale): {parse_us:8.1f} µs  -> rules cost "
          f"{figures['rules_share_of_parse']:.1%} of parsing")
    if opts.output:
        opts.output.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
