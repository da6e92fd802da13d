"""The Linux backend's worker process: a warm child that forks one confined process per job (one run).

    python -m grader.sandbox.linux_child SPEC_JSON SOCKET_FD

The worker imports torch and runs the released setup cells once (`warm.Warm`). For each job the
grader sends (a `SOCK_SEQPACKET` message carrying the job's files as descriptors) it forks a
supervisor, which puts itself into new namespaces (`confine.new_namespaces`: as root, or in a user
namespace of its own as an ordinary user) and forks process 1 of them; process 1 builds the run's
view of the files and forks the job itself, which drops what it may not keep and runs the notebook.
The supervisor gives each run its timeout (a pidfd says when the job ends) and reports to the grader
how it ended; killing process 1 kills everything the notebook started.

Linux only: fork, pidfd, `send_fds`, namespaces.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys
import time
import traceback

from grader.sandbox import confine
from grader.sandbox.limits import Limits
from grader.sandbox.runner import error_line
from grader.sandbox.syscalls import Filter
from grader.sandbox.warm import MAX_RUNS, Warm


def _unless_orphaned(supervisor: int, job: int) -> None:
    """Return when the job ends; if the supervisor ends first (the grader was killed), end the job and exit."""
    try:
        child = os.pidfd_open(job)
    except OSError:
        return  # it has ended already
    ready, _, _ = select.select([supervisor, child], [], [])
    if child in ready:
        os.close(child)
        return
    try:  # everything of the job: every process of its PID namespace (or, outside one, of its group)
        if os.getpid() == 1:
            os.kill(-1, signal.SIGKILL)
        else:  # never kill(-1) outside a namespace of our own: that is every process we may signal
            os.killpg(os.getpid(), signal.SIGKILL)
    finally:
        os._exit(0)


def _ends_within(pid: int, seconds: float) -> bool:
    """Whether child `pid` ends within `seconds` (a job is one run: one clock). The child is left to be reaped."""
    pidfd = os.pidfd_open(pid)  # sleep until it ends
    try:
        return bool(select.select([pidfd], [], [], seconds)[0])
    finally:
        os.close(pidfd)


def _stamp(fd: int, name: str) -> None:
    """Note when a step of the run's start and end happened (`name seconds`, the system's monotonic clock, which
    every process reads alike), for `batch_speed.py`'s breakdown; a closed pipe is no error."""
    try:
        os.write(fd, f"{name} {time.monotonic():.6f}\n".encode())
    except OSError:
        pass


def _stamps(fd: int) -> dict[str, float]:
    """The steps written to the stamp pipe, read to its end (every writer has closed it)."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
        if len(data) > 65536:  # (only ours write to it: a bound all the same)
            break
    os.close(fd)
    out: dict[str, float] = {}
    for line in data.decode("ascii", "replace").splitlines():
        name, _, value = line.partition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def _stray_processes() -> int:
    """In process 1 of a PID namespace: how many other processes are still running there (zombies reaped)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    return sum(1 for p in os.listdir("/proc") if p.isdigit() and p != "1")


_MADV_COLLAPSE = 25  # Linux 6.1
_HUGE_PAGE = 2 << 20
HUGE_PAGES_AFTER = 3
"""The worker collapses its memory into huge pages once it has forked this many jobs: about 0.3 s, which a batch
earns back within a few dozen runs, and which `grader check` (three runs, waiting on the worker's start) should
not pay before its first."""


def huge_pages() -> int:
    """Back the worker's own writable memory with 2 MB pages where the kernel can; the bytes so backed.

    Every run forks this process three times, and a fork copies one page-table entry per 4 kB page the
    parent has written (about 40,000 after `import torch`: its heap of C++ registrations, Python's objects),
    then each exit frees them again: a third of a run's time went there. A 2 MB page is one entry, so fork
    and exit cost about a third as much. The memory is the same; a run that writes to a huge page gets its
    own copy of the 4 kB it writes, as before (the kernel splits the mapping). Where the kernel lacks
    `MADV_COLLAPSE` or has no huge page to spare, nothing changes: runs are only slower.
    """
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps", encoding="ascii") as f:
            maps = f.read().splitlines()
    except (OSError, AttributeError):
        return 0
    collapsed = 0
    for line in maps:  # `start-end perms offset dev inode [name]`: private writable memory of no file
        fields = line.split(maxsplit=5)
        name = fields[5] if len(fields) > 5 else ""
        if not fields[1].startswith("rw") or name not in ("", "[heap]"):
            continue
        low, _, high = fields[0].partition("-")
        start, end = int(low, 16), int(high, 16)
        first, last = -(-start // _HUGE_PAGE) * _HUGE_PAGE, end // _HUGE_PAGE * _HUGE_PAGE
        if last > first and madvise(first, last - first, _MADV_COLLAPSE) == 0:
            collapsed += last - first
    return collapsed


# --- the worker -------------------------------------------------------------------------------------


class Server(Warm):
    """The worker: the warm state, and a supervisor forked from it per job."""

    def serve(self, sock: socket.socket) -> None:
        """Fork a supervisor for each job until the grader closes the socket."""
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
        # built once here, loaded by each job; the grader checked that it can be built (`linux_check`)
        self.filter, _ = Filter.make()
        gc.collect()
        gc.freeze()  # keeps the objects made so far out of later collections: fewer pages copied per fork
        sock.sendall(b"ready\n")
        served = 0
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(sock, 64, 4 + 3 * MAX_RUNS)
            except (ConnectionError, OSError):
                return
            if not message:
                return
            pid = os.fork()
            if pid == 0:
                try:
                    sock.close()
                    self._supervise(fds)
                finally:
                    os._exit(70)
            for fd in fds:
                os.close(fd)
            served += 1
            if served == HUGE_PAGES_AFTER:
                huge_pages()

    def _supervise(self, fds: list[int]) -> None:
        """The supervisor: starts the job in its confinement, gives each run at most the timeout, reports."""
        received = time.monotonic()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        confine.die_with_parent()
        os.setsid()
        job_fd, status_fd, *rest = fds
        with os.fdopen(job_fd, "rb") as f:
            job = json.loads(f.read())
        joins, run_fds = rest[: job["cgroups"]], rest[job["cgroups"] :]  # the run's cgroup files, then its own
        mode = self.spec["mode"]
        try:
            confine.new_namespaces(mode)
        except OSError as e:  # the grader chose this backend because it worked: say so, never run unconfined
            os.write(status_fd, json.dumps({"sandbox_error": f"{mode} namespaces: {e}"}).encode())
            os._exit(0)
        uid = confine.UID_BASE + os.getpid()
        started = time.monotonic()
        stamp_read, stamp_write = os.pipe()  # when each step of the run's start and end happened (no student writes)
        os.write(stamp_write, f"received {received:.6f}\nnamespaces {started:.6f}\n".encode())
        init_read, init_write = os.pipe()
        # Process 1 of a PID namespace is spared the parent-death signal: it watches this process instead,
        # through a pidfd (which, unlike a pid, means the same thing inside the namespace).
        me = os.pidfd_open(os.getpid())
        pid = os.fork()
        if pid == 0:
            try:
                os.close(status_fd)
                os.close(init_read)
                os.close(stamp_read)
                self._init(job, uid, joins, run_fds, init_write, me, stamp_write)
            finally:
                os._exit(71)
        for fd in (*joins, *run_fds, init_write, me, stamp_write):
            os.close(fd)
        timed_out = not _ends_within(pid, job["timeout"])
        if timed_out:
            os.kill(pid, signal.SIGKILL)  # process 1 of its namespace: everything in it dies too
        os.waitpid(pid, 0)
        with os.fdopen(init_read, "rb") as f:
            ended = json.loads(f.read() or b"{}")
        stamps = _stamps(stamp_read)
        stamps["reported"] = time.monotonic()
        report = {
            "returncode": ended.get("returncode", -signal.SIGKILL),
            "timed_out": timed_out,
            "stray": ended.get("stray", 0),
            "sandbox_error": ended.get("sandbox_error", ""),
            "seconds": time.monotonic() - started,
            "max_rss_kb": ended.get("max_rss_kb", 0),
            "stamps": stamps,
        }
        os.write(status_fd, json.dumps(report).encode() + b"\n")
        os._exit(0)

    def _init(
        self, job: dict, uid: int, joins: list[int], run_fds: list[int], init_write: int, supervisor: int, stamps: int
    ) -> None:
        """Process 1 of the job's namespaces: sets up its view of the files, starts the job, reports how it ended.

        The notebook does not run as process 1 itself: the kernel spares process 1 the signals it sends
        itself, and a notebook should behave as it would anywhere else.
        """
        confine.die_with_parent()
        # Signals from inside the namespace reach process 1 only where it has a handler: Python's for
        # SIGINT would let the notebook end its own job with a KeyboardInterrupt here.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        workdir = "/tmp/run"
        try:
            _stamp(stamps, "process1")
            for fd in joins:  # first: everything this process starts is in the run's cgroup
                os.write(fd, b"0")
                os.close(fd)
            _stamp(stamps, "cgroup")
            confine.private_view(self.spec["hidden"], workdir, self.spec["limits"]["tmp_size"])
            _stamp(stamps, "view")
        except (OSError, ValueError) as e:  # ours, not the notebook's: the grader stops with this message
            os.write(init_write, json.dumps({"sandbox_error": f"{type(e).__name__}: {e}"}).encode())
            os._exit(0)
        setup_read, setup_write = os.pipe()  # what went wrong in the job before its first cell: ours too
        pid = os.fork()
        if pid == 0:
            try:
                os.close(init_write)
                os.close(supervisor)
                os.close(setup_read)
                self._run_all(job, uid, workdir, run_fds, setup_write, stamps)
            except BaseException:  # the notebook's doing: the run's output shows the traceback
                traceback.print_exc()
            finally:
                os._exit(71)
        for fd in (*run_fds, setup_write):
            os.close(fd)
        _unless_orphaned(supervisor, pid)
        _, status, usage = os.wait4(pid, 0)
        _stamp(stamps, "ended")
        stray = _stray_processes()
        _stamp(stamps, "counted")
        os.close(stamps)
        with os.fdopen(setup_read, "rb") as f:
            failed = f.read(4096).decode("utf-8", "replace")
        if failed:
            os.write(init_write, json.dumps({"sandbox_error": failed}).encode())
            os._exit(0)
        os.write(
            init_write,
            json.dumps(
                {"returncode": os.waitstatus_to_exitcode(status), "max_rss_kb": usage.ru_maxrss, "stray": stray}
            ).encode(),
        )
        os._exit(0)

    def _run_all(self, job: dict, uid: int, workdir: str, run_fds: list[int], setup_write: int, stamps: int) -> None:
        """The job itself: drop privileges, then its run, from the state after the setup.

        What fails before the first cell is the grader's problem, not the student's: it goes to
        `setup_write` for process 1 to report, and the job ends.
        """
        confine.die_with_parent()
        try:
            _stamp(stamps, "job")
            self.write_data(workdir)
            _stamp(stamps, "data")
            confine.drop_privileges(Limits(**self.spec["limits"]), workdir, uid, self.spec["mode"])
            _stamp(stamps, "privileges")
            if self.filter is not None:  # last: dropping privileges needs calls the filter refuses
                self.filter.load()
            _stamp(stamps, "filter")
            os.close(stamps)  # before the notebook's first cell: nothing of it can write here
        except (OSError, ValueError) as e:
            os.write(setup_write, f"dropping privileges: {type(e).__name__}: {e}".encode()[:4000])
            os._exit(0)
        os.close(setup_write)
        # Python ignores SIGXFSZ; restored, writing past the file-size cap ends the run with a clear reason
        # instead of an error inside the error handler that would print the error
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        # one run per job (the grader sends each run on its own): nothing starts a second one here
        self.run_job(job["runs"], workdir, run_fds, lambda: None, job.get("cell_timeout"))
        # Skip the interpreter's clean-up: tearing down torch takes half a second and nothing is left to save.
        os._exit(0)


def main(argv: list[str]) -> int:
    """`python -m grader.sandbox.linux_child SPEC_JSON SOCKET_FD`: become a worker for the grader at the
    socket's end."""
    spec_path, fd = argv
    sock = socket.socket(fileno=int(fd))
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    try:
        worker = Server(spec)
    except BaseException as e:
        sock.sendall(f"error {error_line(e)}\n".encode())
        return 1
    worker.serve(sock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
