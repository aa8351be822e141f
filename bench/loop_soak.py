"""Soak test of ``stage=loop`` (issue 26): a loop that is killed, and whose database restarts, never
loses or repeats a rating and never deploys half a run.

The demo preset's loop (SmolLM2-135M, 2 training steps, f16 export) runs ``--runs`` times back to back against a real PostgreSQL (a throwaway
server from the binaries on PATH, as the tests use) and a stand-in ``ollama`` on PATH. A driver
adds ratings before each run and every ``--rate-every`` seconds while it runs. Some runs (a share
``--kill-share``) get a SIGKILL at a random moment of a run's usual duration; in ``--db-restarts``
others the database restarts in the middle of the feedback export (the driver holds a lock that
makes the export wait, sees it waiting, then restarts the server). After a kill or a failure the
driver finishes the run with ``loop.from_step=<its first unfinished step>`` (or leaves it to the
next scheduled run when no run folder was made). The gate is opened (``loop.min_delta=-1``) so
that runs get promoted and kills land in promotions too. Checked:

* every rating exported exactly once (after a final ``stage=feedback`` with the driver stopped):
  each rating's feedback id once in ``feedback_sft.jsonl``, each edit's pair once in ``feedback_dpo.jsonl``;
* the deployed model always a complete promoted run: a watcher reads ``loop.current`` every 0.1 s
  (the run's evaluate step done and its GGUF present, hash as exported); after every run the
  deployed run is ``promoted`` (or ``promoting`` until the next loop completes it), all steps done;
* no orphaned temp folders or files (``.*.tmp``, ``.*.partial``, ``.*.old``) once the runs are done;
* ``promotions.json`` consistent: the promoted runs, in order, once each, the last one deployed,
  Ollama's ``:latest`` on it.

    python bench/loop_soak.py --runs 20 --seed 0     # the full soak (31 min on 2 CPU cores beside other work)
    python bench/loop_soak.py --runs 4 --seed 5 --db-restarts 1 --kill-share 1   # about 7 min
    python bench/loop_soak.py --runs 4 --kill-steps export,promote               # kills only there
Figures: ``<--out>.json`` and ``<--out>.md`` (default docs/bench/loop_soak); exit code 1 when a
check fails.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fixtures_gguf import make_fake_ollama  # noqa: E402
from fixtures_postgres import LocalPostgres  # noqa: E402

from smm.config import LOOP_STEPS  # noqa: E402
from smm.loop import lineage  # noqa: E402

SEED = REPO / "data" / "seed" / "social_media_examples.jsonl"
TEMP_NAME = re.compile(r"^\..+\.(tmp|partial|old)$")
EXPORT_STEP = "feedback export"  # before the run folder exists


class Driver:
    """Adds ratings (thumbs up, and edits that make a DPO pair) to the app database."""

    def __init__(self, db, examples: list[dict], rng: random.Random) -> None:
        self.db, self.examples, self.rng = db, examples, rng
        self.added = 0
        self.failed_inserts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, count: int) -> None:
        for _ in range(count):
            example = self.rng.choice(self.examples)
            system, user, answer = (m["content"] for m in example["messages"])
            fields = dict(task=example["task"], language=example["language"], platform=example["platform"],
                          system_prompt=system, user_input=f"{user} (#{self.added})")
            try:
                if self.added % 3 == 2:
                    generation = self.db.generation(**fields, model_output='{"post": "Buy now!!!"}')
                    self.db.rate(generation, "EDITED", edited_output=answer)
                else:
                    self.db.rate(self.db.generation(**fields, model_output=answer), "THUMBS_UP")
                self.added += 1
            except Exception:  # the server is restarting: reconnect next time
                self.failed_inserts += 1
                self.db.close()

    def start(self, every_s: float) -> None:
        self._stop.clear()

        def rate() -> None:
            while not self._stop.wait(every_s):
                self.add(1)

        self._thread = threading.Thread(target=rate, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


class Watcher:
    """Reads ``loop.current`` every 0.1 s: the deployed run must always be a complete one."""

    def __init__(self, current: Path) -> None:
        self.current = current
        self.reads = 0
        self.violations: list[str] = []
        self.deployed_seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            if not self.current.is_symlink():
                continue
            self.reads += 1
            problem = deployed_problem(self.current.resolve(), complete_only=True)
            self.deployed_seen.add(self.current.resolve().name)
            if problem:
                self.violations.append(f"{time.strftime('%H:%M:%S')} {problem}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


_VERIFIED: set[tuple] = set()  # GGUFs (path, size, mtime) whose hash matched their export manifest


def deployed_problem(run_dir: Path, complete_only: bool = False) -> str | None:
    """Why ``run_dir`` is not a complete (promoted) run, or None."""
    try:
        manifest = lineage.read_manifest(run_dir)
    except Exception as exc:
        return f"{run_dir.name}: manifest unreadable ({exc})"
    steps = manifest.get("steps", {})
    if steps.get("evaluate", {}).get("status") != "done":
        return f"{run_dir.name}: deployed before its evaluation finished"
    gguf = Path(steps.get("export", {}).get("outputs", {}).get("gguf", ""))
    if not gguf.is_file():
        return f"{run_dir.name}: deployed GGUF {gguf} missing"
    stat = gguf.stat()
    key = (str(gguf), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        exported = json.loads((gguf.parent / "manifest.json").read_text(encoding="utf-8"))["gguf"]["sha256"]
        if hashlib.sha256(gguf.read_bytes()).hexdigest() != exported:
            return f"{run_dir.name}: deployed GGUF differs from the exported one"
        _VERIFIED.add(key)
    if complete_only:
        return None
    if manifest.get("status") not in ("promoted", "promoting"):
        return f"{run_dir.name}: deployed with status {manifest.get('status')}"
    if manifest.get("status") == "promoted" and [steps.get(s, {}).get("status") for s in LOOP_STEPS] != ["done"] * 6:
        return f"{run_dir.name}: promoted with steps {[steps.get(s, {}).get('status') for s in LOOP_STEPS]}"
    return None


def export_sessions(server: LocalPostgres, database: str, waiting: bool = False) -> int:
    """Sessions of smm's feedback export in ``database`` (``waiting``: those waiting on a lock)."""
    with server.admin() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'smm-feedback'"
                    + (" AND wait_event_type = 'Lock'" if waiting else ""), (database,))
        return cur.fetchone()[0]


def wait_for_export_to_block(server: LocalPostgres, database: str, timeout_s: float = 120) -> bool:
    """True once the feedback export waits on a lock in ``database``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if export_sessions(server, database, waiting=True):
            return True
        time.sleep(0.05)
    return False


def restart_database(server: LocalPostgres) -> None:
    """``pg_ctl restart``: the server ends every session and comes back on the same port."""
    subprocess.run(server._cmd("pg_ctl", "-D", str(server.data), "-l", str(server.root / "server.log"), "-m", "fast",
                               "-w", "restart"), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path, server: LocalPostgres, db) -> None:
        self.args, self.work, self.server, self.db = args, work, server, db
        self.rng = random.Random(args.seed)  # the events and kill moments (the driver has its own)
        self.kill_plans: dict[int, tuple[str, float]] = {}
        self.ollama = make_fake_ollama(work / "bin")
        self.runs, self.current = work / "output" / "runs", work / "output" / "current"
        self.env = {**os.environ, **self.ollama.env, "DATABASE_URL": db.url}
        feedback = work / "feedback"
        self.base = [
            "stage=loop", "preset=demo", "export=f16", f"data.sources=[{feedback}]", f"feedback.output_dir={feedback}",
            f"feedback.state_file={feedback / 'state.json'}", f"export.merged_dir={work / 'merged'}",
            f"loop.runs_dir={self.runs}", f"loop.current={self.current}", "training.max_steps=2",
            "training.dpo.max_steps=2", "eval.max_cases=2", "eval.max_tokens=8", "data.language_check=off",
            "export.smoke_test=false", "loop.min_delta=-1", "loop.max_regression=1",
        ]
        self.calls = 0
        self.records: list[dict] = []
        self.problems: list[str] = []  # about the deployed run
        self.unfinished: list[str] = []

    def loop(self, *extra: str, kill: tuple[str, float] | None = None, on_start=None) -> dict:
        """One ``stage=loop`` process; with ``kill=(step, seconds)`` it gets a SIGKILL that many
        seconds after the step started (or once a later step runs)."""
        self.calls += 1
        command = [sys.executable, str(REPO / "run.py"), *self.base, *extra,
                   f"hydra.run.dir={self.work / 'hydra' / str(self.calls)}"]
        started = time.monotonic()
        (self.work / "logs").mkdir(exist_ok=True)
        log = (self.work / "logs" / f"{self.calls}.err").open("w+")
        proc = subprocess.Popen(command, cwd=self.work, env=self.env, stdout=subprocess.DEVNULL, stderr=log,
                                text=True, start_new_session=True)
        if on_start:
            on_start()
        killed_in, in_run = None, False
        if kill:
            step, delay = kill
            order = [EXPORT_STEP, *LOOP_STEPS]
            while proc.poll() is None:
                now = EXPORT_STEP if export_sessions(self.server, self.db.name) else self.running_step()
                in_run = in_run or now != EXPORT_STEP
                if now in order and order.index(now) >= order.index(step) and (now != EXPORT_STEP or step == EXPORT_STEP):
                    time.sleep(delay)
                    killed_in = self.running_step()
                    if killed_in == EXPORT_STEP and in_run:
                        killed_in = "after its run ended"
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
        proc.wait()
        log.seek(0)
        lines = log.read().strip().splitlines()
        log.close()
        return {"args": list(extra), "rc": proc.returncode, "seconds": round(time.monotonic() - started, 1),
                "killed_in": killed_in, "last_line": lines[-1][:300] if lines else ""}

    def running_step(self) -> str:
        """The step a loop is in right now (from the newest run's manifest)."""
        runs = list(lineage.loop_runs(self.runs))
        if not runs or runs[-1][1].get("status") not in ("running", "promoting"):
            return EXPORT_STEP
        steps = runs[-1][1].get("steps", {})
        running = [name for name, step in steps.items() if step.get("status") == "running"]
        return running[-1] if running else "between steps"

    def finish_unfinished(self) -> list[dict]:
        """Resume the newest unfinished run from its first unfinished step until it ends."""
        attempts = []
        for _ in range(3):
            runs = list(lineage.loop_runs(self.runs))
            if not runs or runs[-1][1].get("status") in lineage.FINISHED:
                return attempts
            run_dir, manifest = runs[-1]
            steps = manifest.get("steps", {})
            first = next(s for s in LOOP_STEPS if steps.get(s, {}).get("status") != "done")
            attempts.append(self.loop(f"loop.from_step={first}", f"loop.run_id={run_dir.name}"))
        self.unfinished.append(f"run {runs[-1][0].name} still unfinished after 3 resumes: {attempts[-1]['last_line']}")
        return attempts

    def check_deployed(self, when: str) -> None:
        if not self.current.is_symlink():
            return
        problem = deployed_problem(self.current.resolve())
        if problem:
            self.problems.append(f"{when}: {problem}")

    def scheduled_run(self, number: int, event: str, typical_s: dict[str, float]) -> dict:
        self.db.close()
        self.driver.add(self.args.ratings_between)
        record = {"run": number, "event": event}
        kill = None
        if event == "kill":  # the drawn step, at the drawn share of its usual duration
            step, share = self.kill_plans[number]
            kill = (step, round(share * typical_s.get(step, 1.0), 2))
        record["kill"] = kill
        blocker = None
        if event == "db_restart":
            import psycopg2

            blocker = psycopg2.connect(self.db.url)
            blocker.cursor().execute("LOCK TABLE feedback IN ACCESS EXCLUSIVE MODE")  # until the restart

        def restart_mid_export() -> None:
            record["export_blocked"] = wait_for_export_to_block(self.server, self.db.name)
            restart_database(self.server)
            record["restarted_at_s"] = round(time.monotonic() - t0, 1)

        t0 = time.monotonic()
        self.driver.start(self.args.rate_every)
        try:
            record["loop"] = self.loop(kill=kill, on_start=restart_mid_export if blocker else None)
        finally:
            self.driver.stop()
            if blocker is not None:
                blocker.close()
        record["resumes"] = self.finish_unfinished()
        if record["loop"]["rc"] not in (0, 3) and not record["resumes"]:  # stopped before its run folder:
            record["resumes"].append(self.loop())  # the scheduler's next tick exports and trains it
            record["resumes"] += self.finish_unfinished()
        runs = list(lineage.loop_runs(self.runs))
        record["outcome"] = runs[-1][1].get("status") if runs else None
        record["run_id"] = runs[-1][0].name if runs else None
        self.check_deployed(f"after scheduled run {number}")
        return record

    def run(self) -> dict:
        examples = [json.loads(line) for line in SEED.read_text(encoding="utf-8").splitlines()]
        self.driver = Driver(self.db, examples, random.Random(self.args.seed + 1))
        self.driver.add(self.args.ratings_first)
        events = ["clean"] * self.args.runs  # the first run is clean: it deploys a model and times the steps
        later = list(range(1, self.args.runs))
        self.rng.shuffle(later)
        restarts = later[:self.args.db_restarts]
        kills = [n for n in later[self.args.db_restarts:] if self.rng.random() < self.args.kill_share]
        for n in restarts:
            events[n] = "db_restart"
        for n in sorted(kills):
            events[n] = "kill"
            self.kill_plans[n] = (self.rng.choice(self.args.kill_steps), self.rng.random())
        watcher = Watcher(self.current)
        watcher.start()
        started = time.monotonic()
        typical_s: dict[str, float] = {}  # each step's seconds in the first clean run
        try:
            for number, event in enumerate(events):
                record = self.scheduled_run(number, event, typical_s)
                if not typical_s and record["outcome"] == "promoted":
                    steps = lineage.read_manifest(self.runs / record["run_id"])["steps"]
                    typical_s = {name: step["seconds"] for name, step in steps.items()} | {EXPORT_STEP: 0.5}
                self.records.append(record)
                print(json.dumps({k: record[k] for k in ("run", "event", "kill", "outcome", "run_id")}
                                 | {"rc": record["loop"]["rc"], "killed_in": record["loop"]["killed_in"],
                                    "resumes": len(record["resumes"]), "last": record["loop"]["last_line"][:120]}),
                      flush=True)
        finally:
            watcher.stop()
        soak_s = time.monotonic() - started
        feedback = self.work / "feedback"
        final_export = subprocess.run([sys.executable, str(REPO / "run.py"), "stage=feedback", f"feedback.output_dir={feedback}",
                                       f"feedback.state_file={feedback / 'state.json'}", f"hydra.run.dir={self.work / 'hydra' / 'final'}"],
                                      cwd=self.work, env=self.env, capture_output=True, text=True)
        if final_export.returncode != 0:
            self.unfinished.append(f"final export failed: {final_export.stderr.strip().splitlines()[-1:]}")
        return self.figures(watcher, soak_s)

    # ---- the checks -------------------------------------------------------------------------

    def exported_once(self) -> dict:
        self.db.close()  # its connection may predate a restart
        with self.db.cursor() as cur:
            cur.execute("SELECT id, rating FROM feedback")
            ratings = dict(cur.fetchall())
        feedback = self.work / "feedback"
        sft = Counter(json.loads(line)["feedback_id"] for line in (feedback / "feedback_sft.jsonl").open(encoding="utf-8"))
        dpo = Counter(json.loads(line)["chosen_feedback_id"] for line in (feedback / "feedback_dpo.jsonl").open(encoding="utf-8"))
        edits = {i for i, rating in ratings.items() if rating == "EDITED"}
        return {
            "ratings": len(ratings), "sft_lines": sum(sft.values()), "dpo_lines": sum(dpo.values()),
            "missing": sorted(set(ratings) - set(sft)), "repeated": sorted(i for i, n in sft.items() if n > 1),
            "unknown": sorted(set(sft) - set(ratings)), "pairs_missing": sorted(edits - set(dpo)),
            "pairs_repeated": sorted(i for i, n in dpo.items() if n > 1),
        }

    def orphans(self) -> list[str]:
        return sorted(str(p.relative_to(self.work)) for p in self.work.rglob(".*")
                      if TEMP_NAME.match(p.name) and "hydra" not in p.relative_to(self.work).parts[:1])

    def history_problems(self) -> list[str]:
        promoted = lineage.history(self.runs)
        statuses = {d.name: m.get("status") for d, m in lineage.loop_runs(self.runs)}
        problems = []
        if len(promoted) != len(set(promoted)):
            problems.append(f"a run listed twice: {promoted}")
        if promoted != sorted(promoted):
            problems.append(f"not in promotion order: {promoted}")
        if sorted(r for r, s in statuses.items() if s == "promoted") != sorted(promoted):
            problems.append(f"promoted runs {sorted(r for r, s in statuses.items() if s == 'promoted')} != history {promoted}")
        deployed = self.current.resolve().name if self.current.is_symlink() else None
        if promoted and promoted[-1] != deployed:
            problems.append(f"history ends with {promoted[-1]}, deployed is {deployed}")
        latest = [c["args"][1] for c in self.ollama.calls() if c["args"][:1] == ["cp"] and c["args"][2].endswith(":latest")]
        if latest and deployed and latest[-1] != f"social-media-marketer:{deployed}":
            problems.append(f"Ollama's :latest is {latest[-1]}, deployed is {deployed}")
        return problems

    def figures(self, watcher: Watcher, soak_s: float) -> dict:
        exported = self.exported_once()
        orphans = self.orphans()
        history = self.history_problems()
        loops = [r["loop"] for r in self.records] + [a for r in self.records for a in r["resumes"]]
        statuses = Counter(m.get("status") for _, m in lineage.loop_runs(self.runs))
        checks = {
            "every_run_finished": not self.unfinished,
            "every_rating_exported_once": not any(exported[k] for k in ("missing", "repeated", "unknown", "pairs_missing", "pairs_repeated")),
            "deployed_always_complete": not watcher.violations and not self.problems,
            "no_orphaned_temp_files": not orphans,
            "promotions_json_consistent": not history,
        }
        return {
            "runs": self.args.runs, "seed": self.args.seed, "seconds": round(soak_s, 1),
            "loop_processes": len(loops), "kills": sum(1 for r in loops if r["killed_in"]),
            "killed_in": dict(Counter(r["killed_in"] for r in loops if r["killed_in"])),
            "db_restarts": sum(1 for r in self.records if r["event"] == "db_restart"),
            "resumes": sum(len(r["resumes"]) for r in self.records),
            "exit_codes": dict(Counter(str(r["rc"]) for r in loops)),
            "run_statuses": dict(statuses), "promotions": len(lineage.history(self.runs)),
            "ratings_added": self.driver.added, "inserts_failed_during_restarts": self.driver.failed_inserts,
            "watcher_reads": watcher.reads, "deployed_runs_seen": len(watcher.deployed_seen),
            "checks": checks, "exported": exported, "orphans": orphans, "history_problems": history,
            "deployed_problems": watcher.violations + self.problems, "unfinished": self.unfinished,
            "records": self.records,
        }


def markdown(figures: dict) -> str:
    checks = "\n".join(f"| {name.replace('_', ' ')} | {'yes' if ok else 'NO'} |" for name, ok in figures["checks"].items())
    return f"""# Loop soak (bench/loop_soak.py --runs {figures['runs']} --seed {figures['seed']})

{figures['runs']} scheduled loop runs in {figures['seconds'] / 60:.1f} min: {figures['loop_processes']} loop processes,
{figures['kills']} SIGKILLs (in {', '.join(f'{k}: {v}' for k, v in figures['killed_in'].items()) or 'none'}),
{figures['db_restarts']} database restarts mid-export, {figures['resumes']} follow-up loops (a resume with loop.from_step, or
the next scheduled tick after a run stopped before its run folder);
{figures['ratings_added']} ratings added, {figures['promotions']} promotions; run statuses {figures['run_statuses']};
exit codes {figures['exit_codes']}; the deployed run read {figures['watcher_reads']} times.

| check | holds |
|---|---|
{checks}

Exported: {figures['exported']['ratings']} ratings, {figures['exported']['sft_lines']} SFT lines, {figures['exported']['dpo_lines']} DPO pairs.
Orphans: {figures['orphans'] or 'none'}. Problems: {figures['history_problems'] + figures['deployed_problems'] + figures['unfinished'] or 'none'}.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="scheduled loop runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the events, kill moments and ratings")
    parser.add_argument("--kill-share", type=float, default=0.5, help="share of the other runs killed at a random moment")
    parser.add_argument("--kill-steps", type=lambda text: text.split(","), default=[EXPORT_STEP, *LOOP_STEPS],
                        help=f"steps a kill may land in, comma-separated (default: {EXPORT_STEP},{','.join(LOOP_STEPS)})")
    parser.add_argument("--db-restarts", type=int, default=3, help="runs whose database restarts mid-export")
    parser.add_argument("--ratings-first", type=int, default=12, help="ratings before the first run")
    parser.add_argument("--ratings-between", type=int, default=3, help="ratings added before each run")
    parser.add_argument("--rate-every", type=float, default=2.0, help="seconds between ratings while a loop runs")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "loop_soak", help="figures: OUT.json and OUT.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="smm-loop-soak-"))
    server = LocalPostgres().start()
    db = server.create_database()
    try:
        figures = Soak(args, work, server, db).run()
    finally:
        db.close()
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(figures), encoding="utf-8")
    print(markdown(figures))
    return 0 if all(figures["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
