"""The report's charts, drawn with matplotlib and returned as inline SVG strings.

* :func:`heatmap` — pass rate of every check for every task × language (grey = not applicable);
* :func:`check_bars` — pass rate per check, side by side with the baseline's;
* :func:`latency_chart` — latency distribution and output speed per task.
"""
from __future__ import annotations

import io
from typing import Sequence

from smm.eval.checks import NA, PASS

GREEN, RED, GREY, BLUE, ORANGE = "#1a9850", "#d73027", "#e6e6e6", "#3b6fb6", "#e08a2c"


def _svg(fig, tight: bool = True) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight" if tight else None)
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype for inlining


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none"})
    return plt


def heatmap(records: Sequence[dict], checks: Sequence[str], tasks: Sequence[str], languages: Sequence[str]) -> str:
    """Rows: task × language present in the records; columns: checks, then the mean case score."""
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    plt = _pyplot()
    rows = [(t, l) for t in tasks for l in languages if any(r["task"] == t and r["language"] == l for r in records)]
    columns = [*checks, "score"]
    grid = np.full((len(rows), len(columns)), np.nan)
    counts = np.zeros((len(rows),), dtype=int)
    for i, (task, lang) in enumerate(rows):
        group = [r for r in records if r["task"] == task and r["language"] == lang]
        counts[i] = len(group)
        for j, check in enumerate(checks):
            statuses = [r["checks"][check]["status"] for r in group if r["checks"][check]["status"] != NA]
            if statuses:
                grid[i, j] = sum(s == PASS for s in statuses) / len(statuses)
        grid[i, -1] = sum(r["score"] for r in group) / len(group)

    cmap = LinearSegmentedColormap.from_list("pass", [RED, "#fee08b", GREEN]).with_extremes(bad=GREY)
    labels = [f"{t}  ·  {l.upper()}  (n={n})" for (t, l), n in zip(rows, counts)]
    # A fixed layout (inches): much faster to save than bbox_inches="tight" on a figure this busy.
    left, top, bottom, right, cell_w, cell_h = 0.3 + 0.068 * max(map(len, labels)), 0.75, 0.1, 0.2, 0.72, 0.28
    width, height = left + cell_w * len(columns) + right, top + cell_h * len(rows) + bottom
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, cell_w * len(columns) / width, cell_h * len(rows) / height))
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(columns)):
            value = grid[i, j]
            label = "n/a" if np.isnan(value) else f"{value * 100:.0f}"
            color = "#777777" if np.isnan(value) else ("white" if value < 0.25 or value > 0.8 else "black")
            ax.text(j, i, label, ha="center", va="center", fontsize=7.5, color=color)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="left")
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), labels)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.axvline(len(columns) - 1.5, color="white", linewidth=3)
    for i in range(1, len(rows)):
        if rows[i][0] != rows[i - 1][0]:
            ax.axhline(i - 0.5, color="white", linewidth=3)
    return _svg(fig, tight=False)


def check_bars(rates: dict[str, float | None], baseline: dict[str, float | None] | None = None,
               label: str = "model", baseline_label: str = "baseline") -> str:
    """Horizontal bars: pass rate per check (and the baseline's, when there is one)."""
    plt = _pyplot()
    names = [n for n, v in rates.items() if v is not None or (baseline and baseline.get(n) is not None)]
    fig, ax = plt.subplots(figsize=(6.4, 0.55 + 0.42 * len(names) * (2 if baseline else 1)))
    height = 0.38 if baseline else 0.6
    y = list(range(len(names)))
    model_y = [v - height / 2 for v in y] if baseline else y
    bars = ax.barh(model_y, [(rates[n] or 0) * 100 for n in names], height, color=BLUE, label=label)
    ax.bar_label(bars, [f"{(rates[n] or 0) * 100:.0f}%" for n in names], padding=3, fontsize=8)
    if baseline:
        other = ax.barh([v + height / 2 for v in y], [(baseline.get(n) or 0) * 100 for n in names], height,
                        color=ORANGE, label=baseline_label)
        ax.bar_label(other, [f"{(baseline.get(n) or 0) * 100:.0f}%" for n in names], padding=3, fontsize=8)
        ax.legend(loc="upper center", frameon=False, fontsize=8, bbox_to_anchor=(0.5, -0.09 - 0.35 / len(names)), ncols=2)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("pass rate (%)")
    ax.set_title("Pass rate per check", loc="left", fontsize=10)
    return _svg(fig)


def _short(label: str, n: int = 40) -> str:
    return label if len(label) <= n else "…" + label[-(n - 1):]


def latency_chart(records: Sequence[dict], tasks: Sequence[str], baseline_records: Sequence[dict] | None = None,
                  label: str = "model", baseline_label: str = "baseline") -> str:
    """Left: latency histogram with p50/p95; right: output tokens/s per task."""
    import numpy as np

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1.2, 1]})
    series = [(label, records, BLUE)] + ([(baseline_label, baseline_records, ORANGE)] if baseline_records else [])
    every = [r["latency_s"] for _, recs, _ in series for r in recs if r["output"] is not None]
    bins = np.histogram_bin_edges(every or [0.0], bins=min(30, max(5, len(every) // 3)))
    for name, recs, color in series:
        values = [r["latency_s"] for r in recs if r["output"] is not None]
        if not values:
            continue
        left.hist(values, bins=bins, color=color, alpha=0.6, label=_short(name))
        for q, style in ((50, "-"), (95, "--")):
            left.axvline(np.percentile(values, q), color=color, linestyle=style, linewidth=1.2)
    left.set_xlabel("seconds per answer  (solid line p50, dashed p95)")
    left.set_ylabel("answers")
    left.set_title("Latency", loc="left", fontsize=10)
    if baseline_records:
        left.legend(frameon=False, fontsize=8)

    present = [t for t in tasks if any(r["task"] == t and r["tokens_per_s"] for r in records)]
    if present:
        rng = np.random.default_rng(0)
        for i, task in enumerate(present):
            values = [r["tokens_per_s"] for r in records if r["task"] == task and r["tokens_per_s"]]
            right.scatter(values, i + rng.uniform(-0.18, 0.18, len(values)), s=14, color=BLUE, alpha=0.6)
            right.plot([np.median(values)] * 2, [i - 0.3, i + 0.3], color="black", linewidth=1.5)
        right.set_yticks(range(len(present)), present)
        right.invert_yaxis()
    else:
        right.text(0.5, 0.5, "no token counts reported", ha="center", va="center", transform=right.transAxes)
        right.set_yticks([])
    right.set_xlabel("output tokens per second")
    right.set_title("Output speed per task (bar = median)", loc="left", fontsize=10)
    fig.tight_layout()
    return _svg(fig)
