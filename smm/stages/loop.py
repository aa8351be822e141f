"""stage=loop: feedback → prepare → train → export → evaluate → promote, as one command.

Each run gets ``<loop.runs_dir>/<run-id>/`` with every step's output (``feedback/`` the feedback
files it used, ``data/``, ``adapter/``, ``checkpoints/``, ``gguf/``, ``eval/``) and
``manifest.json`` (status, steps, data hashes, metrics, config without secrets, code revision),
rewritten after every step. The steps are the stages' own ``run(cfg)`` with their paths moved
into the run folder (``export.merged_dir``, an intermediate, stays shared).

* No new data: when the feedback and seed files hash the same as those of the last finished run
  (promoted, refused or rolled back), the loop says so and stops (exit 4; ``loop.force=true``
  runs anyway). Nothing is created.
* Promote: the new model is evaluated on the cases of the deployed run's stored report (re-judged
  by today's checks), or against its GGUF when the report is gone; smm/loop/gate.py decides. A pass
  registers ``<export.model_name>:<run-id>``, moves ``:latest`` to it (or prints the Ollama
  commands) and swaps the ``loop.current`` symlink (exit 0); a refusal touches nothing that is
  deployed and names the blocking checks (exit 3).
* ``loop.warm_start=true`` (smm/loop/warm.py): with a run deployed, the new run trains from its
  adapter on the feedback that is new since it plus a replayed sample of its training data, at
  ``loop.warm_lr_scale`` times the learning rate.
* ``loop.from_step=<step>`` resumes a run, reusing the steps before it; ``loop.dry_run=true``
  prints the plan. A lock file keeps a second loop out (exit 5). The symlink swap is the commit
  point: a loop killed before it leaves the deployed run in place, and the next loop puts
  ``:latest`` back on the deployed run if a promotion was cut short after moving it.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import time
import traceback
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from smm import stages, tasks
from smm.config import LOOP_STEPS, to_plain
from smm.errors import GateRefused, NothingNew, SmmError
from smm.loop import lineage, warm
from smm.loop.gate import contract_note, judge

log = logging.getLogger(__name__)
FEEDBACK_FILES = ("feedback_sft.jsonl", "feedback_dpo.jsonl", "feedback_kto.jsonl")


def run_config(cfg: DictConfig, run_dir: Path, baseline: str | None, deployed: Path | None = None) -> DictConfig:
    """``cfg`` with every step's outputs moved into ``run_dir`` (and, with ``loop.warm_start`` and a
    ``deployed`` run, its data and starting adapter those of a warm start)."""
    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    feedback_dir = Path(cfg.feedback.output_dir)
    c.data.sources = [str(run_dir / "feedback") if Path(s) == feedback_dir else s for s in cfg.data.sources]
    if cfg.loop.warm_start and deployed is not None:
        c.data.sources = [str(run_dir / "feedback"), str(run_dir / warm.REPLAY)]
        c.training.init_adapter = str(deployed / "adapter")
        c.training.learning_rate = cfg.training.learning_rate * cfg.loop.warm_lr_scale
    c.data.output_dir = str(run_dir / "data")
    c.training.output_dir = str(run_dir / "adapter")
    c.training.checkpoint_dir = str(run_dir / "checkpoints")
    c.training.resume = False
    c.export.output_dir = str(run_dir / "gguf")
    c.export.register = False
    c.eval.output_dir = str(run_dir / "eval")
    c.eval.model_path = str(gguf_path(c))
    c.eval.baseline = baseline
    c.eval.gate_min_delta = None
    if cfg.eval.backend == "ollama":
        c.eval.model = f"{cfg.export.model_name}:{run_dir.name}"
    return c


def gguf_path(c: DictConfig) -> Path:
    """The GGUF the export step writes (the export stage's file name)."""
    return Path(c.export.output_dir) / f"{c.export.model_name}-{c.export.quantization}.gguf"


def data_sources(cfg: DictConfig) -> list[str]:
    return [str(s) for s in cfg.data.sources]


def plan(cfg: DictConfig, run_dir: Path, deployed: Path | None) -> list[tuple[str, str, str]]:
    """``(step, inputs, outputs)`` of every step, for the dry run."""
    c = run_config(cfg, run_dir, baseline_for(cfg, deployed, check=False), deployed)
    start = (f"warm start from {c.training.init_adapter} at learning rate {c.training.learning_rate:g}"
             if c.training.init_adapter else "a fresh adapter")
    source = f"PostgreSQL (DATABASE_URL) → {cfg.feedback.output_dir}" if cfg.loop.feedback else f"{cfg.feedback.output_dir} as it is"
    return [
        ("feedback", source, f"{run_dir / 'feedback'} (a snapshot of {', '.join(FEEDBACK_FILES)})"),
        ("prepare", ", ".join(c.data.sources), c.data.output_dir),
        ("train", f"{c.data.output_dir} (method {cfg.training.method}, {start}), base {cfg.model.recipe or cfg.model.base_model}",
         c.training.output_dir),
        ("export", c.training.output_dir, f"{c.export.output_dir} (merged model in {c.export.merged_dir})"),
        ("evaluate", f"the new model ({cfg.eval.backend}); baseline: {c.eval.baseline or 'none (first run)'}",
         c.eval.output_dir),
        ("promote", f"the gate (loop.min_delta {cfg.loop.min_delta}, loop.max_regression {cfg.loop.max_regression}, "
                    f"loop.regression_p {cfg.loop.regression_p})",
         f"{cfg.export.model_name}:{run_dir.name} and :latest in Ollama, {cfg.loop.current} → {run_dir}"),
    ]


def baseline_for(cfg: DictConfig, deployed: Path | None, check: bool = True) -> str | None:
    """What the new model is compared with: the deployed run's stored report, else its GGUF, else
    ``loop.baseline`` (while nothing is deployed)."""
    if deployed is None:
        return cfg.loop.baseline
    manifest = lineage.read_manifest(deployed)
    report = manifest.get("steps", {}).get("evaluate", {}).get("outputs", {}).get("report")
    if report and Path(report).is_file():
        return report
    gguf = manifest.get("steps", {}).get("export", {}).get("outputs", {}).get("gguf")
    if gguf and Path(gguf).is_file():
        log.warning("The deployed run's report %s is gone: evaluating its GGUF %s as the baseline", report, gguf)
        return gguf
    if check:
        raise SmmError(f"the deployed run {deployed} has neither its evaluation report nor its GGUF: "
                       "set loop.baseline or roll back (stage=rollback)")
    return None


# ---- steps -------------------------------------------------------------------------------------

def step_feedback(cfg: DictConfig, c: DictConfig, run_dir: Path) -> dict:
    """Snapshot the feedback files into the run (hard links: the feedback export replaces its
    files by rename, so the run keeps exactly what it trained on); a warm start takes only the
    lines the deployed run did not have, and a replayed sample of its training data."""
    target = run_dir / "feedback"
    target.mkdir(parents=True, exist_ok=True)
    deployed = warm.deployed_run(c)
    copied = {}
    for name in FEEDBACK_FILES:
        source = Path(cfg.feedback.output_dir) / name
        if not source.is_file():
            continue
        (target / name).unlink(missing_ok=True)
        if deployed is not None:
            copied[name] = warm.write_new_lines(source, deployed / "feedback" / name, target / name)
            continue
        try:
            os.link(source, target / name)
        except OSError:
            shutil.copy2(source, target / name)
        with open(target / name, "rb") as fh:
            copied[name] = sum(1 for line in fh if line.strip())
    metrics = {f"{name.split('.')[0]}_lines": n for name, n in copied.items()}
    outputs = {"dir": str(target)}
    if deployed is not None:
        replay = run_dir / warm.REPLAY / warm.REPLAY_FILE
        replay.parent.mkdir(exist_ok=True)
        from smm.stages.prepare import source_files

        others = [s for s in cfg.data.sources if Path(s) != Path(cfg.feedback.output_dir)]
        pool = source_files(others) + [deployed / "feedback" / FEEDBACK_FILES[0]]
        metrics["replayed"] = warm.write_replay(pool, cfg.loop.replay, cfg.data.seed, replay)
        outputs.update(replay=str(replay), warm_start_from=deployed.name)
        log.info("Warm start from run %s: %s new feedback lines, %d replayed training examples", deployed.name,
                 ", ".join(f"{n} {name}" for name, n in copied.items()), metrics["replayed"])
    return {"outputs": outputs, "metrics": metrics}


def _stage_step(name: str, outputs: Callable[[DictConfig], dict]):
    """A step that runs stage ``name`` on the run's config; ``outputs`` names what it wrote."""
    def step(cfg: DictConfig, c: DictConfig, run_dir: Path) -> dict:
        result = float(stages.load(name).run(c))
        return {"outputs": outputs(c), "metrics": {"result": result}}
    return step


def step_evaluate(cfg: DictConfig, c: DictConfig, run_dir: Path) -> dict:
    if cfg.eval.backend == "openai":
        raise SmmError("the loop evaluates each run's new model: use eval.backend=llama_cpp (its GGUF), ollama "
                       "(registered as <name>:<run-id> first) or hf; an OpenAI-compatible server serves one fixed model")
    if cfg.eval.backend == "ollama":
        from smm.export.ollama import register

        register(c.eval.model, run_dir / "gguf" / "Modelfile")
    eval_root = Path(c.eval.output_dir)
    if eval_root.is_dir():  # a resumed evaluate replaces the earlier attempt's report
        shutil.rmtree(eval_root)
    score = float(stages.load("evaluate").run(c))
    (report_dir,) = [p for p in eval_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return {"outputs": {"report": str(report_dir / "report.json"), "html": str(report_dir / "report.html")},
            "metrics": {"score": score}}


STEPS = {
    "feedback": step_feedback,
    "prepare": _stage_step("prepare", lambda c: {"dir": c.data.output_dir}),
    "train": _stage_step("train", lambda c: {"adapter": c.training.output_dir,
                                              "metrics": str(Path(c.training.output_dir) / "metrics.json")}),
    "export": _stage_step("export", lambda c: {"gguf": str(gguf_path(c)),
                                                "modelfile": str(Path(c.export.output_dir) / "Modelfile")}),
    "evaluate": step_evaluate,
}


# ---- promote -----------------------------------------------------------------------------------

def promote(cfg: DictConfig, run_dir: Path, manifest: dict) -> dict:
    """Judge the run; on a pass register it, move ``:latest`` and swap ``loop.current``."""
    import json

    from smm.export.ollama import register, tag

    report = json.loads(Path(manifest["steps"]["evaluate"]["outputs"]["report"]).read_text(encoding="utf-8"))
    verdict = judge(report, cfg.loop.min_delta, cfg.loop.max_regression, cfg.loop.regression_p)
    if manifest.get("deployed_before"):
        deployed_manifest = lineage.read_manifest(Path(cfg.loop.runs_dir) / manifest["deployed_before"])
        note = contract_note(manifest.get("task_contract"), deployed_manifest.get("task_contract"))
        if note:
            log.warning("Gate: %s", note)
            verdict.notes.append(note)
    record = {"outputs": {}, "metrics": {"gate": verdict.as_dict()}}
    if not verdict.passed:
        record["refused"] = True
        return record
    name, run_id = cfg.export.model_name, run_dir.name
    manifest["status"] = "promoting"
    lineage.write_manifest(run_dir, manifest)
    modelfile = Path(manifest["steps"]["export"]["outputs"]["modelfile"])
    deployed = manifest.get("deployed_before")
    ollama = [register(f"{name}:{run_id}", modelfile)]
    try:
        ollama.append(tag(f"{name}:{run_id}", f"{name}:latest"))
        lineage.point_current(Path(cfg.loop.current), run_dir)  # the commit point
    except BaseException:
        if deployed and lineage.current_run(Path(cfg.loop.current)) != run_dir.resolve():
            tag(f"{name}:{deployed}", f"{name}:latest")  # :latest back on the deployed run
        raise
    runs_dir = Path(cfg.loop.runs_dir)
    promoted = [r for r in lineage.history(runs_dir) if r != run_id] + [run_id]
    lineage.save_history(runs_dir, promoted)
    record["outputs"] = {"current": str(cfg.loop.current), "ollama": ollama}
    return record


def recover(cfg: DictConfig) -> None:
    """Finish or undo a promotion that a killed loop cut short (status ``promoting``)."""
    from smm.export.ollama import tag

    runs_dir, current = Path(cfg.loop.runs_dir), lineage.current_run(Path(cfg.loop.current))
    for run_dir, manifest in lineage.loop_runs(runs_dir):
        if manifest.get("status") != "promoting":
            continue
        if current is not None and run_dir.resolve() == current:
            promoted = [r for r in lineage.history(runs_dir) if r != run_dir.name] + [run_dir.name]
            lineage.save_history(runs_dir, promoted)
            manifest["status"] = "promoted"
            log.warning("Completed the promotion of %s that an earlier loop was stopped in", run_dir.name)
        else:
            if current is not None:
                tag(f"{cfg.export.model_name}:{current.name}", f"{cfg.export.model_name}:latest")
            manifest["status"] = "failed"
            manifest.setdefault("steps", {}).setdefault("promote", {})["status"] = "failed"
            manifest["error"] = "promotion interrupted; the deployed run was kept (resume with loop.from_step=promote)"
            log.warning("Undid the interrupted promotion of %s: the deployed run stays %s", run_dir.name,
                        current.name if current else "none")
        lineage.write_manifest(run_dir, manifest)


# ---- the recipe --------------------------------------------------------------------------------

def _resume_target(cfg: DictConfig) -> tuple[Path, dict]:
    runs_dir = Path(cfg.loop.runs_dir)
    if cfg.loop.run_id:
        run_dir = runs_dir / cfg.loop.run_id
        return run_dir, lineage.read_manifest(run_dir)
    unfinished = [(d, m) for d, m in lineage.loop_runs(runs_dir) if m.get("status") not in lineage.FINISHED]
    if not unfinished:
        raise SmmError(f"loop.from_step={cfg.loop.from_step}: no unfinished run in {runs_dir}; name one with loop.run_id")
    return unfinished[-1]


def _check_new_data(cfg: DictConfig, fingerprint: dict) -> None:
    finished = [(d, m) for d, m in lineage.loop_runs(Path(cfg.loop.runs_dir)) if m.get("status") in lineage.FINISHED]
    if not finished or cfg.loop.force:
        return
    last_dir, last = finished[-1]
    if last.get("data") == fingerprint:
        raise NothingNew(f"no new feedback or data since run {last_dir.name} ({last['status']}); "
                         "nothing trained (loop.force=true runs anyway)")


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def check_steps(cfg: DictConfig) -> None:
    """Every step's inputs and outputs, checked before the first step runs (smm.stages.check)."""
    if cfg.loop.feedback:
        stages.check("feedback", cfg)
    runs_dir = Path(cfg.loop.runs_dir)
    c = run_config(cfg, runs_dir / lineage.new_run_id(runs_dir), None)
    for name in ("prepare", "train", "export", "evaluate"):
        stages.check(name, c)


def run(cfg: DictConfig) -> float:
    runs_dir = Path(cfg.loop.runs_dir)
    signal.signal(signal.SIGTERM, _interrupted)  # `systemctl stop`, `kill`: the step is recorded as interrupted
    deployed = lineage.current_run(Path(cfg.loop.current))
    if cfg.loop.dry_run:
        return _dry_run(cfg, deployed)
    check_steps(cfg)
    with lineage.Lock(runs_dir):
        recover(cfg)
        deployed = lineage.current_run(Path(cfg.loop.current))
        if cfg.loop.from_step:
            run_dir, manifest = _resume_target(cfg)
            first = LOOP_STEPS.index(cfg.loop.from_step)
            missing = [s for s in LOOP_STEPS[:first] if manifest.get("steps", {}).get(s, {}).get("status") != "done"]
            if missing:
                raise SmmError(f"loop.from_step={cfg.loop.from_step}: run {run_dir.name} has not finished {', '.join(missing)}; "
                               f"resume from loop.from_step={missing[0]}")
            log.info("Resuming run %s from %s", run_dir.name, cfg.loop.from_step)
        else:
            if cfg.loop.feedback:
                stages.load("feedback").run(cfg)
            _check_new_data(cfg, lineage.data_fingerprint(data_sources(cfg)))
            run_dir = runs_dir / lineage.new_run_id(runs_dir)
            run_dir.mkdir(parents=True)
            manifest = {"kind": "loop", "run_id": run_dir.name, "created_at": lineage.now(), "steps": {}}
            first = 0
        manifest.update(status="running", error=None, code=lineage.code_revision(),
                        deployed_before=deployed.name if deployed else None, task_contract=tasks.current().contract_hash)
        c = run_config(cfg, run_dir, baseline_for(cfg, deployed), deployed)
        manifest["config"] = to_plain(c)
        lineage.write_manifest(run_dir, manifest)
        return _run_steps(cfg, c, run_dir, manifest, first)


def _run_steps(cfg: DictConfig, c: DictConfig, run_dir: Path, manifest: dict, first: int) -> float:
    for number, name in enumerate(LOOP_STEPS, start=1):
        if number <= first:
            log.info("[%d/%d] %s: reused from this run", number, len(LOOP_STEPS), name)
            continue
        log.info("[%d/%d] %s", number, len(LOOP_STEPS), name)
        record = {"status": "running", "started_at": lineage.now()}
        manifest["steps"][name] = record
        lineage.write_manifest(run_dir, manifest)
        started = time.perf_counter()
        try:
            result = promote(cfg, run_dir, manifest) if name == "promote" else STEPS[name](cfg, c, run_dir)
        except BaseException as exc:
            record.update(status="failed", seconds=round(time.perf_counter() - started, 1))
            manifest.update(status="failed", error=f"{name}: {_describe(exc)}")
            lineage.write_manifest(run_dir, manifest)
            if isinstance(exc, SmmError):
                raise SmmError(f"loop step {name} failed: {exc} (run {run_dir.name}; fix it and resume with "
                               f"loop.from_step={name})") from None
            raise
        record.update(status="done", seconds=round(time.perf_counter() - started, 1), **result)
        if name == "feedback":
            manifest["data"] = lineage.data_fingerprint(data_sources(cfg))
        lineage.write_manifest(run_dir, manifest)
    gate = manifest["steps"]["promote"]["metrics"]["gate"]
    if manifest["steps"]["promote"].pop("refused", False):
        manifest["status"] = "refused"
        lineage.write_manifest(run_dir, manifest)
        deployed = manifest.get("deployed_before") or "none"
        raise GateRefused(f"run {run_dir.name} not promoted, the deployed run ({deployed}) stays: " + "; ".join(gate["reasons"] + gate["notes"]))
    manifest["status"] = "promoted"
    lineage.write_manifest(run_dir, manifest)
    score = gate["score"]
    versus = f" (deployed was {gate['baseline_score']:.3f}, delta {gate['delta']:+.3f})" if gate["delta"] is not None else ""
    notes = "".join(f" (note: {note})" for note in gate["notes"])
    print(f"promoted: run {run_dir.name}, score {score:.3f}{versus}; {cfg.loop.current} → {run_dir}{notes}")
    return float(score)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SmmError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return "".join(traceback.format_exception_only(exc)).strip()


def _dry_run(cfg: DictConfig, deployed: Path | None) -> float:
    runs_dir = Path(cfg.loop.runs_dir)
    if cfg.loop.from_step:
        run_dir, _ = _resume_target(cfg)
    else:
        run_dir = runs_dir / lineage.new_run_id(runs_dir)
    first = LOOP_STEPS.index(cfg.loop.from_step) if cfg.loop.from_step else 0
    print(f"Loop plan (dry run, nothing is done): run {run_dir.name}, deployed: {deployed.name if deployed else 'none'}")
    for number, (name, inputs, outputs) in enumerate(plan(cfg, run_dir, deployed), start=1):
        reused = " (reused)" if number <= first else ""
        print(f"[{number}/{len(LOOP_STEPS)}] {name}{reused}\n    in:  {inputs}\n    out: {outputs}")
    return 0.0
