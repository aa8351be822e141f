"""``report.html``: one self-contained page (inline CSS and SVG charts, no scripts, no links out)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from smm.eval import charts as report_charts
from smm.eval.report import failing_cases, pct, signed
from smm.tasks import LANGUAGES, TASKS

TEMPLATE = Path(__file__).with_name("report_html.jinja")


@lru_cache(maxsize=1)
def _template():
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    env.filters.update(pct=pct, signed=signed)
    return env.from_string(TEMPLATE.read_text(encoding="utf-8"))


def _tone(value: float | None) -> str:
    """CSS class for a pass rate or a score."""
    if value is None:
        return "na"
    return "good" if value >= 0.8 else "fair" if value >= 0.5 else "poor"


def _delta_tone(value: float | None) -> str:
    if value is None or abs(value) < 1e-9:
        return "na"
    return "good" if value > 0 else "poor"


def render_html(report: dict) -> str:
    """The HTML page for ``report`` (as built by :func:`smm.eval.report.build_report`)."""
    records = report["cases"]
    baseline = report["baseline"]
    checks = [c for c in report["checks_info"] if report["summary"]["checks"][c]["applicable"]]
    charts = {
        "heatmap": report_charts.heatmap(records, checks, list(TASKS), list(LANGUAGES)),
        "bars": report_charts.check_bars(
            {c: report["summary"]["checks"][c]["rate"] for c in checks},
            {c: baseline["summary"]["checks"][c]["rate"] for c in checks} if baseline else None,
            report["model"]["label"], baseline["model"]["label"] if baseline else "baseline",
        ),
        "latency": report_charts.latency_chart(
            records, list(TASKS), baseline["cases"] if baseline else None,
            report["model"]["label"], baseline["model"]["label"] if baseline else "baseline",
        ),
    }
    baseline_by_id = {r["id"]: r for r in baseline["cases"]} if baseline else {}
    return _template().render(
        r=report, s=report["summary"], checks=checks, charts=charts, failed=failing_cases(report),
        baseline_by_id=baseline_by_id, tone=_tone, delta_tone=_delta_tone, languages=LANGUAGES,
    )
