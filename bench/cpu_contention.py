"""CPU training beside another CPU-heavy process: how much slower is a step than alone? (issue 23)

Runs the real train stage (``stage=train preset=demo``, SmolLM2-135M-Instruct on the seeds, a fixed
number of optimizer steps) alone and beside a competitor, for each thread setting, and prints the
ratio of real tokens/s (``metrics.json``'s ``real_tokens_per_s``, first step left out):

- competitors: ``busy`` = one job busy-looping on every usable core (one process forked per core);
  ``train`` = a second training run of the same recipe and setting. Each is one job started in a
  session of its own (its own scheduler autogroup, as another user's job would be), so a fair share
  of the machine is half of it.
- settings: ``smm`` = the defaults (``training.cpu_threads=auto``: adapting threads, OpenMP's own
  wait policy, idle threads spin a moment first); ``passive`` = adapting threads whose idle threads
  sleep (``OMP_WAIT_POLICY=PASSIVE``, the default before 2026-12-08); ``fixed`` = every core, idle
  threads sleep (what smm sets for a fixed count); ``before`` = every core and OpenMP's own wait
  policy, what smm did before issue 23.

    python bench/cpu_contention.py                           # all settings, both competitors
    python bench/cpu_contention.py --settings smm --steps 20 --competitors busy

Run it on an otherwise idle machine: "alone" must be alone. Results: ``--out`` (default
output/cpu_contention) holds ``contention.json`` and ``contention.md``; docs/benchmarks.md records a run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CORES = len(os.sched_getaffinity(0))
SETTINGS = {
    "smm": ({}, []),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),  # adapting threads whose idle threads sleep (smm's default until 2026-12-08)
    "fixed": ({}, [f"training.cpu_threads={CORES}"]),  # smm makes a fixed team's idle threads sleep
    "before": ({"OMP_WAIT_POLICY": ""}, [f"training.cpu_threads={CORES}"]),  # empty: libgomp's default
}
BUSY_LOOPS = f"import os\nfor _ in range({CORES} - 1):\n    if os.fork() == 0:\n        break\nwhile True:\n    pass"
"""One busy loop per usable core, forked from one process: one job (one session, one scheduler autogroup)."""


def train_command(out: Path, name: str, steps: int, overrides: list[str]) -> list[str]:
    run = out / name
    return [sys.executable, "run.py", "stage=train", "preset=demo", "training.method=sft", f"training.max_steps={steps}",
            "training.logging_steps=1", f"data.output_dir={out / 'data'}", f"training.output_dir={run / 'adapter'}",
            f"training.checkpoint_dir={run / 'checkpoints'}", f"hydra.run.dir={run / 'hydra'}", *overrides]


def start(cmd: list[str], env: dict, log_file: Path) -> subprocess.Popen:
    """``cmd`` in a session of its own (its own autogroup), output into ``log_file``."""
    with open(log_file, "w") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measured_run(out: Path, name: str, steps: int, setting: str, competitor: str | None) -> dict:
    """One training run under ``setting``, alone or beside ``competitor``; its tokens/s and steps."""
    env_extra, overrides = SETTINGS[setting]
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    rivals: list[subprocess.Popen] = []
    try:
        if competitor == "busy":
            rivals = [start([sys.executable, "-c", BUSY_LOOPS], env, out / f"{name}.busy.log")]
            time.sleep(2)
        elif competitor == "train":
            rival = train_command(out, f"{name}-rival", steps * 20, overrides)
            rivals = [start(rival, env, out / f"{name}.rival.log")]
            wait_for_training(out / f"{name}.rival.log", rivals[0])
        started = time.perf_counter()
        result = subprocess.run(train_command(out, name, steps, overrides), cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
    finally:
        for rival in rivals:
            stop(rival)
    if result.returncode != 0:
        raise SystemExit(f"{name}: the training run failed:\n" + "\n".join((result.stdout + result.stderr).splitlines()[-8:]))
    metrics = json.loads((out / name / "adapter" / "metrics.json").read_text(encoding="utf-8"))
    threads = [line.split("CPU threads: ", 1)[1] for line in (result.stdout + result.stderr).splitlines() if "CPU threads: " in line]
    return {"tokens_per_s": metrics["real_tokens_per_s"], "step_seconds": metrics["step_seconds"], "steps": metrics["steps"],
            "wall_s": round(wall, 1), "thread_changes": threads}


def wait_for_training(log_file: Path, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until the competing training logs its first step (its model is loaded and it computes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the competing training ended early; see {log_file}")
        if "'loss'" in log_file.read_text(errors="replace"):
            return
        time.sleep(1)
    raise SystemExit(f"the competing training did not start within {timeout_s:.0f} s; see {log_file}")


def prepare(out: Path) -> None:
    cmd = [sys.executable, "run.py", "stage=prepare", "preset=demo", f"data.output_dir={out / 'data'}", f"hydra.run.dir={out / 'prepare'}"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)


def render(result: dict) -> str:
    lines = [f"{result['date']} · {result['machine']} · {result['steps']} steps a run · load before {result['load_before']}", "",
             "| setting | alone tok/s | competitor | beside tok/s | slower by | thread changes beside |", "|---|---:|---|---:|---:|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['setting']} | {row['alone']:.0f} | {row['competitor']} | {row['beside']:.0f} | **{row['ratio']:.2f}x** | "
                     f"{'; '.join(row['thread_changes']) or '–'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "output" / "cpu_contention")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of each measured run (default 12)")
    parser.add_argument("--settings", default="smm,fixed,before", help="comma-separated: " + ", ".join(SETTINGS))
    parser.add_argument("--competitors", default="busy,train", help="comma-separated: busy, train")
    args = parser.parse_args(argv)
    from smm.io import versions

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    prepare(out)
    rows = []
    for setting in args.settings.split(","):
        alone = measured_run(out, f"{setting}-alone", args.steps, setting, None)
        print(f"{setting} alone: {alone['tokens_per_s']} tokens/s", flush=True)
        for competitor in args.competitors.split(","):
            beside = measured_run(out, f"{setting}-{competitor}", args.steps, setting, competitor)
            ratio = alone["tokens_per_s"] / beside["tokens_per_s"]
            print(f"{setting} beside {competitor}: {beside['tokens_per_s']} tokens/s, {ratio:.2f}x slower", flush=True)
            rows.append({"setting": setting, "competitor": competitor, "alone": alone["tokens_per_s"], "beside": beside["tokens_per_s"],
                         "ratio": round(ratio, 2), "thread_changes": beside["thread_changes"], "runs": {"alone": alone, "beside": beside}})
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()}, {CORES} cores, {platform.python_version()}", "steps": args.steps,
              "load_before": load_before, "versions": versions(), "rows": rows}
    (out / "contention.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    markdown = render(result)
    (out / "contention.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
