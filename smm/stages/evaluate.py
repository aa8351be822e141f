"""stage=evaluate: ask the shipped model every test case, check the answers, write a report.

1. Cases: the built-in set (smm/eval/cases.jsonl), plus or instead of ``eval.test_file``.
2. Answers from ``eval.backend``: ollama | openai | llama_cpp | hf (smm/backends), concurrently
   for the HTTP backends; free, constrained to the task's JSON schema (``eval.constrained=on``),
   or both (every case twice, reported side by side). Without a terminal, progress and the
   score so far are logged every tenth of the cases.
3. Checks from the task registry (smm/eval/checks.py); score = mean weighted pass rate.
4. Optional baseline (``eval.baseline``: a model on the same server, a .gguf or a report.json),
   judged by the same checks on the same cases; ``eval.gate_min_delta`` turns the score delta into
   the exit code (3 = gate failed). A .gguf baseline is answered beside the model, at the same
   time, where both run in process (``eval.backend=llama_cpp``) on a fixed ``eval.threads`` that
   fits the cores twice: the same answers in about half the time.
5. Optional LLM judge (``eval.judge.url``, smm/eval/judge.py): a tone/brand-fit rating per answer,
   reported beside the checks, never part of the score or the gate.
6. ``<eval.output_dir>/<timestamp>/``: report.json, report.md, report.html, manifest.json — written
   to a temporary folder that is renamed into place only when complete.

Returns the score (0-1) for sweeps.
"""
from __future__ import annotations

import logging
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from smm import strict_json
from smm.backends import MODES, Backend, Generation, check_can_constrain, generate_all, make_backend
from smm.config import to_plain
from smm.cpu_share import usable_cores
from smm.errors import ConfigError, GateFailed, SmmError
from smm.eval.cases import BUILTIN_CASES, EvalCase, select_cases
from smm.io import atomic_directory, write_json, write_manifest, write_text
from smm.eval.judge import judge_records, judge_url
from smm.eval.report import build_report, make_record, pct, recheck, render_markdown, signed
from smm.secrets import mask_url
from smm.serving import answer_schema
from smm.tasks import TASKS

log = logging.getLogger(__name__)
HTTP_BACKENDS = ("ollama", "openai")


def describe_model(kind: str, e: DictConfig, *, model: str | None = None, model_path: str | None = None) -> dict[str, Any]:
    """What is evaluated, for the report (no secrets: URLs without user info)."""
    if kind in HTTP_BACKENDS:
        return {"backend": kind, "model": model or e.model, "url": mask_url(e.url)}
    if kind == "llama_cpp":
        return {"backend": kind, "model_path": model_path or e.model_path}
    return {"backend": kind, "adapter_dir": e.adapter_dir}


def modelfile_of(cfg: DictConfig) -> str:
    """The export stage's Modelfile (named in the hint when Ollama lacks the model)."""
    return str(Path(cfg.export.output_dir) / "Modelfile")


class ProgressLog:
    """Progress without a terminal: every ``step`` finished cases, one log line with the score so far."""

    def __init__(self, title: str, total: int) -> None:
        self.title, self.total = title, total
        self.step = max(1, math.ceil(total / 10))
        self.scores: list[float] = []
        self.truncated = 0
        self._lock = threading.Lock()

    def add(self, record: dict) -> None:
        with self._lock:
            self.scores.append(record["score"])
            self.truncated += bool(record["truncated"])
            done = len(self.scores)
            if done % self.step == 0 or done == self.total:
                log.info("%s: %d/%d cases, score so far %.3f, %d cut off at max_tokens", self.title, done,
                         self.total, sum(self.scores) / done, self.truncated)


def progress_display():
    """One progress display for every evaluation running meanwhile (bars on a terminal, else off)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True, disable=not sys.stderr.isatty())


def evaluate(backend: Backend, cases: list[EvalCase], title: str, constrained: bool = False, progress=None) -> list[dict]:
    """Every case's record, with a progress bar (a terminal) or progress log lines (no terminal);
    ``progress``: a display shared with evaluations running beside this one."""
    records: list[dict | None] = [None] * len(cases)
    schemas = [answer_schema(c.task) for c in cases] if constrained else None
    progress_log = ProgressLog(title, len(cases))
    with nullcontext(progress) if progress is not None else progress_display() as shown:
        task = shown.add_task(title, total=len(cases))

        def done(i: int, generation: Generation) -> None:
            records[i] = make_record(cases[i], generation)
            shown.advance(task)
            if shown.disable:
                progress_log.add(records[i])

        generate_all(backend, [c.messages() for c in cases], done, schemas)
    return records


def _run_backend(make: Callable[[], Backend], cases: list[EvalCase], title: str,
                 modes: tuple[str, ...] = ("free",)) -> tuple[str, dict[str, list[dict]]]:
    """The backend's label and its records in every mode (``free``/``constrained``)."""
    backend = make()
    try:
        return _answer(backend, cases, title, modes)
    finally:
        backend.close()


def _answer(backend: Backend, cases: list[EvalCase], title: str, modes: tuple[str, ...],
            progress=None) -> tuple[str, dict[str, list[dict]]]:
    """A loaded backend's label and its records in every mode."""
    if "constrained" in modes and not backend.can_constrain:
        raise SmmError(f"{backend.label} cannot constrain answers to a JSON schema; set eval.constrained=off")
    return backend.label, {
        mode: evaluate(backend, cases, f"{title} {backend.label} ({mode})", constrained=mode == "constrained",
                       progress=progress)
        for mode in modes
    }


def side_by_side(e: DictConfig, plan: BaselinePlan | None) -> bool:
    """Whether the model and a .gguf baseline can be answered at the same time: both in this process
    on a fixed thread count that fits the usable cores twice (no thread waits for another)."""
    return (plan is not None and plan.source == "gguf" and plan.records is None and e.backend == "llama_cpp"
            and e.threads >= 1 and 2 * e.threads <= len(usable_cores()))


def run_model_and_baseline(make: Callable[[], Backend], plan: BaselinePlan, cases: list[EvalCase],
                           modes: tuple[str, ...]) -> tuple[tuple[str, dict], tuple[str, dict]]:
    """The model's and the baseline's :func:`_run_backend` results, answered at the same time. Both
    models load here, one after the other: llama-cpp-python points the process's stdout and stderr
    at /dev/null while a model loads, and two loads at once can leave them there."""
    model = make()
    try:
        baseline = plan.make()
        try:
            with progress_display() as progress, ThreadPoolExecutor(2, thread_name_prefix="smm-side-by-side") as pool:
                answered = pool.submit(_answer, model, cases, "Evaluating", modes, progress)
                answered_b = pool.submit(_answer, baseline, cases, "Baseline", modes[:1], progress)
                return answered.result(), answered_b.result()
        finally:
            baseline.close()
    finally:
        model.close()


@dataclass
class BaselinePlan:
    """How to get the baseline's records, checked before the (long) evaluation of the model."""

    source: str
    model: dict[str, Any]
    records: list[dict] | None = None
    make: Callable[[], Backend] | None = None


def plan_baseline(cfg: DictConfig, cases: list[EvalCase]) -> BaselinePlan | None:
    e = cfg.eval
    spec = e.baseline
    if not spec:
        if e.gate_min_delta is not None:
            raise ConfigError("eval.gate_min_delta needs eval.baseline (a model name, a .gguf or a report.json)")
        return None
    if spec.endswith(".json"):
        return _baseline_from_report(Path(spec), cases)
    if spec.endswith(".gguf"):
        if not Path(spec).is_file():
            raise SmmError(f"eval.baseline: {spec} not found")
        return BaselinePlan("gguf", describe_model("llama_cpp", e, model_path=spec),
                            make=lambda: make_backend("llama_cpp", e, model_path=spec))
    if e.backend not in HTTP_BACKENDS:
        raise ConfigError(
            f"eval.baseline={spec!r}: a model name needs eval.backend=ollama or openai; "
            "with llama_cpp or hf give a .gguf file or a report.json"
        )
    make = lambda: make_backend(e.backend, e, model=spec, modelfile=modelfile_of(cfg))  # noqa: E731
    make().close()  # fail now if the server does not have it
    return BaselinePlan("model on the same server", describe_model(e.backend, e, model=spec), make=make)


def _baseline_from_report(path: Path, cases: list[EvalCase]) -> BaselinePlan:
    if not path.is_file():
        raise SmmError(f"eval.baseline: {path} not found")
    try:
        data = strict_json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SmmError(f"eval.baseline: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list) or not isinstance(data.get("model"), dict):
        raise SmmError(f"eval.baseline: {path} is not an smm evaluation report (no 'model' and 'cases')")
    records = recheck(cases, data["cases"])
    if not records:
        raise SmmError(f"eval.baseline: {path} has none of this run's case ids")
    return BaselinePlan(f"report {path}", {**data["model"], "report": str(path)}, records=records)


def _new_run_dir(root: Path) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    target, n = root / stamp, 1
    while target.exists():
        n += 1
        target = root / f"{stamp}-{n}"
    return target


def write_reports(report: dict, cfg: DictConfig, inputs: list[str]) -> Path:
    """Write report.json/.md/.html and manifest.json into a new timestamped folder, atomically.

    Strings a server sent with lone surrogates (not UTF-8) are written with U+FFFD in their place.
    """
    from smm.eval.report_html import render_html

    report = strict_json.sanitize(report)
    root = Path(cfg.eval.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = _new_run_dir(root)
    with atomic_directory(target) as staging:
        write_json(staging / "report.json", report)
        write_text(staging / "report.md", render_markdown(report))
        write_text(staging / "report.html", render_html(report))
        config = to_plain(cfg)
        comparison, gate = report["comparison"] or {}, report["gate"] or {}
        metrics = {"score": report["score"], "n_cases": report["summary"]["n_cases"],
                   "baseline_score": comparison.get("baseline_score"), "delta": comparison.get("delta"),
                   "gate_passed": gate.get("passed")}
        write_manifest(staging, "evaluate", config, inputs=inputs, metrics=metrics, model=report["model"])
    return target


def modes_table(fvc: dict, applicable: dict):
    """Free vs constrained, per check, with the score and the latency cost (a rich Table)."""
    from rich.table import Table

    table = Table(title="Free vs constrained (the task's JSON schema)")
    for name, justify in (("check", "left"), ("free", "right"), ("constrained", "right"), ("delta", "right")):
        table.add_column(name, justify=justify)
    for name, c in fvc["checks"].items():
        if applicable[name]["applicable"]:
            table.add_row(name, pct(c["free"]), pct(c["constrained"]), signed(c["delta"]))
    table.add_section()
    sc, lat = fvc["score"], fvc["latency_s"]["p50"]
    table.add_row("score", f"{sc['free']:.3f}", f"{sc['constrained']:.3f}", f"{sc['delta']:+.3f}")
    if lat["free"] is not None and lat["constrained"] is not None:
        table.add_row("latency p50", f"{lat['free']:.2f} s", f"{lat['constrained']:.2f} s", f"{lat['cost_s']:+.2f} s")
    return table


def print_summary(report: dict, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    s, comparison = report["summary"], report["comparison"]
    table = Table()
    table.add_column("check")
    table.add_column("pass rate", justify="right")
    table.add_column("passed", justify="right")
    if comparison:
        table.add_column("baseline", justify="right")
        table.add_column("delta", justify="right")
    for name, c in s["checks"].items():
        if not c["applicable"]:
            continue
        row = [name, f"{c['rate'] * 100:.0f}%", f"{c['passed']}/{c['applicable']}"]
        if comparison:
            d = comparison["checks"][name]
            row += ["–" if d["baseline_rate"] is None else f"{d['baseline_rate'] * 100:.0f}%", signed(d["delta"])]
        table.add_row(*row)
    table.add_section()
    row = ["[b]score[/b]", f"[b]{report['score']:.3f}[/b]", ""]
    if comparison:
        row += [f"{comparison['baseline_score']:.3f}", f"[b]{comparison['delta']:+.3f}[/b]"]
    table.add_row(*row)
    console = Console()
    console.print(f"[b]Evaluation of {report['model']['label']}[/b] on {s['n_cases']} cases")
    console.print(table)
    latency = s["latency_s"]
    timing = f"latency p50 {latency['p50']:.2f} s, p95 {latency['p95']:.2f} s; " if latency["p50"] is not None else ""
    console.print(f"{timing}"
                  f"reply formats: {', '.join(f'{k} {v}' for k, v in sorted(s['formats'].items()))}; "
                  f"cut off at max_tokens: {s['truncated']}")
    if report["free_vs_constrained"]:
        console.print(modes_table(report["free_vs_constrained"], s["checks"]))
    judge = report["judge"]
    if judge:
        said = f"not available ({judge['error']})" if "error" in judge else (
            f"mean {judge['mean'] * 100:.0f}% over {judge['judged']} answers" if judge["mean"] is not None else "no readable judgement")
        console.print(f"Judge {judge['url']} (tone and brand fit, not in the score): {said}")
    if report["gate"]:
        g = report["gate"]
        console.print(f"Gate (delta ≥ {g['min_delta']:+.3f}): " + ("[green]passed[/green]" if g["passed"] else "[red]FAILED[/red]"))
    console.print(f"Report: {run_dir / 'report.html'}")


def run(cfg: DictConfig) -> float:
    e = cfg.eval
    check_can_constrain(e.backend, e.constrained)
    modes = MODES[e.constrained]
    cases = select_cases(e.test_file, e.test_mode, e.max_cases)
    builtin = [str(BUILTIN_CASES), *(t.source for t in TASKS.values() if t.eval_cases)]
    inputs = ([] if e.test_mode == "replace" else builtin) + ([e.test_file] if e.test_file else [])
    baseline_plan = plan_baseline(cfg, cases)
    log.info("Evaluating %d cases with eval.backend=%s (%s)", len(cases), e.backend, " and ".join(modes))

    make_model = lambda: make_backend(e.backend, e, model_cfg=cfg.model, modelfile=modelfile_of(cfg))  # noqa: E731
    label_b = records_b = None
    if side_by_side(e, baseline_plan):
        log.info("The model and its baseline answer side by side (eval.threads=%d each, %d cores)", e.threads, len(usable_cores()))
        (label, by_mode), (label_b, runs) = run_model_and_baseline(make_model, baseline_plan, cases, modes)
        records_b = runs[modes[0]]
    else:
        label, by_mode = _run_backend(make_model, cases, "Evaluating", modes)
    baseline = None
    if baseline_plan is not None:
        if records_b is None:
            records_b, label_b = baseline_plan.records, baseline_plan.model.get("label")
        if records_b is None:
            label_b, runs = _run_backend(baseline_plan.make, cases, "Baseline", modes[:1])
            records_b = runs[modes[0]]
        baseline = {"model": {**baseline_plan.model, "label": label_b}, "source": baseline_plan.source, "records": records_b}

    judge = judge_records(by_mode[modes[0]], cases, e.judge, e) if judge_url(e.judge) else None

    settings_keys = ("temperature", "max_tokens", "seed", "timeout_s", "retries", "concurrency", "constrained", "repeat_penalty")
    report = build_report(
        model={**describe_model(e.backend, e), "label": label},
        settings={k: e[k] for k in settings_keys} | ({"threads": e.threads} if e.backend == "llama_cpp" else {}),
        records=by_mode[modes[0]], case_files=inputs, baseline=baseline, gate_min_delta=e.gate_min_delta,
        mode=modes[0], constrained_records=by_mode["constrained"] if len(modes) == 2 else None, judge=judge,
    )
    run_dir = write_reports(report, cfg, inputs)
    print_summary(report, run_dir)
    gate = report["gate"]
    if gate and not gate["passed"]:
        raise GateFailed(
            f"gate failed: score {report['comparison']['score']:.3f} vs baseline "
            f"{report['comparison']['baseline_score']:.3f}, delta {gate['delta']:+.3f} < eval.gate_min_delta "
            f"{gate['min_delta']:+.3f} (report: {run_dir / 'report.html'})"
        )
    return float(report["score"])
