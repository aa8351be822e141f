"""training.cpu_threads: the CPU threads of training follow what other processes leave free."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from smm import cpu_share
from smm.cpu_share import CpuUse, fixed_threads, threads_for
from smm.errors import SmmError
from smm.training import cpu_threads

CORES = cpu_share.usable_cores()


@pytest.mark.parametrize("cores,others,expected", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 1.9, 1), (2, 3.0, 1), (4, 1.0, 3), (4, 0.2, 4), (1, 0.0, 1),
])
def test_threads_are_the_cores_the_others_leave(cores, others, expected):
    assert threads_for(cores, others) == expected


def test_a_number_or_omp_num_threads_fixes_the_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert fixed_threads("auto") == (None, "auto")
    assert fixed_threads(3) == (3, "training.cpu_threads=3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert fixed_threads("auto") == (1, "OMP_NUM_THREADS=1 in the environment")
    assert fixed_threads(3)[0] == 1  # the user's environment wins


@pytest.mark.parametrize("value", [0, -1, "x", True, 1.5])
def test_bad_counts_are_refused(monkeypatch, value):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with pytest.raises(SmmError, match="training.cpu_threads"):
        fixed_threads(value)


@pytest.mark.parametrize(("training", "evaluation", "omp_threads", "policy"), [
    ("auto", 0, None, None),        # adapting threads keep OpenMP's own wait
    ("auto", 1, None, None),        # one generation thread has nobody to wait for
    (1, 0, None, None),
    (2, 0, None, "PASSIVE"),        # a fixed team must not spin beside other work
    ("auto", 2, None, "PASSIVE"),
    ("auto", 0, "2", "PASSIVE"),    # OMP_NUM_THREADS fixes the team too
])
def test_idle_openmp_threads_sleep_only_where_the_thread_count_is_fixed(monkeypatch, training, evaluation, omp_threads, policy):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    if omp_threads:
        monkeypatch.setenv("OMP_NUM_THREADS", omp_threads)
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    said = cpu_share.choose_wait_policy(training, evaluation)
    assert os.environ.get("OMP_WAIT_POLICY") == policy
    assert ("PASSIVE" in said) == (policy == "PASSIVE")


def test_the_wait_policy_in_effect_is_said_in_words(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cpu_share.wait_policy() == "OpenMP's own (spin a moment, then sleep)"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert cpu_share.wait_policy() == "OMP_WAIT_POLICY=PASSIVE"


def test_the_users_wait_policy_wins_and_a_loaded_torch_is_reported(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "'ACTIVE' from the environment" in cpu_share.choose_wait_policy(4, 0)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setitem(sys.modules, "torch", object())
    assert "torch was loaded" in cpu_share.choose_wait_policy(4, 0)
    assert "OMP_WAIT_POLICY" not in os.environ


def _busy(cpus: list[int]) -> list[subprocess.Popen]:
    """One busy-looping process on each of ``cpus``."""
    code = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"
    return [subprocess.Popen([sys.executable, "-c", code, str(cpu)]) for cpu in cpus]


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_other_processes_cpu_use_is_measured_and_our_own_is_not():
    use = CpuUse(CORES)
    busy_before, own_before, started = use._busy_seconds(), sum(os.times()[:2]), time.monotonic()
    _spin(1.0)  # this process's own work
    elapsed = time.monotonic() - started
    busy, own = (use._busy_seconds() - busy_before) / elapsed, (sum(os.times()[:2]) - own_before) / elapsed
    _, others = use.others()
    assert own > 0.3 and others is not None and abs(others - (busy - own)) < 0.2  # our own CPU time is left out
    rivals = _busy(CORES[:1])
    try:
        time.sleep(1.5)
        _, others = use.others()
    finally:
        for rival in rivals:
            rival.kill()
            rival.wait()
    assert others > 0.6


@pytest.mark.skipif(len(CORES) < 2, reason="adapting needs at least 2 cores to give some away")
def test_auto_gives_cores_away_to_a_competitor(monkeypatch, caplog):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_share, "INTERVAL_S", 0.0)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="smm.training.cpu_threads"):
            callback = cpu_threads.make_callback("auto")
            callback.on_train_begin(None, None, None)
            assert torch.get_num_threads() == len(CORES)
            rivals = _busy(CORES)
            try:
                time.sleep(1.5)
                callback.on_step_begin(None, None, None)
                crowded = torch.get_num_threads()
            finally:
                for rival in rivals:
                    rival.kill()
                    rival.wait()
    finally:
        torch.set_num_threads(before)
    assert crowded < len(CORES)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"CPU threads: {crowded} of {len(CORES)} cores (other processes used" in m for m in messages)


def test_auto_follows_what_the_others_use_and_logs_each_change(monkeypatch, caplog):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cpu_share, "usable_cores", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(cpu_share, "INTERVAL_S", 0.0)
    seen = iter([2.6, 2.4, 0.1, 0.2])
    monkeypatch.setattr(CpuUse, "others", lambda self: (2.0, next(seen)))
    before = torch.get_num_threads()
    threads = []
    try:
        with caplog.at_level(logging.INFO, logger="smm.training.cpu_threads"):
            callback = cpu_threads.make_callback("auto")
            callback.on_train_begin(None, None, None)
            threads.append(torch.get_num_threads())
            for _ in range(4):
                callback.on_step_begin(None, None, None)
                threads.append(torch.get_num_threads())
    finally:
        torch.set_num_threads(before)
    assert threads == [4, 1, 2, 4, 4]
    assert [r.getMessage() for r in caplog.records] == [
        "OpenMP wait policy: OpenMP's own (spin a moment, then sleep)",
        "CPU threads: 4 of 4 cores (auto: adapts to other processes' CPU use)",
        "CPU threads: 1 of 4 cores (other processes used 2.6 cores over 2 s)",
        "CPU threads: 2 of 4 cores (other processes used 2.4 cores over 2 s)",
        "CPU threads: 4 of 4 cores (other processes used 0.1 cores over 2 s)",
    ]


def test_a_fixed_count_is_set_and_logged(monkeypatch, caplog):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="smm.training.cpu_threads"):
            callback = cpu_threads.make_callback(1)
            callback.on_train_begin(None, None, None)
            callback.on_step_begin(None, None, None)
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert [r.getMessage() for r in caplog.records] == ["OpenMP wait policy: OMP_WAIT_POLICY=PASSIVE",
                                                         f"CPU threads: 1 of {len(CORES)} cores (training.cpu_threads=1)"]
