"""What both sandbox backends share on the grader's side: limits, the child's environment, which
folders a run needs and which it must not see, and where a run can start from the worker's state.

Portable: nothing here may use an API that macOS or Windows lacks (`tests/test_portability.py` checks).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the worker imports this module too, and must not pay for nbformat's import (a second)
    from grader.plan import Plan, PlannedCell

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


def child_env(workdir: Path, own_path: bool = False) -> dict[str, str]:
    """The whole environment of a worker process: nothing of the grader's own but what Python needs.

    `own_path`: keep the caller's PYTHONPATH after the grader's (the portable backend, which hides
    nothing anyway). The Linux backend does not: each folder on it would be in every run's view.
    """
    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    # so that a source checkout works like an installed package
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep) if own_path else []
    path = os.pathsep.join([package_parent, *filter(None, inherited)])
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONPATH": path,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",  # Windows' console code page cannot print every notebook's output
        "ATEN_CPU_CAPABILITY": "default",  # same kernels as the reference: `exact` means the same
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",  # plots render off screen
    }
    # Windows cannot start Python without these; OpenBLAS's tuning where the machine needs it
    for passthrough in ("SYSTEMROOT", "SystemRoot", "WINDIR", "TEMP", "TMP", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    return env


def worker_folder(data_files: dict[str, Path]) -> Path:
    """A new folder for a worker, holding its copy of each data file under the name the cells read."""
    folder = Path(tempfile.mkdtemp(prefix="grader-worker-"))
    for name, source in data_files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)  # `data/names.txt`
        shutil.copyfile(source, folder / name)
    return folder


def plain(cells: tuple[PlannedCell, ...] | list[PlannedCell]) -> list[dict]:
    """Planned cells as the worker reads them (JSON)."""
    return [{"source": c.source, "no_grad": c.no_grad, "guarded": c.guarded} for c in cells]


def needed() -> list[Path]:
    """Folders a run must still be able to read: Python, its packages and the grader itself.

    Each as given and as resolved: a module imported through a symlinked path must be found there too.
    """
    roots: list[str | Path] = [sys.prefix, sys.base_prefix, *sys.path, Path(__file__).parent.parent]
    given = [Path(os.path.abspath(p)) for p in roots if p]
    return list(dict.fromkeys([*given, *(p.resolve() for p in given)]))


def hideable(paths: list[Path]) -> list[str]:
    """The folders and files of `paths` that exist and hold nothing a run needs, outermost first."""
    keep = needed()
    out: list[Path] = []
    for path in sorted({Path(p).resolve() for p in paths}, key=lambda p: len(p.parts)):
        if not path.exists() or path == Path(path.anchor) or any(n == path or path in n.parents for n in keep):
            continue
        if not any(o in path.parents for o in out if o.is_dir()):  # already hidden with its folder
            out.append(path)
    return [str(p) for p in out]


def warm_start(plan: Plan, prefix: tuple[PlannedCell, ...]) -> tuple[int, list[int]]:
    """Where a run of `plan` can start from the worker's state: (first position to run, parameter cells to re-run).

    Only where the plan begins with exactly the worker's cells (the released parameters cell and the
    setup cells, byte for byte); the injected parameters may differ, and are then run again.
    """
    from grader.plan import PARAMS

    if len(plan.cells) < len(prefix):
        return 0, []
    preamble = []
    for i, (ours, theirs) in enumerate(zip(plan.cells, prefix)):
        if ours.grade_id == theirs.grade_id == PARAMS:
            if ours.source != theirs.source:
                preamble.append(i)
        elif (ours.source, ours.no_grad, ours.guarded) != (theirs.source, theirs.no_grad, theirs.guarded):
            return 0, []
    return len(prefix), preamble
