"""The sweep loop behind ``hydra/sweeper=smm_optuna`` (what ``hparams_search=optuna`` selects).

It reuses hydra-optuna-sweeper's search-space parsing and trial set-up and replaces its loop with
one that a long sweep can rely on:

* the study is stored (:mod:`smm.sweep.storage`) and continued: a sweep adds ``n_trials`` trials;
  a worker started while trials of the study are still to run joins that sweep instead, so for
  N workers ``n_trials`` is the total;
* every trial runs as the job ``sweep.trial=<number>`` (its folder under ``hydra.sweep.dir``)
  with heartbeats; a trial whose worker died is failed and queued once more, and a worker with
  nothing left to start waits for the other workers' trials (one of them may need that retry);
* a failed, diverged (NaN) or out-of-memory trial is recorded with its reason; the sweep stops
  only when more than ``max_failure_rate`` of a batch fails;
* ``summary.md`` and ``summary.html`` are written into the sweep folder at the end.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shlex
import threading
import time
from pathlib import Path

from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf

from smm.errors import SmmError
from smm.secrets import mask_command_line, mask_url, redact
from smm.sweep.storage import open_storage, storage_url
from smm.sweep.summary import write_summary

log = logging.getLogger(__name__)

TARGET_ATTR = "smm_target_trials"  # study attribute: the trial count the current sweep runs up to


def eval_score_stages(eval_backend: str) -> tuple[str, ...]:
    """A trial's stages under ``sweep.objective=eval_score``: train, export and evaluate the GGUF, or
    with ``eval.backend=hf`` train and evaluate the adapter directly (no GGUF needed, e.g. on a GPU box)."""
    stages = "train,evaluate" if eval_backend == "hf" else "train,export,evaluate"
    return ("stage=pipeline", f"pipeline.stages=[{stages}]")


def slots_used(trials) -> int:
    """Trials that count towards ``n_trials``: every trial except the retries of failed ones."""
    return sum(1 for t in trials if "failed_trial" not in t.system_attrs)


def replay_command(ret) -> str:
    """``python run.py …`` that trains this job's configuration again (secrets masked)."""
    skip = {"hparams_search", "sweep.trial", "stage"}
    kept = [o for o in ret.overrides if o.split("=", 1)[0].lstrip("+~") not in skip]
    args = mask_command_line([f"stage={ret.cfg.stage}", *kept])
    return "python run.py " + " ".join(shlex.quote(a) for a in args)


class StudySweeper(OptunaSweeperImpl):
    """hydra-optuna-sweeper's sweeper with a stored, shared, resumable study (see the module doc)."""

    def __init__(self, heartbeat_interval: int | None, grace_period: int | None, max_retry: int, **options) -> None:
        super().__init__(**options)
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        self._process_searchspace_config()
        if isinstance(self.sampler, functools.partial):
            raise SmmError("hydra/sweeper/sampler=grid: run a grid as a plain multirun instead, e.g. -m lora.rank=8,16")
        distributions, fixed = create_params_from_overrides(self._parse_sweeper_params_config() + list(arguments))
        distributions = {**(self.search_space_distributions or {}), **distributions}
        for name in fixed:
            distributions.pop(name, None)

        objective = self.config.sweep.objective
        self.url = storage_url(self.storage, os.environ, str(Path(self.sweep_dir).parent), self.study_name)
        self.rdb = open_storage(self.url, self.heartbeat_interval, self.grace_period, self.max_retry)
        direction = "maximize" if objective == "eval_score" else "minimize"
        study = optuna.create_study(study_name=self.study_name, storage=self.rdb, sampler=self.sampler,
                                    direction=direction, load_if_exists=True)
        if study.direction.name.lower() != direction:
            raise SmmError(f"study {self.study_name} was made to {study.direction.name.lower()}, sweep.objective={objective} "
                           f"needs {direction}: name a new study (study=...)")
        self.study_id = self.rdb.get_study_id_from_name(self.study_name)
        self.rdb.set_study_user_attr(self.study_id, "smm_objective", objective)
        target = self._claim(self.n_trials)
        log.info("Study %s in %s: the sweep runs up to %d trials (%s, %s)", self.study_name, mask_url(self.url),
                 target, objective, direction)
        extra = eval_score_stages(self.config.eval.backend) if objective == "eval_score" else ()
        batch = []
        try:
            while batch := self._next_batch(study, target):
                for trial in batch:
                    if trial.user_attrs.get("fail_reason"):  # a retry carries the failed trial's attributes
                        trial.set_user_attr("fail_reason", None)
                overrides = self._configure_trials(batch, distributions, fixed)
                overrides = [(*o, f"sweep.trial={t.number}", *extra) for t, o in zip(batch, overrides)]
                with self._heartbeats(batch):
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                self.job_idx += len(returns)
                failures = [reason for t, ret in zip(batch, returns) if (reason := self._record(study, t, ret))]
                batch = []
                if len(failures) / len(returns) > self.max_failure_rate:
                    raise SmmError(f"{failures[0]} (more than hydra.sweeper.max_failure_rate="
                                   f"{self.max_failure_rate} of a batch of trials failed)")
        except KeyboardInterrupt:
            self._interrupted(study, batch)
            raise
        finally:
            self._summarise()
        self._save_best()

    def _trials(self):
        return self.rdb.get_all_trials(self.study_id, deepcopy=False)

    def _claim(self, n_trials: int) -> int:
        """The trial count this sweep runs up to: the current sweep's, or a new one of ``n_trials`` more."""
        from optuna.trial import TrialState

        trials = self._trials()
        used, target = slots_used(trials), self.rdb.get_study_user_attrs(self.study_id).get(TARGET_ATTR)
        busy = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        if target is None or (used >= target and not busy):
            target = used + n_trials
            self.rdb.set_study_user_attr(self.study_id, TARGET_ATTR, target)
        return target

    def _next_batch(self, study, target: int) -> list:
        """Up to ``n_jobs`` trials to run now: queued retries first, then new ones while slots are free."""
        from optuna.trial import TrialState

        waited = False
        while True:
            self._fail_stale(study)
            trials = self._trials()
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            free = max(0, target - slots_used(trials)) + waiting
            if free:
                return [study.ask() for _ in range(min(self.n_jobs, free))]
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if not running or not self.heartbeat_interval:
                return []
            if not waited:
                log.info("Waiting for %d trial(s) of other workers (one may need a retry)", running)
                waited = True
            time.sleep(self.heartbeat_interval)

    def _fail_stale(self, study) -> None:
        """Fail the running trials whose worker stopped sending heartbeats, and queue their retries."""
        if not self.heartbeat_interval:
            return
        for trial_id in self.rdb.fail_stale_trials(self.study_id):
            trial = self.rdb.get_trial(trial_id)
            log.warning("Trial %d failed: its worker stopped sending heartbeats", trial.number)
            self.rdb.get_failed_trial_callback()(study, trial)

    @contextlib.contextmanager
    def _heartbeats(self, trials):
        if not self.heartbeat_interval:
            yield
            return
        ids = [self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, t.number) for t in trials]
        stop = threading.Event()

        def beat() -> None:
            while True:
                for trial_id in ids:
                    self.rdb.record_heartbeat(trial_id)
                if stop.wait(self.heartbeat_interval):
                    return

        thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _record(self, study, trial, ret) -> str | None:
        """Tell Optuna the job's result; returns why it failed (None when it completed)."""
        from optuna.trial import TrialState

        reason = None
        try:
            value = float(ret.return_value)  # re-raises the job's exception
            if not math.isfinite(value):
                reason = f"diverged: the objective is {value}"
        except SmmError as exc:
            reason = str(exc)
        except Exception as exc:  # a crash of the trial (out of memory, a bug): recorded, the sweep goes on
            log.warning("Trial %d crashed", trial.number, exc_info=exc)
            reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        attrs = {
            "job_dir": ret.hydra_cfg.hydra.runtime.output_dir,
            "adapter_dir": OmegaConf.select(ret.cfg, "training.output_dir"),
            "command": replay_command(ret),
        }
        if reason:
            attrs["fail_reason"] = reason = redact(reason, self.url)
            log.warning("Trial %d failed: %s", trial.number, reason)
        try:
            for key, value_ in attrs.items():
                trial.set_user_attr(key, value_)
            study.tell(trial, None if reason else value, state=TrialState.FAIL if reason else TrialState.COMPLETE)
        except RuntimeError as exc:  # failed meanwhile by another worker (missed heartbeats)
            log.warning("Trial %d: %s", trial.number, exc)
        return reason

    def _interrupted(self, study, trials) -> None:
        """Ctrl-C: the trials of the batch are failed and queued again for the next run."""
        from optuna.trial import TrialState

        for trial in trials:
            with contextlib.suppress(RuntimeError):
                trial.set_user_attr("fail_reason", "interrupted")
                study.tell(trial, state=TrialState.FAIL)
                callback = self.rdb.get_failed_trial_callback()
                if callback:
                    callback(study, self.rdb.get_trial(self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)))

    def _summarise(self) -> None:
        try:
            path = write_summary(self.rdb, self.study_name, Path(self.sweep_dir), self.url)
            log.info("Summary: %s", path)
        except Exception as exc:  # a summary that cannot be drawn must not hide the sweep's own outcome
            log.warning("No summary written: %s", exc, exc_info=exc)

    def _save_best(self) -> None:
        import optuna

        study = optuna.load_study(study_name=self.study_name, storage=self.rdb)
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            raise SmmError(f"no trial of study {self.study_name} completed; see {Path(self.sweep_dir) / 'summary.md'}")
        best = study.best_trial
        log.info("Best trial %d: %s = %s, adapter %s", best.number, self.config.sweep.objective, best.value,
                 best.user_attrs.get("adapter_dir"))
        OmegaConf.save(OmegaConf.create({
            "name": "optuna", "best_trial": best.number, "best_params": best.params, "best_value": best.value,
            "best_adapter": best.user_attrs.get("adapter_dir"),
        }), Path(self.sweep_dir) / "optimization_results.yaml")
