"""Sharing the CPU: a sweep must not collapse when something else wants a core.

torch's OpenMP threads meet at a barrier after every parallel region. With the default wait policy a
thread that arrives first spins, so on a machine where another process (or the sweep's own MLflow worker)
preempts one of them, the others burn their cores waiting for it: measured 5-7x slower on 2 cores with
one busy neighbour, where a fair share costs ~1.5x. So:

- ``before_torch()``: ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep) unless the user set it. OpenMP
  reads it when torch loads, so it is called before the first ``import torch`` (``tracker.engine.core``).
- ``lower_thread_priority(n)``: the sweep's writing threads yield a core to generation (nice is per
  thread on Linux).
- ``background_process()``: the MLflow worker process runs only on otherwise idle CPU time
  (``SCHED_IDLE`` on Linux, else the lowest nice), so it never preempts generation.
"""

from __future__ import annotations

import os
import threading


def before_torch() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux; elsewhere the whole process, or nothing)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
    except (OSError, AttributeError):
        pass


def background_process() -> None:
    """Make the calling process (and the threads it starts later) run only when a core is otherwise idle."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (OSError, AttributeError):
        pass
    try:
        os.nice(19 - os.nice(0))
    except (OSError, AttributeError):
        pass
