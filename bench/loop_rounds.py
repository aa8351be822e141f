"""Rounds of the loop against simulated users (issue 24): does the deployed model get better, and is a bad night refused?

Round 0 trains on the seeds only and is deployed. Each later round: bench/loop_simulator.py rates
the deployed model's replies into PostgreSQL, ``python run.py stage=loop`` exports them, trains,
evaluates on the built-in cases and the gate decides. Then a poisoned round (must be refused), a
forced promotion of it (``loop.from_step=promote`` with a gate that takes anything) and
``stage=rollback``. Writes ``rounds.json`` and ``rounds.png`` into ``--workdir`` and, with
``--doc``, the table and plot into that Markdown file between ``<!-- rounds -->`` markers.

    python bench/loop_rounds.py --workdir /tmp/loop-rounds --model smollm2_135m_instruct --rounds 3 --pool 60 \
        --doc docs/loop.md
    python bench/loop_rounds.py --workdir /tmp/loop-tiny --model tiny_qwen2 --rounds 1 --pool 6 --cases 6 \
        --extra training.max_steps=4        # a fast check of the driver

Without ``--database-url`` a throwaway local PostgreSQL is started (tests/fixtures_postgres.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
JUDGEMENT = {"sentiment accuracy": ("sentiment", "expect"), "distinct variations": ("ab_variations", "variations")}
CHECKS = ("json", "schema", "language", "length", "hashtags")
MODELS = {"tiny_qwen2": ["preset=tiny"], "smollm2_135m_instruct": ["preset=smollm2"],
          "smollm2_demo": ["preset=demo", "export.base_gguf=false"]}  # the README's first command's recipe


def loop_args(work: Path, model: str, cases: int, extra: list[str]) -> list[str]:
    feedback = work / "feedback"
    return ["stage=loop", *MODELS[model], f"data.sources=[{REPO / 'data' / 'seed'},{feedback}]",
            f"feedback.output_dir={feedback}", f"feedback.state_file={feedback / 'state.json'}",
            f"export.merged_dir={work / 'merged'}", f"loop.runs_dir={work / 'runs'}", f"loop.current={work / 'current'}",
            "eval.backend=llama_cpp", f"eval.max_cases={cases}", *extra]


def run(args: list[str], work: Path, url: str, name: str) -> tuple[int, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "run.py"), *args, f"hydra.run.dir={work / 'hydra' / name}"],
                            cwd=work, env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True)
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / f"{name}.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    return result.returncode, round(time.perf_counter() - started, 1)


def latest_run(work: Path) -> Path:
    return sorted(p for p in (work / "runs").iterdir() if (p / "manifest.json").is_file())[-1]


def rates(summary: dict) -> dict:
    """Score, the format checks and the judgement checks of one report summary."""
    out = {"score": summary["score"], **{c: summary["checks"][c]["rate"] for c in CHECKS}}
    for label, (task, check) in JUDGEMENT.items():
        out[label] = summary["by_task"].get(task, {}).get("checks", {}).get(check)
    return out


def record(work: Path, name: str, code: int, seconds: float, ratings: dict | None, run_dir: Path | None = None) -> dict:
    """One round's row: the decision, ratings, method and both models' rates (of ``run_dir``: the latest run)."""
    run_dir = run_dir or latest_run(work)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "adapter" / "metrics.json").read_text(encoding="utf-8"))
    report = json.loads(Path(manifest["steps"]["evaluate"]["outputs"]["report"]).read_text(encoding="utf-8"))
    row = {"round": name, "run": run_dir.name, "exit": code, "decision": manifest["status"], "wall_s": seconds,
           "ratings": ratings, "method": metrics.get("method"), "method_reason": metrics.get("method_reason"),
           "candidate": rates(report["summary"]),
           "deployed": rates(report["baseline"]["summary"]) if report.get("baseline") else None,
           "gate": manifest["steps"]["promote"]["metrics"]["gate"]}
    print(json.dumps({k: row[k] for k in ("round", "decision", "wall_s", "method", "ratings")}), flush=True)
    return row


def save(work: Path, rows: list[dict], **extra) -> None:
    """``rounds.json`` after every round, so ``--resume`` can go on from the last one."""
    (work / "rounds.json").write_text(json.dumps({"rounds": rows, **extra}, indent=2), encoding="utf-8")


def pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def table(rows: list[dict]) -> str:
    head = ["round", "👍 / 👎 / ✎", "method", "score deployed → candidate", *[f"{c} d→c" for c in ("json", "schema", "length", "hashtags")],
            "sentiment acc. d→c", "distinct variations d→c", "decision", "wall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d, c = r["deployed"] or {}, r["candidate"]
        counts = "seeds only" if not r["ratings"] else f"{r['ratings']['THUMBS_UP']} / {r['ratings']['THUMBS_DOWN']} / {r['ratings']['EDITED']}"
        pair = lambda key: f"{pct(d.get(key))} → {pct(c.get(key))}"  # noqa: E731
        score = f"{d['score']:.3f} → {c['score']:.3f}" if d else f"{c['score']:.3f}"
        lines.append("| " + " | ".join([r["round"], counts, r["method"] or "-", score,
                                         *[pair(k) for k in ("json", "schema", "length", "hashtags")],
                                         pair("sentiment accuracy"), pair("distinct variations"),
                                         decision(r),
                                         f"{r['wall_s']:.0f} s"]) + " |")
    return "\n".join(lines)


def decision(row: dict) -> str:
    """The gate's decision, with the checks that blocked it and any note on the round."""
    blocked = (row.get("gate") or {}).get("blocking_checks") or []
    text = row["decision"] + (f": {', '.join(blocked)}" if blocked and row["decision"] == "refused" else "")
    return text + (f" ({row['note']})" if row.get("note") else "")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deployed, x = [], []
    current = None
    for i, r in enumerate(rows):
        if r["decision"] == "promoted":
            current = r["candidate"]
        if current:
            x.append(i)
            deployed.append(current)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key in ("score", "sentiment accuracy", "distinct variations", "json"):
        ax.plot(x, [d.get(key) if d.get(key) is not None else float("nan") for d in deployed], marker="o", label=key)
    ax.set_xticks(range(len(rows)), [r["round"] for r in rows], rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("deployed model (built-in cases)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"the CPU ({os.cpu_count()} cores)"


def publish(rows: list[dict], saved: Path, text: str, doc: Path | None, block: str, argv: list[str] | None) -> None:
    """Save ``rows`` as JSON, print the table ``text`` and, with ``doc``, put it between the doc's
    ``block`` markers under the command that measured it."""
    saved.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    if doc:
        command = f"python bench/{Path(sys.argv[0]).name} " + " ".join(argv or sys.argv[1:])
        replace_block(doc, block, f"Measured with `{command}`.\n\n{text}")
    print(text)


def replace_block(doc: Path, name: str, body: str) -> None:
    """Put ``body`` between ``doc``'s ``<!-- name -->`` markers (appended with them when missing)."""
    opening, closing = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{opening}\n{body}\n{closing}"
    text = doc.read_text(encoding="utf-8") if doc.is_file() else ""
    start, end = text.find(opening), text.find(closing)
    text = text[:start] + block + text[end + len(closing):] if start >= 0 and end > start else text + "\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def write_doc(doc: Path, rows: list[dict], png: Path, command: str) -> None:
    replace_block(doc, "rounds", f"Measured on {device()} with `{command}`.\n\n{table(rows)}\n\n"
                                 f"![deployed score per round]({os.path.relpath(png, doc.parent)})")


def rounds(args: argparse.Namespace, url: str) -> list[dict]:
    from loop_simulator import simulate

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    base = loop_args(work, args.model, args.cases, args.extra)
    serving = {"max_tokens": args.max_tokens, "repeat_penalty": args.repeat_penalty, "threads": args.threads}
    rows = json.loads((work / "rounds.json").read_text(encoding="utf-8"))["rounds"] if args.resume else []
    if not rows:
        code, seconds = run([*base, "loop.feedback=false", *args.round0_extra], work, url, "round0")  # the seeds only
        rows.append(record(work, "0 (seeds)", code, seconds, None))
        save(work, rows)
    for n in range(len(rows), args.rounds + 1):
        started = time.perf_counter()
        ratings = simulate(url, work / "current", args.pool, seed=n, **serving)
        code, _ = run(base, work, url, f"round{n}")
        rows.append(record(work, str(n), code, round(time.perf_counter() - started, 1), ratings))  # simulation included
        save(work, rows)
    ratings = simulate(url, work / "current", args.pool, seed=100, poison=True, **serving)
    code, seconds = run(base, work, url, "poisoned")
    rows.append(record(work, "poisoned", code, seconds, ratings))
    poisoned = rows[-1]["run"]
    code, seconds = run([*base, "loop.from_step=promote", f"loop.run_id={poisoned}", "loop.min_delta=-1",
                         "loop.max_regression=1"], work, url, "forced")
    forced = {"round": "forced promotion", "run": poisoned, "exit": code, "wall_s": seconds}
    code, seconds = run(["stage=rollback", f"loop.runs_dir={work / 'runs'}", f"loop.current={work / 'current'}"],
                        work, url, "rollback")
    back = (work / "current").resolve().name
    save(work, rows, forced=forced, rollback={"exit": code, "wall_s": seconds, "deployed_after": back})
    print(json.dumps({"forced": forced, "rollback_exit": code, "deployed_after_rollback": back}))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model", choices=tuple(MODELS), default="smollm2_135m_instruct")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=60, help="requests the simulated users send per round")
    parser.add_argument("--cases", type=int, default=0, help="eval.max_cases (0 = every built-in case)")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--repeat-penalty", type=float, help="the simulator's llama.cpp repeat_penalty (as the deployed Modelfile serves)")
    parser.add_argument("--threads", type=int, default=0, help="the simulator's llama.cpp threads (0 = the cores left free)")
    parser.add_argument("--database-url")
    parser.add_argument("--doc", type=Path, help="a Markdown file to put the table and plot into")
    parser.add_argument("--resume", action="store_true", help="go on after the rounds in WORKDIR/rounds.json (with --database-url)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every loop run")
    parser.add_argument("--round0-extra", nargs="*", default=[], help="more overrides for round 0 (the seeds only), after --extra")
    args = parser.parse_args(argv)
    server = None
    url = args.database_url
    if url is None:
        sys.path.insert(0, str(REPO / "tests"))
        from fixtures_postgres import LocalPostgres

        server = LocalPostgres().start()
        url = server.create_database(schema_sql="").url
    try:
        rows = rounds(args, url)
    finally:
        if server is not None:
            server.stop()
    png = args.workdir / "rounds.png"
    plot(rows, png)
    if args.doc:
        import shutil

        target = args.doc.parent / "loop_rounds.png"
        shutil.copy(png, target)
        from smm.secrets import mask_command_line

        command = " ".join(mask_command_line(list(argv or sys.argv[1:])))  # no database password in the doc
        write_doc(args.doc, rows, target, "python bench/loop_rounds.py " + command)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
