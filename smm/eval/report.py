"""Evaluation results: per-case records, summaries, baseline comparison, and the report files.

``report.json`` holds everything (every case's prompt, raw output, check results and timing; the
summaries; the baseline and the comparison), so a later run can use it as its baseline.
``report.md`` is the same in tables; ``report.html`` (smm/eval/report_html.py) adds charts.

``mode`` says how the answers were made: ``free`` or ``constrained`` (to the task's JSON schema).
A run with ``eval.constrained=both`` keeps the free answers as its main ``cases`` and adds
``modes`` (score, summary and cases of each mode) and ``free_vs_constrained`` (per-check rates
side by side, and the latency cost of constraining).
"""
from __future__ import annotations

import html
import math
import re
import statistics
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from smm.backends import Generation
from smm.eval.checks import CHECKS, FAIL, NA, PASS, check_reply
from smm.eval.cases import EvalCase
from smm.tasks import LANGUAGES

REPORT_VERSION = 1


def make_record(case: EvalCase, generation: Generation) -> dict[str, Any]:
    """One case's result: what was asked, what came back, how it was judged."""
    verdict = check_reply(case, generation.text, generation.error)
    return {
        "id": case.id,
        "task": case.task,
        "language": case.language,
        "platform": case.platform,
        "source": case.source,
        "prompt": case.prompt,
        "output": generation.text,
        "error": generation.error,
        "format": verdict.format,
        "score": round(verdict.score, 4),
        "checks": {name: {"status": r.status, "reasons": r.reasons} for name, r in verdict.checks.items()},
        "latency_s": round(generation.latency_s, 4),
        "truncated": bool(generation.truncated),
        "output_tokens": generation.output_tokens,
        "tokens_per_s": round(generation.tokens_per_s, 2) if generation.tokens_per_s else None,
    }


def recheck(cases: Sequence[EvalCase], old_records: Iterable[dict]) -> list[dict]:
    """Records of a saved report re-judged with today's checks, for the cases that are in both."""
    by_id = {r.get("id"): r for r in old_records if isinstance(r, dict)}
    records = []
    for case in cases:
        old = by_id.get(case.id)
        if old is None:
            continue
        generation = Generation(
            old.get("output"), float(old.get("latency_s") or 0.0), old.get("output_tokens"),
            old.get("tokens_per_s"), old.get("error"), bool(old.get("truncated")),
        )
        records.append(make_record(case, generation))
    return records


def _rate(records: Sequence[dict], check: str) -> dict[str, Any]:
    statuses = [r["checks"][check]["status"] for r in records]
    applicable = sum(s != NA for s in statuses)
    passed = sum(s == PASS for s in statuses)
    return {"passed": passed, "applicable": applicable, "rate": round(passed / applicable, 4) if applicable else None}


def _paired(records: Sequence[dict], baseline_records: Sequence[dict], check: str) -> dict[str, int]:
    """Cases ``check`` applied to in both runs that the baseline passed and the model failed (lost),
    and the other way round (gained)."""
    before = {r["id"]: r["checks"][check]["status"] for r in baseline_records}
    lost = gained = 0
    for r in records:
        now, then = r["checks"][check]["status"], before.get(r["id"], NA)
        lost += then == PASS and now not in (PASS, NA)
        gained += now == PASS and then not in (PASS, NA)
    return {"lost": lost, "gained": gained}


def _mean(values: Sequence[float]) -> float:
    return round(statistics.fmean(values), 4) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), linear between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 4)


def _distribution(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "mean": _mean(values) if values else None,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p95": percentile(values, 95),
        "max": round(max(values), 4) if values else None,
    }


def _group(records: Sequence[dict], key: str, order: Iterable[str]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r[key], []).append(r)
    return {
        name: {
            "n": len(groups[name]),
            "score": _mean([r["score"] for r in groups[name]]),
            "checks": {c: _rate(groups[name], c)["rate"] for c in CHECKS},
        }
        for name in order if name in groups
    }


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    """Score, per-check pass rates, breakdowns by task/language/platform, formats and timing."""
    from smm.tasks import PLATFORMS, TASKS

    answered = [r for r in records if r["output"] is not None]
    return {
        "n_cases": len(records),
        "score": _mean([r["score"] for r in records]),
        "checks": {name: _rate(records, name) for name in CHECKS},
        "by_task": _group(records, "task", TASKS),
        "by_language": _group(records, "language", LANGUAGES),
        "by_platform": _group(records, "platform", PLATFORMS),
        "formats": dict(Counter(r["format"] for r in records)),
        "errors": sum(r["error"] is not None for r in records),
        "truncated": sum(bool(r.get("truncated")) for r in records),
        "latency_s": _distribution([r["latency_s"] for r in answered]),
        "tokens_per_s": _distribution([r["tokens_per_s"] for r in answered if r["tokens_per_s"]]),
    }


def compare(records: Sequence[dict], baseline_records: Sequence[dict]) -> dict[str, Any]:
    """Score and per-check deltas (model − baseline) on the cases both were run on."""
    shared = {r["id"] for r in baseline_records}
    mine = [r for r in records if r["id"] in shared]
    ours, theirs = summarize(mine), summarize(baseline_records)
    checks = {}
    for name in CHECKS:
        a, b = ours["checks"][name]["rate"], theirs["checks"][name]["rate"]
        checks[name] = {"rate": a, "baseline_rate": b, "delta": round(a - b, 4) if a is not None and b is not None else None,
                        **_paired(mine, baseline_records, name)}
    return {
        "n_shared": len(mine),
        "score": ours["score"],
        "baseline_score": theirs["score"],
        "delta": round(ours["score"] - theirs["score"], 4),
        "checks": checks,
    }


def compare_modes(free: Sequence[dict], constrained: Sequence[dict]) -> dict[str, Any]:
    """Free vs constrained answers to the same cases: per-check rates, score, latency cost."""
    a, b = summarize(free), summarize(constrained)
    checks = {}
    for name in CHECKS:
        x, y = a["checks"][name]["rate"], b["checks"][name]["rate"]
        checks[name] = {"free": x, "constrained": y, "delta": round(y - x, 4) if x is not None and y is not None else None}
    latency = {}
    for q in ("p50", "p95", "mean"):
        x, y = a["latency_s"][q], b["latency_s"][q]
        latency[q] = {"free": x, "constrained": y, "cost_s": round(y - x, 4) if x is not None and y is not None else None}
    return {
        "score": {"free": a["score"], "constrained": b["score"], "delta": round(b["score"] - a["score"], 4)},
        "checks": checks,
        "latency_s": latency,
        "tokens_per_s_p50": {"free": a["tokens_per_s"]["p50"], "constrained": b["tokens_per_s"]["p50"]},
        "truncated": {"free": a["truncated"], "constrained": b["truncated"]},
        "errors": {"free": a["errors"], "constrained": b["errors"]},
    }


def build_report(*, model: dict, settings: dict, records: list[dict], case_files: list[str],
                 baseline: dict | None = None, gate_min_delta: float | None = None,
                 mode: str = "free", constrained_records: list[dict] | None = None,
                 judge: dict | None = None) -> dict[str, Any]:
    """The whole report as plain data; ``baseline`` = ``{"model": ..., "source": ..., "records": [...]}``;
    ``constrained_records`` (with ``records`` free) makes it a free-vs-constrained report; ``judge`` =
    what :func:`smm.eval.judge.judge_records` returned (the judge's scores are in the records)."""
    from smm.eval.judge import summarize_judge

    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "settings": settings,
        "mode": mode,
        "case_files": case_files,
        "checks_info": {n: {"weight": c.weight, "description": c.description} for n, c in CHECKS.items()},
        "score": _mean([r["score"] for r in records]),
        "summary": summarize(records),
        "cases": records,
        "baseline": None,
        "comparison": None,
        "gate": None,
        "modes": None,
        "free_vs_constrained": None,
        "judge": summarize_judge(records, judge) if judge is not None else None,
    }
    if constrained_records is not None:
        report["modes"] = {
            "free": {"score": report["score"], "summary": report["summary"]},
            "constrained": {"score": _mean([r["score"] for r in constrained_records]),
                            "summary": summarize(constrained_records), "cases": constrained_records},
        }
        report["free_vs_constrained"] = compare_modes(records, constrained_records)
    if baseline is not None:
        report["baseline"] = {
            "model": baseline["model"],
            "source": baseline["source"],
            "score": _mean([r["score"] for r in baseline["records"]]),
            "summary": summarize(baseline["records"]),
            "cases": baseline["records"],
        }
        report["comparison"] = compare(records, baseline["records"])
        if gate_min_delta is not None:
            delta = report["comparison"]["delta"]
            report["gate"] = {"min_delta": gate_min_delta, "delta": delta, "passed": delta >= gate_min_delta}
    return report


def failing_cases(report: dict) -> list[dict]:
    """Cases with at least one failed check, worst first."""
    failed = [r for r in report["cases"] if any(c["status"] == FAIL for c in r["checks"].values())]
    return sorted(failed, key=lambda r: (r["score"], r["id"]))


# ---- Markdown --------------------------------------------------------------------------------------

def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def signed(value: float | None, scale: float = 100, unit: str = " pp") -> str:
    return "–" if value is None else f"{value * scale:+.1f}{unit}"


# Markdown punctuation that starts inline markup (code, emphasis, links, images, tables, strikes);
# "_" only at a word's edge (inside a word it is literal, as in post_generation).
_MD_SPECIAL = re.compile(r"[\\`*\[\]|~]|(?<!\w)_|_(?!\w)")


def md_escape(text: object) -> str:
    """``text`` on one line, inert in Markdown and HTML: no tags, entities, links or emphasis."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return _MD_SPECIAL.sub(lambda m: "\\" + m[0], text)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(md_escape, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(map(md_escape, row)) + " |" for row in rows]


def _md_cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return md_escape(text if len(text) <= limit else text[: limit - 1] + "…")


def _judge_markdown(judge: dict | None) -> list[str]:
    if not judge:
        return []
    lines = ["## Judge: tone and brand fit (not part of the score)", "",
             f"- Judge {md_escape(judge.get('label', judge['model']))} at {md_escape(judge['url'])}"]
    if "error" in judge:
        return lines + [f"- Not available: {_md_cell(judge['error'], 300)}", ""]
    lines += [f"- Mean rating: **{pct(judge['mean'])}** over {judge['judged']} judged answers; "
              f"unreadable or failed judgements: {judge['errors']}", ""]
    rows = [[name, pct(v)] for name, v in {**judge["by_task"], **judge["by_language"]}.items()]
    return lines + _table(["task / language", "mean rating"], rows) + [""]


def render_markdown(report: dict) -> str:
    s, cmp_ = report["summary"], report["comparison"]
    e = md_escape
    lines = [f"# Evaluation of {e(report['model']['label'])}", ""]
    lines += [f"- **Score: {report['score']:.3f}** (weighted pass rate over {s['n_cases']} cases)"]
    if cmp_:
        b = report["baseline"]
        lines += [f"- Baseline {e(b['model']['label'])} ({e(b['source'])}): {cmp_['baseline_score']:.3f}; "
                  f"delta on {cmp_['n_shared']} shared cases: **{cmp_['delta']:+.3f}**"]
    if report["gate"]:
        g = report["gate"]
        verdict = "PASSED" if g["passed"] else "FAILED"
        lines += [f"- Gate: **{verdict}** (delta {g['delta']:+.3f}, required ≥ {g['min_delta']:+.3f})"]
    fmts = ", ".join(f"{e(k)} {v}" for k, v in sorted(s["formats"].items()))
    lines += [f"- Answers: {e(report.get('mode', 'free'))}" + (" (and constrained: see below)" if report.get("modes") else ""),
              f"- Reply formats: {fmts}; request errors: {s['errors']}; cut off at max_tokens: {s.get('truncated', 0)}",
              f"- Latency p50/p95: {s['latency_s']['p50']} / {s['latency_s']['p95']} s; "
              f"output tokens/s p50: {s['tokens_per_s']['p50']}",
              f"- Created {e(report['created_at'])}", ""]

    lines += ["## Checks", ""]
    header = ["check", "weight", "pass rate", "passed / applicable"] + (["baseline", "delta"] if cmp_ else [])
    rows = []
    for name, info in report["checks_info"].items():
        r = s["checks"][name]
        row = [name, f"{info['weight']:g}", pct(r["rate"]), f"{r['passed']} / {r['applicable']}"]
        if cmp_:
            row += [pct(cmp_["checks"][name]["baseline_rate"]), signed(cmp_["checks"][name]["delta"])]
        rows.append(row)
    lines += _table(header, rows) + [""]
    lines += _judge_markdown(report["judge"])

    if report.get("free_vs_constrained"):
        lines += render_modes_markdown(report["free_vs_constrained"], report["checks_info"])

    for title, key in (("task", "by_task"), ("language", "by_language"), ("platform", "by_platform")):
        lines += [f"## By {title}", ""]
        names = list(report["checks_info"])
        rows = [[g, str(v["n"]), f"{v['score']:.3f}"] + [pct(v["checks"][c]) for c in names] for g, v in s[key].items()]
        lines += _table([title, "cases", "score", *names], rows) + [""]

    failed = failing_cases(report)
    lines += [f"## Failing cases ({len(failed)})", ""]
    for r in failed:
        cut = ", cut off at max_tokens" if r.get("truncated") else ""
        lines += [f"### {e(r['id'])} ({e(r['task'])}, {e(r['language'])}, {e(r['platform'])}): score {r['score']:.2f}{cut}", "",
                  f"- Prompt: {_md_cell(r['prompt'], 300)}",
                  f"- Output ({r['format']}): {_md_cell(r['output'] if r['output'] is not None else r['error'], 300)}"]
        for name, c in r["checks"].items():
            if c["status"] == FAIL:
                lines += [f"- **{e(name)}**: " + "; ".join(_md_cell(x) for x in c["reasons"])]
        lines += [""]
    return "\n".join(lines)


def _seconds(value: float | None, sign: bool = False) -> str:
    return "–" if value is None else f"{value:+.2f} s" if sign else f"{value:.2f} s"


def render_modes_markdown(fvc: dict, checks_info: dict) -> list[str]:
    """The free-vs-constrained section of report.md."""
    rows = [[name, pct(c["free"]), pct(c["constrained"]), signed(c["delta"])]
            for name, c in fvc["checks"].items() if name in checks_info and (c["free"] is not None or c["constrained"] is not None)]
    sc = fvc["score"]
    rows.append(["**score**", f"{sc['free']:.3f}", f"{sc['constrained']:.3f}", f"{sc['delta']:+.3f}"])
    for q in ("p50", "p95"):
        lat = fvc["latency_s"][q]
        rows.append([f"latency {q}", _seconds(lat["free"]), _seconds(lat["constrained"]), _seconds(lat["cost_s"], sign=True)])
    rows.append(["cut off at max_tokens", str(fvc["truncated"]["free"]), str(fvc["truncated"]["constrained"]), ""])
    return ["## Free vs constrained", "",
            "The same cases answered twice: free, and constrained to the task's JSON schema.", ""] + \
        _table(["check", "free", "constrained", "delta"], rows) + [""]
