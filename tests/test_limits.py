"""Issue 17: a narrower kernel surface (the seccomp filter) and memory that fits the platform (a cgroup
per run capping its whole process tree; caps lowered to fit a container's memory limit).

Every attack here is bounded on its own: the processes a notebook forks stop themselves after a few
seconds and hold at most 90 MB each, and the Gradescope runs happen inside a cgroup of 768 MB.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import NOTEBOOKS, ROOT, SOLUTION, linux_sandbox

from grader import assignment as assignments
from grader import grade_notebook, sandbox
from grader.sandbox import limits as caps
from grader.sandbox.cgroups import Hierarchy

pytestmark = pytest.mark.skipif(not linux_sandbox(), reason="the Linux backend's layers")

PROBE = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)

def outcome(result):
    return "ok" if result != -1 else os.strerror(ctypes.get_errno())

libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: without the filter, tracing its own child then works
child = os.fork()
if child == 0:
    time.sleep(5)
    os._exit(0)
found = {"ptrace": outcome(libc.ptrace(16, child, 0, 0))}  # PTRACE_ATTACH
os.kill(child, 9)
os.waitpid(child, 0)
found["unshare"] = outcome(libc.unshare(0x10000000))  # CLONE_NEWUSER
import subprocess  # the util-linux command, as a notebook would shell out to it
done = subprocess.run(["unshare", "--user", "--net", "true"], capture_output=True, text=True)
found["unshare --user --net"] = "ok" if done.returncode == 0 else done.stderr.strip().rsplit(": ", 1)[-1]
if os.uname().machine == "x86_64":  # clone(CLONE_NEWUSER | SIGCHLD): the flags are the first argument
    pid = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    found["clone"] = outcome(pid)
import socket
try:  # a family a network namespace does not isolate (virtual machines offer it)
    socket.socket(40, socket.SOCK_STREAM)  # AF_VSOCK
    found["vsock"] = "ok"
except OSError as e:
    found["vsock"] = e.strerror
raise RuntimeError(repr(found))
"""

TREE_BOMB = """
import os, time
kids = []
for _ in range(8):
    pid = os.fork()
    if pid == 0:  # 90 MB each: under the per-process cap, eight of them over the tree's
        hoard = [bytearray(b"x" * 10**7) for _ in range(9)]
        time.sleep(3)
        os.kill(os.getpid(), 9)
    kids.append(pid)
ends = [os.waitpid(pid, 0) for pid in kids]
"""


def _with_cell(tmp_path: Path, source: str, name: str) -> Path:
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(source))
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def userns_pool():
    """The mode an ordinary user gets (user namespaces of the job's own), here as root."""
    from grader import grade

    backend = sandbox.Backend("linux", "userns")
    with sandbox.Pool(grade.hidden_folders(assignments.load("backprop_ninja")), backend=backend) as workers:
        yield workers


@pytest.mark.parametrize("mode", ["root", "userns"])
def test_a_run_can_make_no_namespace_and_trace_no_process(tmp_path, pool, userns_pool, mode):
    if mode == "root" and pool.backend.mode != "root":
        pytest.skip("root's mode needs root")
    workers = pool if mode == "root" else userns_pool
    report = grade_notebook(_with_cell(tmp_path, PROBE, "probe"), hidden_runs=(), pool=workers)
    found = next(n for n in report.notes if "RuntimeError" in n)
    assert "'ptrace': 'Operation not permitted'" in found
    assert "'unshare': 'Operation not permitted'" in found
    assert "'unshare --user --net': 'Operation not permitted'" in found
    assert "'vsock': 'Address family not supported by protocol'" in found
    if platform.machine() == "x86_64":
        assert "'clone': 'Operation not permitted'" in found
    # and the filter costs an honest notebook nothing
    solution = grade_notebook(SOLUTION, pool=workers)
    assert solution.score == solution.max_score


def test_the_filter_refuses_only_what_it_lists():
    from grader.sandbox.syscalls import REFUSED

    for needed in ("clone", "fork", "vfork", "execve", "mmap", "futex", "openat", "prctl", "seccomp"):
        assert needed not in REFUSED


def test_a_run_s_processes_together_are_capped_and_the_report_says_which_cap_held(tmp_path):
    hierarchy, why = Hierarchy.find()
    if hierarchy is None:
        pytest.skip(f"no cgroup per run here: {why}")
    limits = dataclasses.replace(sandbox.DEFAULT_LIMITS, memory=96 * 2**20, tmp_size=32 * 2**20)
    with sandbox.Pool(limits=limits) as workers:
        report = grade_notebook(_with_cell(tmp_path, TREE_BOMB, "tree_bomb"), hidden_runs=(), pool=workers)
    assert report.score == report.max_score  # every exercise ended before the bomb
    said = [report.error, *report.notes]
    assert any("128 MB" in s and "the run's whole process tree" in s and "cgroup" in s for s in said), said


def test_no_run_leaves_its_cgroup_behind(tmp_path, pool):
    hierarchy, why = Hierarchy.find()
    if hierarchy is None:
        pytest.skip(f"no cgroup per run here: {why}")
    before = {p.name for folder in hierarchy.folders for p in folder.glob(f"grader-{os.getpid()}-*")}
    grade_notebook(SOLUTION, pool=pool)
    after = {p.name for folder in hierarchy.folders for p in folder.glob(f"grader-{os.getpid()}-*")}
    assert after <= before


def test_caps_are_lowered_to_fit_a_container():
    limits = caps.DEFAULT_LIMITS
    assert caps.fit(limits, 3, None) == (limits, None)  # no container limit: as asked
    assert caps.fit(limits, 1, 64 * 2**30) == (limits, 1)  # room enough: as asked
    room = 768 * 2**20 - caps.GRADER_MEMORY - caps.WORKER_MEMORY  # Gradescope's default
    small, at_once = caps.fit(limits, 1, 768 * 2**20)
    assert at_once == 1 and small.memory + small.tmp_size == room
    shared, at_once = caps.fit(limits, 2, 768 * 2**20)
    assert at_once == 2 and shared.memory + shared.tmp_size == room // 2
    crowded, at_once = caps.fit(limits, 14, 768 * 2**20)  # fewer at once rather than less than a run needs
    assert at_once == room // caps.MIN_RUN_MEMORY and crowded.memory + crowded.tmp_size == caps.MIN_RUN_MEMORY
    assert at_once * caps.MIN_RUN_MEMORY <= room
    tiny, at_once = caps.fit(limits, 4, 256 * 2**20)  # smaller than the grader needs: one run, the least
    assert at_once == 1 and tiny.memory + tiny.tmp_size == caps.MIN_RUN_MEMORY
    assert shared.file_size == limits.file_size and shared.processes == limits.processes


# --- Gradescope under a container's memory limit (acceptance 3) -------------------------------------

SINGLE_BOMB = "hoard = []\nwhile True:\n    hoard.append(torch.ones(10**7))\n"
FORKING_BOMB = (
    "import os\nfor _ in range(6):\n    if os.fork() == 0:\n        hoard = []\n        while True:\n"
    "            hoard.append(bytearray(b'x' * 10**7))\n"
    "hoard = []\nwhile True:\n    hoard.append(bytearray(b'x' * 10**7))\n"
)


def _memory_cgroup(limit: int) -> Path | None:
    """A cgroup v1 memory group of `limit` bytes for a test's own processes, or None where none can be made."""
    hierarchy, _ = Hierarchy.find()
    if hierarchy is None or hierarchy.version != 1:
        return None
    folder = hierarchy.folders[0] / f"grader-test-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    (folder / "memory.limit_in_bytes").write_text(str(limit))
    return folder


@pytest.mark.parametrize("bomb", [SINGLE_BOMB, FORKING_BOMB], ids=["one_process", "seven_processes"])
def test_a_memory_bomb_under_gradescope_s_768_mb_gives_a_valid_results_json(tmp_path, bomb):
    container = _memory_cgroup(768 * 2**20)
    if container is None:
        pytest.skip("no cgroup v1 memory group can be made here")
    nb = nbformat.read(ROOT / "assignments" / "backprop_ninja.ipynb", as_version=4)
    answer = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1")
    answer.source = bomb + answer.source
    (tmp_path / "submission").mkdir()
    nbformat.write(nb, tmp_path / "submission" / "backprop_ninja.ipynb")
    results = tmp_path / "results" / "results.json"
    join = f'echo $$ > {container}/cgroup.procs && exec "$0" "$@"'
    try:
        proc = subprocess.run(
            [
                "sh",
                "-c",
                join,
                sys.executable,
                "-m",
                "grader",
                "gradescope",
                "run",
                str(tmp_path / "submission"),
                str(results),
                "--assignment",
                "backprop_ninja",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        reached = int((container / "memory.failcnt").read_text())
    finally:
        container.rmdir()
    assert proc.returncode == 0, proc.stderr
    assert reached == 0  # the container's own limit was never reached: the run's caps, fitted to it, held first
    out = json.loads(results.read_text())
    assert out["score"] == 0
    d_logprobs = next(t for t in out["tests"] if t["name"] == "Ex1 d_logprobs")
    assert any(
        reason in d_logprobs["output"] for reason in ("MemoryError", "can't allocate memory", "ran out of memory")
    )


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_grader_stopped_mid_run_leaves_no_cgroup_behind(how):
    """SIGTERM unwinds: the run ends and its cgroup goes. SIGKILL cannot clean up: the next grader sweeps the
    empty cgroups of graders that are gone."""
    import signal
    import time

    hierarchy, why = Hierarchy.find()
    if hierarchy is None:
        pytest.skip(f"no cgroup per run here: {why}")
    from conftest import grader_command

    grader = subprocess.Popen(
        [*grader_command(), "check", str(NOTEBOOKS / "infinite_loop.ipynb"), "--timeout", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def its_cgroups() -> list[Path]:
        return [p for folder in hierarchy.folders for p in folder.glob(f"grader-{grader.pid}-*")]

    deadline = time.monotonic() + 60
    while not its_cgroups() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert its_cgroups(), "the run should be going on, in a cgroup of its own"
    grader.send_signal(getattr(signal, how))
    grader.wait(timeout=30)
    if how == "SIGKILL":
        time.sleep(2)  # the worker sees its socket close, its runs end with it
        Hierarchy.find()
    assert its_cgroups() == []
