"""What a sweep learned: ``summary.md`` and ``summary.html`` in the sweep folder.

Both hold the best value and parameters as a ready ``python run.py …`` line and the best trial's
adapter, a table of every trial (state, value, duration, parameters, why it failed) and Optuna's
optimization-history, parallel-coordinate and parameter-importance plots (:mod:`smm.sweep.charts`,
saved as SVG files beside the summary). Read from the storage alone, so it can be written at any
time, also while workers run.
"""
from __future__ import annotations

import io
import logging
from datetime import datetime, timezone
from pathlib import Path

from smm.io import write_text
from smm.secrets import mask_url

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("summary.jinja")
PLOTS = {
    "optimization_history": "Optimization history",
    "parallel_coordinate": "Parallel coordinates",
    "param_importances": "Parameter importance",
}
DIED = "no heartbeat: its worker died or was killed"


def _duration(trial) -> str:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return ""
    return f"{(trial.datetime_complete - trial.datetime_start).total_seconds():.0f} s"


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def _row(trial) -> dict:
    state = trial.state.name
    note = ""
    if state == "FAIL":
        note = trial.user_attrs.get("fail_reason") or DIED
    retry_of = trial.system_attrs.get("failed_trial")
    if retry_of is not None:
        note = f"retry of #{retry_of}" + (f"; {note}" if note else "")
    return {"number": trial.number, "state": state, "value": "" if trial.value is None else f"{trial.value:.6g}",
            "duration": _duration(trial), "params": {k: _short(v) for k, v in trial.params.items()}, "note": note}


def _plot(study, kind: str, path: Path) -> str | None:
    """Draw one plot into ``path`` (SVG); returns why it could not be drawn, else None."""
    import matplotlib.pyplot as plt

    from smm.sweep import charts

    try:
        figure = getattr(charts, kind)(study)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", bbox_inches="tight")
        write_text(path, buffer.getvalue())
        return None
    except Exception as exc:  # e.g. importance needs two completed trials with different values
        path.unlink(missing_ok=True)
        return " ".join(str(exc).split()) or type(exc).__name__
    finally:
        plt.close("all")


def build(storage, study_name: str, folder: Path, url: str) -> dict:
    """The summary's content (and its plot files in ``folder``)."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = study.best_trial if complete else None
    folder.mkdir(parents=True, exist_ok=True)
    plots = []
    for kind, title in PLOTS.items():
        file = folder / f"{kind}.svg"
        problem = _plot(study, kind, file) if complete else "no completed trial yet"
        plots.append({"file": file.name, "title": title, "problem": problem})
    counts = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return {
        "study": study_name,
        "storage": mask_url(url),
        "objective": study.user_attrs.get("smm_objective", "value"),
        "direction": study.direction.name.lower(),
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "counts": ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none",
        "best": None if best is None else {
            "number": best.number, "value": f"{best.value:.6g}", "params": best.params,
            "command": best.user_attrs.get("command", ""), "adapter": best.user_attrs.get("adapter_dir", ""),
        },
        "params": sorted({name for t in trials for name in t.params}),
        "trials": [_row(t) for t in trials],
        "plots": plots,
    }


def markdown(summary: dict) -> str:
    s = summary
    lines = [f"# Sweep `{s['study']}`", "",
             f"Storage `{s['storage']}` · objective {s['objective']} ({s['direction']}) · trials: {s['counts']} · written {s['written']}", ""]
    best = s["best"]
    if best:
        lines += ["## Best trial", "", f"Trial {best['number']}: {s['objective']} = {best['value']}; adapter `{best['adapter']}`", "",
                  "Train this configuration again:", "", "```bash", best["command"], "```", "",
                  "| parameter | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in best["params"].items()], ""]
    else:
        lines += ["No trial has completed yet.", ""]
    header = ["#", "state", s["objective"], "duration", *s["params"], "note"]
    lines += ["## Trials", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in s["trials"]:
        cells = [row["number"], row["state"], row["value"], row["duration"],
                 *[row["params"].get(p, "") for p in s["params"]], row["note"].replace("|", "\\|")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "## Plots", ""]
    for plot in s["plots"]:
        lines += [f"![{plot['title']}]({plot['file']})" if not plot["problem"] else f"{plot['title']}: not drawn ({plot['problem']})", ""]
    return "\n".join(lines)


def html(summary: dict) -> str:
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(s=summary)


def write_summary(storage, study_name: str, folder: Path, url: str) -> Path:
    """Write ``summary.md``, ``summary.html`` and the plots into ``folder``; returns the Markdown file."""
    summary = build(storage, study_name, folder, url)
    write_text(folder / "summary.html", html(summary))
    write_text(folder / "summary.md", markdown(summary))
    return folder / "summary.md"
