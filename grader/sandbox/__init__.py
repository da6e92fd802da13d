"""Stage 3: run a planned notebook away from the grader and bring back its values.

The only stage that touches student code, and it does so from a distance, through one interface with
two backends:

- `linux`: a warm worker that forks each job into namespaces of its own (`linux`, `confine`): no
  network, a file system holding only what the run needs, no way to see or signal the grader. As root,
  or as an ordinary user where the kernel allows unprivileged user namespaces. 20-25 ms a run.
- `portable`: a fresh interpreter per job, started ahead of time, watched by the grader (`portable`):
  timeout, memory cap and the end of every process it started, on macOS, Windows and any Linux; but
  the notebook runs as the user who runs the grader.

`choose()` picks the best that works here (`--sandbox` / `GRADER_SANDBOX`: auto, linux, portable) and
says in one line what does not hold. Either way results come back as a safetensors file and a JSON
summary, read and checked by `results`: the same report on every backend.

    with Pool() as pool:
        job = pool.worker(key, make).start(plans, labels, timeout)
        job.release()
        captured = job.wait()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (for the type checker only: at run time the names load on first use, below)
    from grader.sandbox.pool import (
        CHOICES,
        DEFAULT_LIMITS,
        FILE_LIMIT,
        MEMORY_LIMIT,
        Backend,
        Job,
        Limits,
        Pool,
        Worker,
        choose,
        warm_start,
    )

__all__ = [  # as `grader.sandbox.pool.__all__`
    "CHOICES",
    "DEFAULT_LIMITS",
    "FILE_LIMIT",
    "MEMORY_LIMIT",
    "Backend",
    "Job",
    "Limits",
    "Pool",
    "Worker",
    "choose",
    "warm_start",
]
_EXPORTS = frozenset(__all__)


def __getattr__(name: str) -> object:
    # lazy: the worker processes import `grader.sandbox.runner`, and must not pay for the grader's side
    if name in _EXPORTS:
        return getattr(importlib.import_module("grader.sandbox.pool"), name)
    raise AttributeError(f"module 'grader.sandbox' has no attribute {name!r}")
