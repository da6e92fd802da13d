"""Batch grading on a Dask cluster: the local pool's per-submission task, run by Dask workers.

grader (the Dask client) -> one `Task` per submission: its bytes, its student id, the digest of the
assignment's rubric and released notebook, the limits -> a Dask worker grades it exactly as the local
pool does (`one_submission.grade_one`), in a warm pool that its process keeps between tasks (torch imported
once, the setup cells run once, the reference caches filled) -> (report, feedback page) come back
-> `batch.grade_all` writes them as it writes a local run's.

Nothing relies on a shared filesystem: the notebook travels with the task and the worker writes it to
a scratch folder of its own, hidden from every run. Workers need this package (the same version: the
task carries the rubric's digest and a worker with another copy refuses it) and its dependencies.
A worker that dies mid-task loses nothing: Dask gives its tasks to another worker, and a task that
raised is tried once more (`retries=1`).

Only `batch.grade_all(..., scheduler=...)` imports this module; a local batch never imports Dask.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grader import assignment as assignments
from grader import one_submission, sandbox
from grader.assignment import Assignment
from grader.course import check_name, locate_dir
from grader.errors import GraderError, RubricError, UsageError
from grader.grade import start_workers
from grader.submissions import Submission

if TYPE_CHECKING:
    from dask.distributed import Client, LocalCluster

    from grader.sandbox.linux_start import Started  # (Linux's backend only: imported where it works)


@dataclass(frozen=True)
class Task:
    """What a Dask worker needs to grade one submission."""

    student: str
    """The student's id."""
    notebook: str
    """The notebook's path as the grader found it (what the report names, whatever the worker's copy is called)."""
    content: bytes
    """The notebook file's bytes."""
    digest: str
    """sha256 of `content`."""
    assignment: str
    """The assignment to grade it as."""
    assignment_digest: str
    """The digest of the grader's copy of the assignment (`Assignment.digest`: its rubric, released notebook,
    solution where read, data): a worker with another copy refuses the task."""
    timeout: float | None
    """Wall-clock limit per run, or the rubric's."""
    limits: dict
    """`sandbox.Limits` as a dict."""
    hidden: tuple[str, ...] = ()
    """Paths on the grader's machine that no run may read (the output folder, every submission): hidden
    on a worker where they exist, which is when the worker runs on the grader's machine."""
    sandbox: str = "auto"
    """The sandbox the worker must run it in (`--sandbox`): a worker where `linux` cannot work refuses."""
    hidden_runs: tuple[dict[str, object], ...] | None = None
    """The hidden re-runs' parameters (`--hidden-runs`); None for the rubric's."""
    carried: tuple[tuple[str, bytes], ...] = ()
    """An assignment the workers' package does not ship (a course's): its folder's files, relative path ->
    bytes (`assignment.folder_files`), since no file system is shared; empty for a shipped one."""


# --- on the worker -------------------------------------------------------------------------------

LOCAL_THREADS = 2
"""Tasks a worker of `--scheduler local:N` grades at once. A task alternates between the grader's own work (its
references, the scoring) and waiting for its sandbox run: two at a time keep a worker's core busy, as the local
pool's `--jobs` above the number of cores does. (Measured, 120 submissions on two workers: 36.5 s with one
thread each, 34.0 s with two.)"""

_POOLS: dict[tuple, tuple[sandbox.Pool, Path, threading.BoundedSemaphore]] = {}
_POOLS_LOCK = threading.Lock()
KEPT_POOLS = 2
"""Warm pools a worker process keeps (one per batch it grades; the oldest is closed past this)."""


def _pool(
    limits: sandbox.Limits, hidden: tuple[str, ...], backend: str = "auto"
) -> tuple[sandbox.Pool, Path, threading.BoundedSemaphore]:
    """This worker process's warm pool for a batch's `limits` and hidden paths, the scratch folder its tasks'
    notebooks go in (hidden too), and how many of its tasks may grade at once: as many as the worker has threads,
    or fewer where the memory the grader runs under holds fewer runs (`Pool.most_at_once`). Kept for the life of
    the process: later tasks of the batch find torch imported and the setup run."""
    key = (tuple(sorted(asdict(limits).items())), hidden, backend)
    with _POOLS_LOCK:
        if key not in _POOLS:
            while len(_POOLS) >= KEPT_POOLS:  # an earlier batch's: its torch and setup no longer needed
                old, old_scratch, _ = _POOLS.pop(next(iter(_POOLS)))
                old.close()
                shutil.rmtree(old_scratch, ignore_errors=True)
            scratch = Path(tempfile.mkdtemp(prefix="grader-dask-"))
            threads = _threads()
            pool = sandbox.Pool([scratch, *map(Path, hidden)], limits, sandbox.choose(backend), jobs=threads)
            _hand_over_spare(pool)
            _POOLS[key] = (pool, scratch, threading.BoundedSemaphore(min(threads, pool.most_at_once or threads)))
        _POOLS[key] = _POOLS.pop(key)  # the most recently used last
        return _POOLS[key]


def close_pools() -> None:
    """Close this process's warm pools and remove their scratch folders. A Dask worker keeps them for life; a
    process that ran tasks itself (a test) closes them when done."""
    with _POOLS_LOCK:
        for pool, scratch, _ in _POOLS.values():
            pool.close()
            shutil.rmtree(scratch, ignore_errors=True)
        _POOLS.clear()
        while _SPARE:
            _SPARE.pop().close()


def _threads() -> int:
    """How many tasks this Dask worker runs at once (its `--nthreads`; 1 outside a worker)."""
    from dask.distributed import get_worker  # (Dask: an optional extra, there on every worker)

    try:
        return max(1, int(get_worker().state.nthreads))
    except (ValueError, AttributeError):  # not in a worker (a test calling a task itself)
        return 1


_CARRIED: dict[str, Assignment] = {}
_CARRIED_LOCK = threading.Lock()


def _assignment(task: Task) -> Assignment:
    """The task's assignment: the worker's shipped one, or the folder the task carries, written once per digest
    to a scratch folder of this process (hidden from runs like every rubric's folder)."""
    if not task.carried:
        return assignments.load(task.assignment)
    with _CARRIED_LOCK:
        if task.assignment_digest not in _CARRIED:
            folder = Path(tempfile.mkdtemp(prefix="grader-dask-assignment-")) / check_name(task.assignment)
            for relative, content in task.carried:
                target = (folder / relative).resolve()
                if folder.resolve() not in target.parents:  # (the grader's own task: a bug if it points out)
                    raise RubricError(f"the task carries a file outside its assignment folder: {relative!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            _CARRIED[task.assignment_digest] = assignments.load_at(locate_dir(folder))
        return _CARRIED[task.assignment_digest]


_SPARE: list[Started] = []  # (from `dask_setup`)


def _hand_over_spare(pool: sandbox.Pool) -> None:
    """Give `pool` the sandbox worker process `dask_setup` started, where it is of the pool's backend (else end it)."""
    while _SPARE:
        started = _SPARE.pop()
        if pool.backend.name == "linux":
            pool.take(started)
        else:
            started.close()


def dask_setup(worker: object) -> None:
    """Dask's preload hook, run as a worker process starts (`dask worker --preload grader.integrations.cluster`;
    `--scheduler local:N` asks for it itself): import what every task needs, torch, the references and the
    scoring (about two seconds), while the cluster starts rather than in each worker's first task. Where the
    Linux sandbox works here, the sandbox's worker process for the first batch starts too (`linux_start.Started`,
    handed to the batch's pool by `_pool`): its own `import torch` overlaps this one, and the first task sends it
    its setup. A head start only: where it cannot start, the first task starts one as usual."""
    try:
        linux = sandbox.choose(None).name == "linux"
    except GraderError:  # (no sandbox works here: the first task says so)
        linux = False
    if linux:
        from grader.sandbox import linux_start  # (Linux's backend only, and light: see `sandbox.Pool.start_ahead`)

        with contextlib.suppress(GraderError):
            _SPARE.append(linux_start.Started())
    import safetensors.torch  # noqa: F401 -- imported for its side effect (a warm worker), as _in_pool does
    import torch  # noqa: F401 -- the same

    from grader import reference, score  # noqa: F401 -- the same


def local_cluster(n: int) -> LocalCluster:
    """The cluster `--scheduler local:N` starts: `n` worker processes on this machine, each grading
    `LOCAL_THREADS` tasks at once, each warmed by `dask_setup` as it starts."""
    from dask.distributed import LocalCluster  # (Dask: an optional extra; the caller checked it is there)

    return LocalCluster(
        n_workers=n,
        threads_per_worker=LOCAL_THREADS,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
        preload=[__name__],
    )


def grade_task(task: Task) -> tuple[dict, str | None]:
    """Grade one submission on a Dask worker: the report and feedback page `one_submission.grade_one` gives, naming
    the notebook as the grader found it (the worker grades a copy of its own)."""
    assignment = _assignment(task)
    if assignment.digest != task.assignment_digest:
        raise RubricError(
            f"this worker's copy of {task.assignment} differs from the grader's: install the same "
            "version of backprop-grader on every worker"
        )
    pool, scratch, at_once = _pool(sandbox.Limits(**task.limits), task.hidden, task.sandbox)
    start_workers(pool, assignment, task.hidden_runs)  # (a worker's first task: before grade_one imports torch)
    folder = Path(tempfile.mkdtemp(dir=scratch))
    path = folder / (Path(task.notebook).name or "submission.ipynb")
    try:
        path.write_bytes(task.content)
        with at_once:  # (no more runs at once than the memory the grader runs under holds: see _pool)
            return one_submission.grade_one(
                Submission(task.student, path, task.digest),
                assignment,
                task.timeout,
                pool,
                hidden_runs=task.hidden_runs,
                shown_as=task.notebook,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- on the grader -------------------------------------------------------------------------------


def _client(scheduler: str) -> tuple[Client, LocalCluster | None]:
    """A Dask client for `tcp://HOST:PORT` (a running scheduler) or `local:N` (a LocalCluster of N workers)."""
    try:
        from dask.distributed import Client  # (Dask: an optional extra, the `dask` one)
    except ImportError:
        raise GraderError("--scheduler needs Dask: pip install 'backprop-grader[dask]'") from None
    if scheduler.startswith("local:"):
        try:
            n = int(scheduler.removeprefix("local:"))
        except ValueError:
            n = 0
        if n < 1:
            raise UsageError(f"--scheduler {scheduler}: local:N needs a number of workers N >= 1")
        cluster = local_cluster(n)  # one process per core asked for
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=30), None
    except (OSError, TimeoutError, ValueError) as e:
        raise GraderError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({e})") from None


def grade(
    submissions: Iterable[Submission],
    assignment: Assignment,
    scheduler: str,
    *,
    timeout: float | None,
    limits: sandbox.Limits,
    hidden: tuple[str, ...] = (),
    backend: str = "auto",
    hidden_runs: tuple[dict[str, object], ...] | None = None,
) -> Iterator[tuple[Submission, dict, str | None]]:
    """Grade `submissions` (`Submission`s) on the cluster: (submission, report, page) as each finishes.
    `hidden`: paths of this machine no run may read, wherever a worker shares it. `backend`: the sandbox
    each worker must use (`auto`: the best that works there). `hidden_runs`: the hidden re-runs (default: the
    rubric's)."""
    batch = uuid.uuid4().hex[:8]  # keys of this batch's own: another batch's results are not this one's
    client, cluster = _client(scheduler)  # first: without Dask, it says how to install it
    try:
        from dask.distributed import as_completed  # (Dask: an optional extra; importable, `_client` found)

        futures = {}
        carried: tuple[tuple[str, bytes], ...] = ()
        if assignment.location.origin != "shipped":
            carried = tuple((k, p.read_bytes()) for k, p in assignments.folder_files(assignment).items())
        for s in submissions:
            task = Task(
                s.student,
                str(s.path),
                s.path.read_bytes(),
                s.digest,
                assignment.name,
                assignment.digest,
                timeout,
                asdict(limits),
                hidden,
                backend,
                hidden_runs,
                carried,
            )
            # pure=False: the same notebook handed in twice is graded twice, as a local run would
            futures[
                client.submit(grade_task, task, key=f"grade-{batch}-{s.student}-{s.digest[:12]}", pure=False, retries=1)
            ] = s
        for future in as_completed(futures):
            try:
                report, page = future.result()
            except GraderError:
                raise
            except Exception as e:  # e.g. KilledWorker: the task's workers died more often than Dask allows
                raise GraderError(
                    f"{futures[future].student}: the cluster could not grade it ({type(e).__name__}: {e})"
                ) from None
            yield futures[future], report, page
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
