"""Sharing the CPU with other processes: how many threads smm's CPU work should use.

torch and llama.cpp split every operation over all cores, and each split part waits for the
slowest. When another process keeps a core busy, the part on that core runs only in its time
slices, so every operation waits for them: on 2 cores, one competing training made smm's training
steps 8-10x slower where a fair share would be 2x, and llama.cpp's generation fell from 90 to 5
tokens/s (docs/benchmarks.md, ``bench/cpu_contention.py``). Two measures:

- Adapting: measure how many of this process's cores other processes used since the last look
  (``/proc/stat``, less this process's own CPU time) and use the cores that were left (at least
  one). Training does it before each optimizer step (``training.cpu_threads=auto``,
  smm/training/cpu_threads.py), the llama_cpp backend before each answer (``eval.threads=0``).

A number fixes the thread count; so does ``OMP_NUM_THREADS`` set by the user (it wins over
``training.cpu_threads=auto`` and is logged).

How idle OpenMP threads wait (:func:`choose_wait_policy`, before torch loads): with a fixed count of
several threads they sleep (``OMP_WAIT_POLICY=PASSIVE``), because a thread spinning beside a
competitor burns the share the thread it waits for needs (6x slower steps). Adapting threads keep
OpenMP's own policy (spin a moment, then sleep): alone that trains 20 % faster, and beside a
competitor the team shrinks to one thread, which has nobody to wait for (docs/benchmarks.md).
"""
from __future__ import annotations

import os
import sys
import time

from smm.errors import SmmError

INTERVAL_S = 2.0
"""Seconds between two looks at the other processes' CPU use (shorter samples are noisy)."""
WAIT_POLICY = "OMP_WAIT_POLICY"


def choose_wait_policy(training_threads, eval_threads: int) -> str:
    """Set how this process's idle OpenMP threads wait (call before torch loads); says what and why.

    ``training_threads`` is ``training.cpu_threads``, ``eval_threads`` ``eval.threads`` (0 = adapt)."""
    if WAIT_POLICY in os.environ:
        return f"{WAIT_POLICY}={os.environ[WAIT_POLICY]!r} from the environment"
    if "torch" in sys.modules:
        return "OpenMP's own (torch was loaded before smm could choose)"
    fixed, why = fixed_threads(training_threads)
    if (fixed or 0) > 1 or eval_threads > 1:
        os.environ[WAIT_POLICY] = "PASSIVE"
        reason = why if (fixed or 0) > 1 else f"eval.threads={eval_threads}"
        return f"idle threads sleep ({WAIT_POLICY}=PASSIVE): a fixed thread count ({reason}) must not spin beside other work"
    return "OpenMP's own (spin a moment, then sleep): the thread count adapts to other processes"


def wait_policy() -> str:
    """How idle OpenMP threads wait in this process, in words (CPU training logs it)."""
    value = os.environ.get(WAIT_POLICY, "")
    return f"{WAIT_POLICY}={value}" if value else "OpenMP's own (spin a moment, then sleep)"


def usable_cores() -> list[int]:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def fixed_threads(requested) -> tuple[int | None, str]:
    """The thread count ``training.cpu_threads`` fixes (None = adapt) and why."""
    user = os.environ.get("OMP_NUM_THREADS", "").strip()
    if user:
        if not user.isdigit() or int(user) < 1:
            raise SmmError(f"OMP_NUM_THREADS={user!r}: give a whole number of threads >= 1")
        return int(user), f"OMP_NUM_THREADS={user} in the environment"
    if requested in (None, "auto"):
        return None, "auto"
    if isinstance(requested, bool) or not str(requested).isdigit() or int(requested) < 1:
        raise SmmError(f"training.cpu_threads={requested!r}: give auto or a whole number of threads >= 1")
    return int(requested), f"training.cpu_threads={requested}"


def check(requested) -> None:
    """Validate ``training.cpu_threads`` (and OMP_NUM_THREADS) before any work starts."""
    fixed_threads(requested)


class CpuUse:
    """Cores of ``cpus`` that other processes used between two calls of :meth:`others`."""

    def __init__(self, cpus: list[int]):
        self.cpus = {f"cpu{n}" for n in cpus}
        self.ticks_per_s = os.sysconf("SC_CLK_TCK")
        self._last = self._sample()

    def _busy_seconds(self) -> float | None:
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                lines = [line.split() for line in fh if line.startswith("cpu")]
        except OSError:
            return None
        busy = 0
        for fields in lines:
            if fields[0] in self.cpus:
                values = [int(v) for v in fields[1:]]
                busy += sum(values) - values[3] - (values[4] if len(values) > 4 else 0)  # less idle and iowait
        return busy / self.ticks_per_s

    def _sample(self) -> tuple[float, float | None, float]:
        times = os.times()
        return time.monotonic(), self._busy_seconds(), times.user + times.system

    def age(self) -> float:
        """Seconds since the last sample."""
        return time.monotonic() - self._last[0]

    def others(self) -> tuple[float, float | None]:
        """(seconds since the last call, cores other processes used in them; None where unknown)."""
        now = self._sample()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        elapsed = t1 - t0
        if busy0 is None or busy1 is None or elapsed <= 0:
            return elapsed, None
        return elapsed, max(0.0, ((busy1 - busy0) - (own1 - own0)) / elapsed)


def threads_for(cores: int, others: float) -> int:
    """Threads for the cores the others left free: rounded, at least 1, at most ``cores``."""
    return max(1, min(cores, int(cores - others + 0.5)))


class Adapter:
    """The thread count to use now: the cores other processes left free since the last look, looked at
    most every :data:`INTERVAL_S` seconds; None while there is nothing new to say."""

    def __init__(self):
        self.cores = usable_cores()
        self.use = CpuUse(self.cores)

    def threads(self) -> tuple[int, str] | None:
        if self.use.age() < INTERVAL_S:
            return None
        elapsed, others = self.use.others()
        if others is None:
            return None
        return threads_for(len(self.cores), others), f"other processes used {others:.1f} cores over {elapsed:.0f} s"
