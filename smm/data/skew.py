"""Label skew in the prepared examples, and rebalancing it (``data.balance``).

A model fine-tuned on answers that mostly say one thing learns to say it: 22 of 57 sentiment
answers labelled "mixed" taught a model to call almost every review mixed. For each task with a
top-level label (a field with a fixed set of values in the task's schema, e.g. ``sentiment``) this
counts the labels; for tasks with a list of alternatives (A/B variations) it counts answers whose
alternatives are near-copies of each other (their posts at least ``NEAR_COPY`` similar).
:func:`rebalance` keeps at most ``ratio`` times the rarest label's count of each label (a random
sample) and drops the near-copy answers.
"""
from __future__ import annotations

import difflib
import json
import random
from collections import Counter, defaultdict
from typing import Any, Callable

from smm.eval.checks import variation_roots
from smm.tasks import TASKS, Task

NEAR_COPY = 0.8
"""Two alternatives whose posts are at least this similar (difflib ratio, case-folded) are near-copies."""
SKEWED_SHARE = 0.35
"""A label held by more than this share of a task's answers (with 3+ labels in use) is reported as skew."""


def label_fields(task: Task) -> tuple[str, ...]:
    return tuple(key for key, spec in task.schema.get("properties", {}).items() if "enum" in spec)


def near_copies(task: Task, answer: Any) -> bool:
    """Whether two alternatives of the answer (e.g. A/B variations) are near-copies of each other."""
    for root in variation_roots(task):
        items = answer.get(root) if isinstance(answer, dict) else None
        posts = [" ".join(str(item.get("post", "")).casefold().split()) for item in items or [] if isinstance(item, dict)]
        for i, a in enumerate(posts):
            if any(difflib.SequenceMatcher(None, a, b).ratio() >= NEAR_COPY for b in posts[i + 1:]):
                return True
    return False


def _answer(example: dict) -> Any:
    return json.loads(example["messages"][-1]["content"])


def measure(records: list, load: Callable[[int], dict]) -> tuple[dict, dict[int, str], set[int]]:
    """``(report, labels, copies)`` for ``records`` (prepare's records; ``load(i)`` gives example i):
    the per-task report, each labelled example's label and the examples with near-copy alternatives."""
    labels: dict[int, str] = {}
    copies: set[int] = set()
    answered: Counter = Counter()
    for i, record in enumerate(records):
        task = TASKS[record["task"]]
        fields, roots = label_fields(task), variation_roots(task)
        if not fields and not roots:
            continue
        answer = _answer(load(i))
        answered[task.name] += 1
        if fields and isinstance(answer, dict) and isinstance(answer.get(fields[0]), str):
            labels[i] = f"{fields[0]}={answer[fields[0]]}"
        if roots and near_copies(task, answer):
            copies.add(i)
    report: dict[str, dict] = defaultdict(dict)
    by_task: dict[str, Counter] = defaultdict(Counter)
    for i, label in labels.items():
        by_task[records[i]["task"]][label] += 1
    for task, counts in by_task.items():
        label, top = counts.most_common(1)[0]
        report[task]["labels"] = dict(counts.most_common())
        report[task]["majority"] = {"label": label, "share": round(top / sum(counts.values()), 3)}
    for i in copies:
        report[records[i]["task"]]["near_copy_answers"] = report[records[i]["task"]].get("near_copy_answers", 0) + 1
    for task, info in report.items():
        if "near_copy_answers" in info:
            info["answers"] = answered[task]
    return dict(report), labels, copies


def warnings(report: dict) -> list[str]:
    """One line per skew worth a look."""
    lines = []
    for task, info in report.items():
        majority = info.get("majority")
        if majority and len(info["labels"]) >= 3 and majority["share"] > SKEWED_SHARE:
            counts = ", ".join(f"{k.split('=')[1]} {n}" for k, n in info["labels"].items())
            lines.append(f"{task}: {majority['share']:.0%} of the answers say {majority['label']} ({counts}); "
                         "a model trained on them learns the majority label (data.balance rebalances)")
        if info.get("near_copy_answers"):
            lines.append(f"{task}: {info['near_copy_answers']} of {info['answers']} answers have alternatives that are "
                         f"near-copies of each other (data.balance drops them)")
    return lines


def rebalance(records: list, labels: dict[int, str], copies: set[int], ratio: float, seed: int) -> tuple[list, int]:
    """``(kept, dropped)``: records without near-copy answers, no label above ``ratio`` times its task's rarest."""
    by_label: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, label in labels.items():
        if i not in copies:
            by_label[(records[i]["task"], label)].append(i)
    rarest: dict[str, int] = {}
    for (task, _), members in by_label.items():
        rarest[task] = min(rarest.get(task, len(members)), len(members))
    drop = set(copies)
    rng = random.Random(seed)
    for (task, _), members in sorted(by_label.items()):
        cap = max(1, int(rarest[task] * ratio))
        if len(members) > cap:
            drop.update(rng.sample(members, len(members) - cap))
    return [r for i, r in enumerate(records) if i not in drop], len(drop)
