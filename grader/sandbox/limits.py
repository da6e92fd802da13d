"""What a run may use, and how much of a container's memory the grader, a worker and each run are given.

Guarantees: every cap a backend applies comes from one `Limits`; where the grader runs under a memory
limit (a container), `fit` lowers the caps and the number of runs at once so that together they stay
under it, and a run that asks for too much meets its own cap first.

Portable: nothing here may use an API that macOS or Windows lacks (`tests/test_portability.py` checks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

MAX_RESULT_BYTES = 64 * 2**20
"""Largest result file read back."""
FILE_LIMIT = 64 * 2**20
"""Largest file a run may write, its captured output included."""
WORKER_START_TIMEOUT = 120.0
"""Seconds a worker may take to import torch and run the setup cells."""
SUPERVISOR_GRACE = 30.0
"""Seconds past a run's timeout to wait for its supervisor's report before giving up on it."""
MEMORY_LIMIT = 2 * 2**30
"""Bytes of memory a run may use (per process under an rlimit, the whole process tree under a watchdog)."""
OUTPUT_TAIL = 2000
"""Characters of the child's own output kept for diagnostics."""


def default_jobs(memory_limit: int | None) -> int:
    """How many submissions a batch grades at once unless told: the cores plus two. While one submission is
    scored in the grader's process and another's run waits on the kernel (joining its cgroup waits for an RCU
    grace period, about 12 ms of wall time and no CPU), the cores stay busy: 120 submissions on 2 cores took
    19.0 s with 4 at once against 20.4 s with 3 (three runs each, `/proc/stat` over the batch).

    Under a `memory_limit` (a container's, `cgroups.memory_limit()`) the cores plus one: there the limit is shared
    among the runs at once (`fit`), and one more would lower every run's cap, and could change a grade."""
    return (os.cpu_count() or 1) + (1 if memory_limit is not None else 2)


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    memory: int
    """Bytes of memory a run may add: per process beyond what it starts with (RLIMIT_DATA and RLIMIT_AS,
    Linux), for its whole process tree together with `tmp_size` (a cgroup, Linux where the grader may
    make one); resident memory of the whole tree (portable, the watchdog)."""
    file_size: int
    """Largest file it may write, its output included (RLIMIT_FSIZE, Linux; the output file, portable)."""
    processes: int
    """Processes and threads it may have at once (RLIMIT_NPROC in a user id or user namespace of its own)."""
    tmp_size: int
    """Size of its private /tmp, its working directory (where a private mount namespace is possible)."""


DEFAULT_LIMITS = Limits(memory=MEMORY_LIMIT, file_size=FILE_LIMIT, processes=64, tmp_size=256 * 2**20)
"""What each run may use unless the caller says otherwise."""

GRADER_MEMORY = 256 * 2**20
"""What the grader's own process is counted for in a container's memory once torch is imported. (Measured:
a whole `grader gradescope run` of the solution, grader, warm worker and run together, peaks at 370 MB of
the container's memory: the worker shares torch's pages with the grader.)"""
WORKER_MEMORY = 256 * 2**20
"""What one warm worker is counted for: torch, the data, the setup cells run."""
MIN_RUN_MEMORY = 64 * 2**20
"""The least a run is given: less and the released notebook cannot run."""


def fit(limits: Limits, jobs: int, container: int | None) -> tuple[Limits, int | None]:
    """`limits`, lowered where runs must share a `container`'s memory limit (bytes; None: no limit) with
    the grader and one warm worker, and how many runs fit at once (None: as many as asked). Up to `jobs`
    runs at once, each with at least `MIN_RUN_MEMORY`: fewer at once rather than less each, so that
    together they never reach the container's limit and a run that asks for too much meets its own cap
    (a `MemoryError`, a report with the reason) before the container's kills something."""
    if container is None:
        return limits, None
    room = max(0, container - GRADER_MEMORY - WORKER_MEMORY)
    at_once = max(1, min(max(1, jobs), room // MIN_RUN_MEMORY))
    per_run = max(MIN_RUN_MEMORY, room // at_once)
    if limits.memory + limits.tmp_size <= per_run:
        return limits, at_once
    tmp_size = min(limits.tmp_size, per_run // 4)  # the private /tmp is memory too
    return replace(limits, memory=per_run - tmp_size, tmp_size=tmp_size), at_once
