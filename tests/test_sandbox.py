"""The warm worker: where a run may start from the state after the setup, and that each run of a
submission starts from that state however the run before it left things."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import pytest
from conftest import NOTEBOOKS, RELEASE, linux_sandbox

from grader import assignment as assignments
from grader import grade_notebook, notebook, sandbox
from grader import plan as plans
from grader.assignment import released_parameters
from grader.errors import NotANotebook, SandboxError
from grader.plan import PARAMS

RUBRIC = assignments.rubric_of("backprop_ninja")
ASSIGNMENT = assignments.load("backprop_ninja")


def _prefix_and_plans(student: nbformat.NotebookNode):
    released = notebook.read(RELEASE)
    main = released_parameters(released) | RUBRIC.grading_parameters | RUBRIC.data
    cells = plans.plan(released, ASSIGNMENT, main).cells
    last = max(i for i, c in enumerate(cells) if c.grade_id in RUBRIC.setup_cells)
    settings = [main] + [main | h for h in RUBRIC.hidden_runs]
    return cells[: last + 1], [plans.plan(student, ASSIGNMENT, p) for p in settings]


def test_a_run_starts_after_the_setup_when_its_first_cells_are_the_released_ones():
    prefix, plans = _prefix_and_plans(notebook.read(NOTEBOOKS / "full_marks.ipynb"))
    injected = next(i for i, c in enumerate(prefix) if c.grade_id == PARAMS)
    assert sandbox.warm_start(plans[0], prefix) == (len(prefix), [])
    # hidden runs: other parameters, run again after the worker's state
    assert sandbox.warm_start(plans[1], prefix) == (len(prefix), [injected])
    assert sandbox.warm_start(plans[2], prefix) == (len(prefix), [injected])


def test_a_run_whose_first_cells_differ_starts_from_nothing():
    nb = notebook.read(NOTEBOOKS / "full_marks.ipynb")
    cell = next(c for c in nb.cells if c.cell_type == "code" and notebook.has_tag(c, "parameters"))
    cell.source = cell.source.replace("batch_size = 32", "batch_size = 32  # my own note")
    prefix, plans = _prefix_and_plans(nb)
    assert all(sandbox.warm_start(p, prefix) == (0, []) for p in plans)


def _full_marks_with(tmp_path, code: str, where: str = "end"):
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    if where == "end":
        nb.cells.append(nbformat.v4.new_code_cell(code))
    else:  # first
        cell = next(c for c in nb.cells if c.cell_type == "code" and notebook.has_tag(c, "parameters"))
        cell.source += "\n" + code
    path = tmp_path / "submission.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_a_notebook_with_its_own_parameters_cell_is_graded_from_scratch(tmp_path, pool):
    report = grade_notebook(_full_marks_with(tmp_path, "learning_note = 'mine'", where="first"), pool=pool)
    assert (report.status, report.score) == ("graded", report.max_score)


@pytest.mark.parametrize(
    "mess",
    [
        "Xtr.zero_()\nYtr.zero_()",  # the data the setup made, changed in place
        "import builtins\nbuiltins.len = lambda x: 0\nbuiltins.range = None",  # builtins replaced
        "import torch\ntorch.randn = torch.zeros\ntorch.Tensor.sum = lambda *a, **k: 0",  # torch patched
        "import sys, io\nsys.stdout = io.StringIO()",  # output swallowed
    ],
)
def test_each_run_starts_clean_whatever_the_run_before_left(tmp_path, pool, mess):
    # the mess comes at the end of each run: the hidden runs after the first must not see it
    report = grade_notebook(_full_marks_with(tmp_path, mess), pool=pool)
    assert (report.status, report.score) == ("graded", report.max_score), report.notes
    assert [r.status for r in report.runs] == ["graded"] * 3


def test_results_forged_to_crash_the_parser_fail_that_notebook_only(tmp_path, pool):
    # every regular file the run holds open gets a safetensors header nested 100,000 deep, then it exits
    code = """import json, os, stat
meta = json.dumps({"__metadata__": {"grader": "[" * 100000 + "]" * 100000}}).encode()
for fd in range(3, 256):
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.write(fd, len(meta).to_bytes(8, "little") + meta)
    except OSError:
        pass
os._exit(0)"""
    report = grade_notebook(_full_marks_with(tmp_path, code), pool=pool)
    assert report.status == "failed" and report.score == 0
    assert "could not be read" in report.error or "exited with code 0" in report.error


def test_a_replayed_call_must_be_a_minibatch_of_the_training_loop(tmp_path, pool):
    # the notebook calls its backward() once more itself, with most of the training set: the grader,
    # which replays recorded calls with autograd in its own process, must not take that call
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "ex4")
    nb.cells.insert(
        index + 1,
        nbformat.v4.new_code_cell(
            "with torch.no_grad():\n    big = Xtr[:2000], Ytr[:2000]\n    backward(*big, *forward(*big)[1])"
        ),
    )
    path = tmp_path / "big_call.ipynb"
    nbformat.write(nb, str(path))
    report = grade_notebook(path, hidden_runs=(), pool=pool)
    d_C = next(v for v in report.variables if v.exercise == "ex4" and v.name == "d_C")
    assert d_C.points == 0 and "not a minibatch of the training loop" in d_C.message, d_C.message


@pytest.mark.parametrize("backend", ["linux", "portable"])
def test_a_run_ends_when_its_grader_is_killed(tmp_path, backend):
    """SIGKILL the grader while a notebook loops forever: nothing of the run stays. (Linux: process 1 of a
    namespace is spared the parent-death signal, it watches its supervisor instead; portable: the child
    ends itself and its group when the grader's pipe closes.)"""
    import signal
    import subprocess
    import time

    from conftest import NOTEBOOKS, grader_command, linux_sandbox, sandbox_processes

    if backend == "linux" and not linux_sandbox():
        pytest.skip("the Linux sandbox does not work on this machine")
    since = time.time()
    grader = subprocess.Popen(
        [*grader_command(), "check", str(NOTEBOOKS / "infinite_loop.ipynb"), "--timeout", "120", "--sandbox", backend],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(8)  # the worker starts, the job starts, the notebook loops
    assert sandbox_processes(since, left_behind=False), "the notebook should be running"
    grader.send_signal(signal.SIGKILL)
    grader.wait()
    deadline = time.monotonic() + 10
    while sandbox_processes(since) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sandbox_processes(since) == []


def test_process_one_ends_the_job_when_its_supervisor_is_gone():
    """The race the parent-death signal misses (the supervisor killed before process 1 could ask for it, or
    process 1 of a PID namespace spared it): process 1 watches the supervisor's pidfd and ends the job."""
    import signal
    import subprocess
    import time

    from grader.sandbox.linux_child import _unless_orphaned

    supervisor = subprocess.Popen(["sleep", "60"])
    watch = os.pidfd_open(supervisor.pid)
    read, write = os.pipe()
    init = os.fork()
    if init == 0:  # process 1 of a job (its own process group), and a job that never ends
        os.setsid()
        job = os.fork()
        if job == 0:
            while True:
                time.sleep(1)
        os.write(write, str(job).encode())
        _unless_orphaned(watch, job)
        os._exit(3)  # the job ended on its own: not what happened
    os.close(write)
    job = int(os.read(read, 32))
    supervisor.kill()
    supervisor.wait()
    _, status = os.waitpid(init, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # it ended its group, itself included
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{job}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{job}") or Path(f"/proc/{job}/stat").read_text().split()[2] == "Z"


@pytest.mark.parametrize("bomb", ["entries", "size"])
def test_a_forged_result_is_refused_before_it_is_loaded(bomb):
    """A result whose header is too large or lists too many tensors is refused from its header, before
    safetensors loads it (a million empty tensors cost seconds and a gigabyte to load). Both forgeries
    are otherwise well-formed: without the check they would be read as a finished run."""
    import json

    from grader.sandbox.results import MAX_ENTRIES, MAX_HEADER_BYTES, Ended, Run

    _, plans = _prefix_and_plans(notebook.read(NOTEBOOKS / "full_marks.ipynb"))
    summary = {"cells": [{"status": "ok", "error": ""}] * len(plans[0].cells), "values": {}}
    if bomb == "size":
        summary["padding"] = "x" * MAX_HEADER_BYTES
    header = {"__metadata__": {"grader": json.dumps(summary)}}
    if bomb == "entries":
        header |= {f"x{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(MAX_ENTRIES + 1)}
    run = Run(plans[0], "the notebook's parameters", 0, [])
    raw = json.dumps(header).encode()
    run.result.write(len(raw).to_bytes(8, "little") + raw)
    run.progress.write(b"0\n")
    captured = run.captured(Ended(returncode=0), 10.0, None)
    run.close()
    assert not captured.finished and "could not be read" in captured.reason


def test_a_worker_outlives_the_thread_that_started_it():
    """A pool outlives the threads of a batch or of a Dask task: its worker must not die with the thread that
    happened to start it (a parent-death signal would follow that thread)."""
    import threading

    from conftest import SOLUTION

    with sandbox.Pool() as workers:
        starter = threading.Thread(target=grade_notebook, args=(SOLUTION,), kwargs={"hidden_runs": (), "pool": workers})
        starter.start()
        starter.join()
        report = grade_notebook(SOLUTION, hidden_runs=(), pool=workers)
    assert report.score == report.max_score, report.error


@pytest.mark.skipif(not linux_sandbox(), reason="only the Linux backend starts a worker ahead")
def test_a_worker_started_ahead_is_the_one_that_grades():
    """`grader check` starts its worker before the notebook is read (`Pool.start_ahead`): the first worker the pool
    needs is that process, told its setup then, and its runs grade as any other worker's."""
    from conftest import SOLUTION

    with sandbox.Pool() as workers:
        workers.start_ahead()
        workers.start_ahead()  # one waits at a time
        (started,) = workers.spare
        report = grade_notebook(SOLUTION, pool=workers)
        assert not workers.spare
        assert [w.process.pid for w in workers.workers.values()] == [started.process.pid]
        workers.start_ahead()  # a pool with its worker needs none (a pool shared by many checks)
        assert not workers.spare
    assert report.score == report.max_score, report.error
    assert started.process.returncode is not None and not started.workdir.exists()


@pytest.mark.skipif(not linux_sandbox(), reason="only the Linux backend starts a worker ahead")
def test_a_worker_started_ahead_and_never_needed_ends_with_its_pool():
    """A notebook that cannot be graded (no such file) leaves the worker started for it unused: it ends with the
    pool, folder and all, without waiting for its `import torch` to finish."""
    with sandbox.Pool() as workers:
        workers.start_ahead()
        (started,) = workers.spare
        with pytest.raises(NotANotebook):
            grade_notebook(Path("no such notebook.ipynb"), pool=workers)
    assert started.process.returncode is not None and not started.workdir.exists()
    assert not workers.workers and not workers.spare


@pytest.mark.skipif(not linux_sandbox(), reason="only the Linux backend starts a worker ahead")
def test_a_worker_that_cannot_be_given_its_setup_ends_at_once(tmp_path):
    """The process started ahead is told its setup only once its folder holds the data: where that fails (a data
    file gone), the grader says so in one line and the process is ended, not left waiting for a setup."""
    from grader.sandbox import linux, linux_start

    started = linux_start.Started()
    backend = sandbox.choose("linux")
    with pytest.raises(SandboxError, match="could not prepare the worker's folder"):
        linux.Worker((), [], {"names.txt": tmp_path / "gone.txt"}, [], sandbox.DEFAULT_LIMITS, backend.mode, started)
    assert started.process.returncode is not None and not started.workdir.exists()


@pytest.mark.skipif(not linux_sandbox(), reason="only the Linux backend starts a worker ahead")
def test_a_head_start_that_fails_is_no_error(monkeypatch):
    """`Pool.start_ahead` is a head start only: where the process cannot be started then (no folder, no process
    left), the pool starts its worker when needed, as without it, and that start says what is wrong."""
    from grader.sandbox import linux_start

    def cannot(self: object) -> None:
        raise SandboxError("could not start the worker process: [Errno 24] Too many open files")

    monkeypatch.setattr(linux_start.Started, "__init__", cannot)
    with sandbox.Pool() as workers:
        workers.start_ahead()
        assert workers.spare == []


def _kernel_collapses_huge_pages() -> bool:
    """MADV_COLLAPSE came with Linux 6.1; the administrator can still turn transparent huge pages off."""
    try:
        release = tuple(int(x) for x in os.uname().release.split(".")[:2])
        enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text(encoding="ascii")
    except (OSError, ValueError):
        return False
    return release >= (6, 1) and "[never]" not in enabled


@pytest.mark.skipif(not _kernel_collapses_huge_pages(), reason="no MADV_COLLAPSE on this kernel")
def test_the_linux_worker_forks_from_huge_pages(tmp_path, pool):
    # each run forks the worker three times: its memory in 2 MB pages makes each fork and exit about a third as
    # dear (the step times in benchmarks/batch_speed.py); the worker must really have them
    import psutil

    if not linux_sandbox():
        pytest.skip("the Linux backend does not run here")
    report = grade_notebook(NOTEBOOKS / "full_marks.ipynb", pool=pool)  # its three runs: the worker collapses after
    assert report.status == "graded"
    workers = [
        p for p in psutil.Process().children(recursive=True) if "grader.sandbox.linux_child" in " ".join(p.cmdline())
    ]
    assert workers
    for worker in workers:
        deadline, huge = time.monotonic() + 20, 0
        while huge < 64 * 1024 and time.monotonic() < deadline:  # kB: most of what `import torch` wrote (140 MB)
            time.sleep(0.1)  # (the collapse goes on beside the third run)
            rollup = Path(f"/proc/{worker.pid}/smaps_rollup").read_text(encoding="ascii")
            huge = int(rollup.split("AnonHugePages:")[1].split()[0])
        assert huge >= 64 * 1024, rollup


DAEMON = """
import os, time
marks = ("/tmp/an-earlier-run-was-here", "/dev/shm/an-earlier-run-was-here")
found = [m for m in marks if os.path.exists(m)]
if found:  # a hidden run that sees anything of the run before it gets Exercise 1 wrong
    raise RuntimeError(f"left by an earlier run: {found}")
for m in marks:
    open(m, "w").write("run 1")
if os.fork() == 0:  # a daemon of its own session that marks every run after this one, for 20 s at most
    os.setsid()
    if os.fork() == 0:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            for m in marks:
                try:
                    open(m, "a").write("daemon")
                except OSError:
                    pass
            time.sleep(0.01)
# (a copy of the notebook's process ends after this cell: the runner sees it is not the run's own process)
"""


def test_a_daemon_of_one_run_never_reaches_the_next(tmp_path, pool, monkeypatch):
    # The runs of a submission share one set of namespaces (one supervisor and process 1 for the three): between
    # two runs every process of the last is killed and its /tmp and /dev/shm replaced. A run that leaves a daemon
    # writing marks, and files of its own, must leave the hidden runs nothing: they would fail Exercise 1.
    from conftest import SOLUTION

    if not linux_sandbox():
        pytest.skip("the Linux backend does not run here")
    nb = nbformat.read(str(SOLUTION), as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1")
    cell.source = DAEMON + "\n" + cell.source
    path = tmp_path / "daemon.ipynb"
    nbformat.write(nb, str(path))
    timings = tmp_path / "timings.jsonl"
    monkeypatch.setenv("GRADER_TIMINGS", str(timings))
    report = grade_notebook(path, pool=pool)
    assert report.score == report.max_score == 36, [v.message for v in report.variables if v.message][:3]
    assert any("processes running when it ended" in note for note in report.notes), report.notes  # the daemon, killed
    runs = [json.loads(line) for line in timings.read_text().splitlines()]
    assert len(runs) == 3 and sum("cleaning" in r for r in runs) == 2  # one set of namespaces, renewed twice
