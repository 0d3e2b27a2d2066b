"""One SLA sweep over a large open backlog: how long does finding and firing the due clocks take?

Creates --cases open cases (default 100,000), each with a running first-response clock, of
which --due (default 1,000) are past their warning; everything else is due far in the
future. Then times one SlaRunner pass that finds the due clocks (an indexed query on
``due_at``) and fires their warning action (raise the priority, audited), and checks that
exactly --due actions fired and that a second pass fires none.

    .venv/bin/python bench/sla.py [--cases 100000] [--due 1000]
                                  [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import intake as bench_intake  # noqa: E402  (bench/intake.py: the PostgreSQL scratch schema)

from maild import config as config_mod  # noqa: E402
from maild import db  # noqa: E402
from maild.app import App  # noqa: E402
from maild.escalation import act  # noqa: E402
from maild.models import Case, Contact, SlaKpi  # noqa: E402
from maild.sla import SlaRunner  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RULES = """
[[sla]]
name = "bench"
first_response = { warn_after = "10m", fail_after = "15m" }
on_warning = [ { raise_priority = "high" } ]
"""
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
CHUNK = 5000


def install(folder: Path, url: str) -> App:
    (folder / "rules").mkdir()
    (folder / "rules" / "10.toml").write_text(RULES)
    (folder / "config.toml").write_text(
        f'[database]\nurl = "{url}"\n[paths]\ntemplates = "{(REPO / "templates").as_posix()}"\n'
        f'rules = "{(folder / "rules").as_posix()}"\ndata = "{(folder / "data").as_posix()}"\n'
        '[queues.support]\naddresses = ["support@example.test"]\n')
    app = App(config_mod.load(folder / "config.toml"), clock=lambda: NOW)
    db.upgrade(app.engine)
    app.prepare()
    return app


def fill(app: App, cases: int, due: int) -> float:
    """Bulk-insert the backlog with Core (the benchmark times the sweep, not intake)."""
    started = time.perf_counter()
    queue_id = app.registry.queue_id("support")
    with app.engine.begin() as conn:
        contact_id = conn.execute(sa.insert(Contact).values(email="bench@customer.test", name="Bench",
                                                            created_at=NOW).returning(Contact.id)).scalar_one()
    for first in range(0, cases, CHUNK):
        n = min(CHUNK, cases - first)
        with app.engine.begin() as conn:
            ids = conn.execute(sa.insert(Case).returning(Case.id, sort_by_parameter_order=True), [
                {"reference": f"CAS-{first + i + 1:07d}-BENCH0", "title": f"case {first + i}", "contact_id": contact_id,
                 "queue_id": queue_id, "status": "Active", "status_reason": "In Progress", "origin": "email",
                 "priority": "normal", "created_at": NOW, "updated_at": NOW, "entitlement_charged": 0}
                for i in range(n)]).scalars().all()
            conn.execute(sa.insert(SlaKpi), [_clock(case_id, first + i < due) for i, case_id in enumerate(ids)])
    return time.perf_counter() - started


def _clock(case_id: int, is_due: bool) -> dict[str, object]:
    warn = NOW - timedelta(minutes=1) if is_due else NOW + timedelta(days=30)
    return {"case_id": case_id, "sla": "bench", "kpi": "first_response", "state": "In Progress",
            "warn_after_s": 600, "fail_after_s": 900, "started_at": warn - timedelta(minutes=10), "consumed_s": 0,
            "segment_start": warn - timedelta(minutes=10), "warn_at": warn, "fail_at": warn + timedelta(minutes=5),
            "due_at": warn, "history": []}


def sweep(app: App, batch: int) -> tuple[int, float]:
    ctx = app.intake_context()
    runner = SlaRunner(app.factory, lambda: ctx.rules, act(ctx), clock=lambda: NOW, batch=batch)
    started = time.perf_counter()
    fired = runner.run_once()
    return fired, time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--due", type=int, default=1000)
    ap.add_argument("--database-url", help="PostgreSQL base URL; default: SQLite in a temp dir")
    ap.add_argument("--output", type=Path)
    opts = ap.parse_args()
    logging.getLogger("maild.sla").setLevel(logging.ERROR)  # a line per fired action is noise here
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maild-sla-")))
        url = stack.enter_context(bench_intake.postgres_schema(opts.database_url)) if opts.database_url \
            else f"sqlite:///{folder / 'maild.db'}"
        app = install(folder, url)
        stack.callback(app.close)
        fill_s = fill(app, opts.cases, opts.due)
        fired, sweep_s = sweep(app, opts.due)
        again, again_s = sweep(app, opts.due)
    database = "postgresql" if opts.database_url else "sqlite"
    figures = {"database": database, "cases": opts.cases, "due": opts.due, "fired": fired,
               "sweep_seconds": round(sweep_s, 3), "second_sweep_fired": again, "second_sweep_seconds": round(again_s, 4),
               "fill_seconds": round(fill_s, 1)}
    print(f"maild SLA sweep: {database}, {opts.cases} open cases with running clocks, {opts.due} due")
    print(f"  backlog written in {fill_s:.1f} s (bulk insert, not timed below)")
    print(f"  one sweep: {fired} actions fired in {sweep_s:.3f} s ({sweep_s / max(fired, 1) * 1000:.2f} ms each)")
    print(f"  next sweep: {again} fired in {again_s * 1000:.1f} ms (nothing due is left)")
    if opts.output:
        opts.output.write_text(json.dumps(figures, indent=2))
    ok = fired == opts.due and again == 0
    if not ok:
        print(f"bench: FAILED: expected {opts.due} then 0 actions, got {fired} then {again}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
