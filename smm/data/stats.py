"""Statistics of a prepared dataset: counts, length percentiles, a table for the terminal and a chart."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from smm.io import atomic_writer
from smm.tasks import LANGUAGES, TASKS

PERCENTILES = (50, 90, 99, 100)


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {f"p{p}": 0 for p in PERCENTILES}
    ordered = sorted(values)
    return {f"p{p}": ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] for p in PERCENTILES}


def conversation_chars(example: dict, role: str | None = None) -> int:
    """Characters of the example's messages (of one ``role``, or all)."""
    return sum(len(m["content"]) for m in example["messages"] if role is None or m["role"] == role)


def split_stats(examples: list) -> dict:
    """Counts per task, language and platform, and character-length percentiles.

    Each item needs ``task``, ``language``, ``platform``, ``conversation_chars`` and ``answer_chars``.
    """
    return {
        "examples": len(examples),
        "tasks": dict(sorted(Counter(e["task"] for e in examples).items())),
        "languages": dict(sorted(Counter(e["language"] for e in examples).items())),
        "platforms": dict(sorted(Counter(e["platform"] or "none" for e in examples).items())),
        "conversation_chars": _percentiles([e["conversation_chars"] for e in examples]),
        "answer_chars": _percentiles([e["answer_chars"] for e in examples]),
    }


def print_summary(stats: dict, console: Console) -> None:
    """Tables a person reads at a glance: the split by task and language, then lengths."""
    train, val = stats["train"], stats["val"]
    table = Table(title=f"Prepared data: {train['examples']} train / {val['examples']} val")
    table.add_column("task")
    for lang in LANGUAGES:
        table.add_column(lang, justify="right")
    table.add_column("train", justify="right")
    table.add_column("val", justify="right")
    grid = stats["task_language"]
    for task in TASKS:
        row = [str(grid.get(task, {}).get(lang, 0)) for lang in LANGUAGES]
        table.add_row(task, *row, str(train["tasks"].get(task, 0)), str(val["tasks"].get(task, 0)))
    console.print(table)

    lengths = Table(title="Characters per conversation / answer")
    lengths.add_column("split")
    for p in PERCENTILES:
        lengths.add_column("max" if p == 100 else f"p{p}", justify="right")
    for name, part in (("train", train), ("val", val)):
        lengths.add_row(name, *(f"{part['conversation_chars'][f'p{p}']} / {part['answer_chars'][f'p{p}']}" for p in PERCENTILES))
    console.print(lengths)
    platforms = Counter(train["platforms"]) + Counter(val["platforms"])
    console.print("Platforms: " + ", ".join(f"{k} {v}" for k, v in sorted(platforms.items())))
    rejected = stats["rejected"]
    console.print(
        f"Read {stats['lines_read']} lines from {len(stats['files'])} files; rejected {rejected['total']}, "
        f"exact duplicates dropped {stats['duplicates_dropped']}, near-duplicate pairs {len(stats['near_duplicates'])}, "
        f"language warnings {stats['language_mismatches']}."
    )


def save_chart(grid: dict[str, dict[str, int]], path: Path) -> None:
    """A heat map of examples per task × language, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, langs = list(TASKS), list(LANGUAGES)
    values = [[grid.get(t, {}).get(lang, 0) for lang in langs] for t in tasks]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    image = ax.imshow(values, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(langs)), [lang.upper() for lang in langs])
    ax.set_yticks(range(len(tasks)), [TASKS[t].title for t in tasks])
    peak = max(max(row) for row in values) or 1
    for y, row in enumerate(values):
        for x, v in enumerate(row):
            ax.text(x, y, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    ax.set_title("Examples per task and language")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    with atomic_writer(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
