"""``maild report --html``: the report as one self-contained HTML page with inline SVG charts.

The page loads nothing when it is opened (no scripts, no fonts, no images from elsewhere;
a Content-Security-Policy says so to the browser), so a supervisor can mail it or open it
offline. The page template ships inside the package: it is the report's layout, not site
content like the mail templates in ``templates/``.
"""

from __future__ import annotations

from collections import defaultdict
from importlib import resources

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

from maild import svgcharts
from maild.reports import AGE_BUCKETS, TITLES, Report
from maild.svgcharts import Series

PAGE = "report.html.j2"
# Subjects beyond this many branches would make bars too thin to read; the table has them all.
MAX_SUBJECT_BARS = 20


def render(report: Report) -> str:
    """The whole page."""
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(resources.files("maild").joinpath(PAGE).read_text(encoding="utf-8"))
    return template.render(report=report, sections=report.sections(), charts=charts(report),
                           totals=headline(report), titles=TITLES)


def headline(report: Report) -> dict[str, object]:
    """The figures at the top of the page."""
    resolution = next((r for r in report.times if r.queue == "(all)" and r.measure == "resolution"), None)
    return {"open": sum(r.open for r in report.backlog),
            "created": sum(d.created for d in report.daily), "resolved": sum(d.resolved for d in report.daily),
            "average_resolution_hours": None if resolution is None or resolution.average_minutes is None
            else round(resolution.average_minutes / 60, 1),
            "breaches": sum(r.breached for r in report.sla)}


def charts(report: Report) -> dict[str, Markup]:
    return {"volume": volume_chart(report), "sla": sla_chart(report), "backlog": backlog_chart(report),
            "subjects": subjects_chart(report)}


def volume_chart(report: Report) -> Markup:
    days = [d.day for d in report.daily]
    series = [Series("created", [d.created for d in report.daily]),
              Series("resolved", [d.resolved for d in report.daily])]
    return Markup(svgcharts.lines("Cases created and resolved per day", days, series, "cases"))


def sla_chart(report: Report) -> Markup:
    labels = [f"{r.queue} {r.kpi.replace('_', ' ')}" for r in report.sla]
    series = [Series("within target", [r.clocks - r.near_breach - r.breached for r in report.sla]),
              Series("near breach", [r.near_breach for r in report.sla]),
              Series("breached", [r.breached for r in report.sla])]
    return Markup(svgcharts.bars("SLA compliance per queue and KPI", labels, series, "SLA clocks"))


def backlog_chart(report: Report) -> Markup:
    per_queue: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in report.backlog:
        for name, _ in AGE_BUCKETS:
            per_queue[row.queue][name] += getattr(row, name)
    queues = sorted(per_queue)
    series = [Series(name.removeprefix("age_").replace("_", " "), [per_queue[q][name] for q in queues])
              for name, _ in AGE_BUCKETS]
    return Markup(svgcharts.bars("Open cases by queue and age", queues, series, "open cases"))


def subjects_chart(report: Report) -> Markup:
    top = sorted(report.subjects, key=lambda r: -r.cases)[:MAX_SUBJECT_BARS]
    return Markup(svgcharts.bars("Cases per subject branch", [r.subject for r in top],
                                 [Series("cases", [r.cases for r in top])], "cases created"))
