"""The sandbox's interface: which backend runs notebooks here (`choose`), and warm workers (`Pool`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from grader.errors import SandboxError, UsageError
from grader.runs import Captured
from grader.sandbox.cgroups import memory_limit
from grader.sandbox.jobs import warm_start
from grader.sandbox.limits import DEFAULT_LIMITS, FILE_LIMIT, MEMORY_LIMIT, Limits, fit

if TYPE_CHECKING:
    from grader.plan import PlannedCell
    from grader.sandbox.linux_start import Started  # (Linux's backend only: imported where it works)


__all__ = [
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
]  # what `grader.sandbox` offers

CHOICES = ("auto", "linux", "portable")
ENVIRONMENT = "GRADER_SANDBOX"
"""The environment variable that chooses the backend where `--sandbox` is not given."""


class Job(Protocol):
    """All runs of one submission, on either backend."""

    def release(self) -> None:
        """Start the runs: from here on the notebook's cells run."""

    def wait(self) -> list[Captured]:
        """What each run brought back (at most the timeout per run)."""


class Worker(Protocol):
    """One warm set-up (assignment and data set) that jobs start from, on either backend."""

    def start(self, plans: list, labels: list[str], timeout: float, cell_timeout: float | None = None) -> Job:
        """A job running `plans` one after another, not yet released."""

    def close(self) -> None:
        """Stop it and everything it started."""


@dataclass(frozen=True)
class Backend:
    """Which backend runs the notebooks here, and what it holds."""

    name: str
    """`linux` or `portable`."""
    mode: str = ""
    """For `linux`: `root` or `userns` (an ordinary user in user namespaces of its own)."""
    warning: str = ""
    """One line on what does not hold on this machine; empty where everything does."""
    requested: str = "auto"
    """What was asked for (`auto`, `linux`, `portable`): what another machine of a cluster must use."""


def portable_warning(reason: str) -> str:
    return (
        f"notebooks run in the portable sandbox ({reason}): the timeout, the memory cap and killing "
        "their processes hold, but not file, network or process isolation: a notebook can read and write "
        "your files (the rubric and solutions included) and use the network"
    )


def choose(requested: str | None = None) -> Backend:
    """The backend to use: `requested` (auto, linux, portable), else `$GRADER_SANDBOX`, else auto.

    Raises `UsageError` for an unknown name, `SandboxError` when `linux` is asked for
    where it cannot work.
    """
    name = requested or os.environ.get(ENVIRONMENT) or "auto"
    if name not in CHOICES:
        source = "--sandbox" if requested else ENVIRONMENT
        raise UsageError(f"{source}: {name!r} is not a sandbox; choose one of {', '.join(CHOICES)}")
    if name == "portable":
        return Backend("portable", warning=portable_warning("as asked"), requested=name)
    from grader.sandbox.linux_check import filter_problem, works_here  # (a backend chosen at run time)

    mode, why = works_here()
    if mode:
        missing = filter_problem()
        warning = f"the Linux sandbox runs without its system-call filter: {missing}" if missing else ""
        return Backend("linux", mode, warning=warning, requested=name)
    if name == "linux":
        raise SandboxError(f"the Linux sandbox cannot work here: {why}")
    return Backend("portable", warning=portable_warning(why), requested=name)


class Pool:
    """Warm workers, one per assignment and data set, shared by every notebook graded while it is open."""

    def __init__(
        self,
        hidden: list[Path] | tuple[Path, ...] = (),
        limits: Limits = DEFAULT_LIMITS,
        backend: Backend | None = None,
        jobs: int = 1,
    ) -> None:
        """`jobs`: how many runs the caller means to have going on at once. Where the grader runs under a
        memory limit (a container), each run's `limits` are lowered to fit and `most_at_once` says how
        many runs fit at once (`limits.fit`); None: no limit."""
        self.hidden = list(hidden)
        self.limits, self.most_at_once = fit(limits, jobs, memory_limit())
        self.backend = backend or choose()
        self.workers: dict[tuple, Worker] = {}
        self.spare: list[Started] = []
        self.lock = threading.Lock()

    def start_ahead(self) -> None:
        """Start a worker process now, before it is known what it will run, for the next new worker to take: its
        `import torch` then overlaps what the caller does meanwhile (`grader check` reading and planning the
        notebook). The Linux backend only; the portable one starts its interpreters once their setup is known.

        At most one is waiting at a time, and none where the pool has a worker already: a pool shared by many
        checks (a test's, a library caller's) would otherwise gather one idle process, with torch, per check."""
        with self.lock:
            if self.backend.name != "linux" or self.workers or self.spare:
                return
        # (a backend chosen at run time: Linux's only where it works; this module, unlike `linux`, is light)
        from grader.sandbox import linux_start

        try:
            self.take(linux_start.Started())
        except SandboxError:  # a head start only: the worker is started when needed, and says so if it cannot
            pass

    def take(self, started: Started) -> None:
        """Use a worker process started ahead elsewhere (a Dask worker's, started as that worker started) for
        the next new worker; closed with the pool if none needs it."""
        with self.lock:
            self.spare.append(started)

    def hide(self, paths: list[Path]) -> None:
        """Also hide `paths` from the runs of workers started from now on (where the backend can hide)."""
        with self.lock:
            self.hidden += [p for p in paths if p not in self.hidden]

    def worker(
        self, key: tuple, make: Callable[[], tuple[tuple[PlannedCell, ...], list[str], dict[str, Path]]]
    ) -> Worker:
        """The worker for `key`, started with `make()` -> (prefix, warm-up sources, data files) if need be."""
        with self.lock:
            if key not in self.workers:
                prefix, warm_up, data_files = make()
                if self.backend.name == "linux":
                    from grader.sandbox import linux  # (a backend chosen at run time: Linux's only where it works)

                    started = self.spare.pop() if self.spare else None
                    self.workers[key] = linux.Worker(
                        prefix, warm_up, data_files, self.hidden, self.limits, self.backend.mode, started
                    )
                else:
                    from grader.sandbox import portable  # (a backend chosen at run time)

                    self.workers[key] = portable.Worker(prefix, warm_up, data_files, self.hidden, self.limits)
            return self.workers[key]

    def close(self) -> None:
        """Stop every worker."""
        with self.lock:
            for worker in self.workers.values():
                worker.close()
            self.workers.clear()
            for started in self.spare:
                started.close()
            self.spare.clear()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
