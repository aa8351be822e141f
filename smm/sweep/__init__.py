"""Hyper-parameter sweeps: Optuna studies in SQLite or PostgreSQL, shared by many workers.

* :mod:`smm.sweep.job_outputs` — every job of a multirun writes under its own folder;
* :mod:`smm.sweep.storage` — where a study lives (SQLite by default), opened with heartbeats and retries;
* :mod:`smm.sweep.sampler` — TPE seeded per trial, so reruns and workers never repeat a draw;
* :mod:`smm.sweep.sweeper` — the ask/launch/tell loop behind ``hydra/sweeper=smm_optuna``;
* :mod:`smm.sweep.summary` — ``summary.md`` and ``summary.html`` with Optuna's plots.
"""
