"""The Linux backend's worker process: a warm child that forks one confined process per run.

    python -m grader.sandbox.linux_child SOCKET_FD

The worker imports torch and runs the released setup cells once (`warm.Warm`). For each job (a
submission's runs on this worker) the grader sends a `SOCK_SEQPACKET` message carrying the job's files as
descriptors, and the worker forks a supervisor, which puts itself into new namespaces
(`confine.new_namespaces`: as root, or in a user namespace of its own as an ordinary user) and forks
process 1 of them. Process 1 builds the view of the files once, then forks each run in turn: the run joins
its own cgroup, drops what it may not keep and runs the notebook. Process 1 gives each run its timeout (a
pidfd says when it ends), and before the next one kills and reaps every process of the last and renews
/tmp and /dev/shm. The supervisor, outside the namespaces, passes each run's report to the grader on that
run's own pipe, and keeps a clock over process 1 itself; killing process 1 kills everything the notebook
started.

Linux only: fork, pidfd, `send_fds`, namespaces.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
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
from grader.sandbox.warm import MAX_RUNS, Warm, preload


def _unless_orphaned(supervisor: int, job: int, seconds: float | None = None) -> bool:
    """Whether the job ends within `seconds` (None: however long it takes); if the supervisor ends first (the
    grader was killed), end the job and exit. The job is left to be reaped."""
    try:
        child = os.pidfd_open(job)
    except OSError:
        return True  # it has ended already
    try:
        ready, _, _ = select.select([supervisor, child], [], [], seconds)
    finally:
        os.close(child)
    if not ready:
        return False
    if supervisor not in ready:
        return True
    try:  # everything of the job: every process of its PID namespace (or, outside one, of its group)
        if os.getpid() == 1:
            os.kill(-1, signal.SIGKILL)
        else:  # never kill(-1) outside a namespace of our own: that is every process we may signal
            os.killpg(os.getpid(), signal.SIGKILL)
    finally:
        os._exit(0)


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


def _end_all_but_me() -> None:
    """In process 1 of a PID namespace: kill every other process of it and reap them all, so that nothing of
    one run is left when the next begins. Orphans become children of process 1, so when `wait` says there
    are no children left and /proc lists no other process, there are none; a fork racing the kill is refused
    by the kernel (its parent has the signal pending), and the loop kills again whatever appears all the same."""
    while True:
        try:
            os.kill(-1, signal.SIGKILL)  # from process 1: every process of the namespace but itself
        except ProcessLookupError:
            pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            if _stray_processes() == 0:
                return


def _line(fd: int, pending: bytearray, deadline: float) -> bytes | None:
    """The next line process 1 writes on `fd` (`pending`: what was read past the last one), or None if it
    closed the pipe or `deadline` (the system's monotonic clock) passed first."""
    while b"\n" not in pending:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        pending += chunk
        if len(pending) > 1 << 20:  # (only our process 1 writes here: a bound all the same)
            return None
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line


_SET_GRACE = 10.0
"""Seconds past a run's timeout the supervisor waits for process 1's report on it: process 1 sets up the view of
the files and transforms the job's cells (`Warm.learn`, 0.05 s at most) before the first run and renews /tmp
between runs, which take milliseconds, not seconds."""
_MOST_CONTROLLERS = 4
"""Most cgroup controllers a run joins (one file each): the job message's descriptors are bounded by it."""

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
        # keeps the objects made so far out of later collections: fewer pages copied per fork. The imports'
        # objects were frozen before the setup (`main`), so this collection looks at the setup's alone.
        gc.collect()
        gc.freeze()
        sock.sendall(b"ready\n")
        served = 0
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(sock, 64, 1 + MAX_RUNS * (4 + _MOST_CONTROLLERS))
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
        """The supervisor: starts the job's runs in their confinement, one after another in one set of namespaces,
        gives each at most its timeout, and reports each on its own status pipe as it ends."""
        received = time.monotonic()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        confine.die_with_parent()
        os.setsid()
        job_fd, *rest = fds
        with os.fdopen(job_fd, "rb") as f:
            job = json.loads(f.read())
        runs, joins_each = len(job["runs"]), job["cgroups"]
        status_fds, rest = rest[:runs], rest[runs:]
        joins, run_fds = rest[: runs * joins_each], rest[runs * joins_each :]  # each run's cgroup files, its own
        mode = self.spec["mode"]
        try:
            confine.new_namespaces(mode)
        except OSError as e:  # the grader chose this backend because it worked: say so, never run unconfined
            os.write(status_fds[0], json.dumps({"sandbox_error": f"{mode} namespaces: {e}"}).encode())
            os._exit(0)
        uid = confine.UID_BASE + os.getpid()
        started = time.monotonic()
        init_read, init_write = os.pipe()  # process 1's report on each run, a line each, as each ends
        # Process 1 of a PID namespace is spared the parent-death signal: it watches this process instead,
        # through a pidfd (which, unlike a pid, means the same thing inside the namespace).
        me = os.pidfd_open(os.getpid())
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (*status_fds, init_read):
                    os.close(fd)
                self._init(job, uid, joins, run_fds, init_write, me)
            finally:
                os._exit(71)
        for fd in (*joins, *run_fds, init_write, me):
            os.close(fd)
        first = {"received": received, "namespaces": started}
        self._relay(pid, init_read, status_fds, job["timeout"], first)
        os._exit(0)

    def _relay(self, init: int, reports: int, status_fds: list[int], timeout: float, first: dict) -> None:
        """Pass process 1's report on each run to that run's status pipe as it comes. Process 1 keeps each run's
        clock; this process keeps one over process 1 too: where a report is late past the run's timeout (and
        the time process 1 needs to set up or clean up), process 1 is killed, and with it everything of the job;
        that run is reported timed out, and the runs after it as never begun (the grader starts them again)."""
        pending, ended, began = bytearray(), False, time.monotonic()
        for i, status in enumerate(status_fds):
            line = None if ended else _line(reports, pending, began + timeout + _SET_GRACE)
            if ended:
                report: dict = {"began": False}
            elif line is None:  # process 1 is late, or gone: it and everything it started end here
                ended, late = True, time.monotonic() >= began + timeout + _SET_GRACE
                os.kill(init, signal.SIGKILL)
                report = {"returncode": -signal.SIGKILL, "timed_out": late, "seconds": time.monotonic() - began}
            else:
                try:
                    report = json.loads(line)
                except ValueError:
                    report = {}
                # (process 1 runs no more: it could not confine the run, or renew /tmp for the next)
                ended = report.get("last") is True or bool(report.get("sandbox_error"))
            stamps = (first if i == 0 else {}) | report.get("stamps", {}) | {"reported": time.monotonic()}
            os.write(status, json.dumps(report | {"stamps": stamps}).encode() + b"\n")
            os.close(status)
            began = time.monotonic()
        try:
            os.kill(init, signal.SIGKILL)  # (it has ended already, unless it failed to: never leave it behind)
        except ProcessLookupError:
            pass
        os.waitpid(init, 0)

    def _init(self, job: dict, uid: int, joins: list[int], run_fds: list[int], reports: int, supervisor: int) -> None:
        """Process 1 of the job's namespaces: sets up its view of the files, then runs each run in turn in a process
        of its own, and reports each as it ends. Before the next run begins, every process of the last is killed
        and reaped and its /tmp and /dev/shm are replaced with empty ones: nothing of one run reaches the next.

        The notebook does not run as process 1 itself: the kernel spares process 1 the signals it sends
        itself, and a notebook should behave as it would anywhere else.
        """
        confine.die_with_parent()
        # Signals from inside the namespace reach process 1 only where it has a handler: Python's for
        # SIGINT would let the notebook end its own job with a KeyboardInterrupt here.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        workdir, runs = "/tmp/run", len(job["runs"])
        stamps = {"process1": time.monotonic()}
        try:
            renewable = confine.private_view(self.spec["hidden"], workdir, self.spec["limits"]["tmp_size"])
        except (OSError, ValueError) as e:  # ours, not the notebook's: the grader stops with this message
            os.write(reports, json.dumps({"sandbox_error": f"{type(e).__name__}: {e}"}).encode() + b"\n")
            os._exit(0)
        stamps["view"] = time.monotonic()
        if runs > 1:  # (for one run it would only move the work)
            self.learn(job["runs"])
        joins_each = len(joins) // runs
        for i in range(runs):
            if i > 0:
                stamps = {"cleaning": time.monotonic()}
                _end_all_but_me()
                if not renewable:  # a Python under the host's /tmp is bound inside it: the next runs go elsewhere
                    os.write(reports, json.dumps({"began": False, "last": True}).encode() + b"\n")
                    os._exit(0)
                confine.renew_tmp(workdir, self.spec["limits"]["tmp_size"])
                stamps["view"] = time.monotonic()
            mine = [*joins[i * joins_each : (i + 1) * joins_each], *run_fds[3 * i : 3 * i + 3]]
            # never the run's to write: the reports, and the files of the runs after it (those before are closed)
            others = [reports, *joins[(i + 1) * joins_each :], *run_fds[3 * (i + 1) :]]
            report = self._one_run(job, i, uid, workdir, mine, others, supervisor)
            for fd in mine:
                os.close(fd)
            os.write(reports, json.dumps(report | {"stamps": stamps | report["stamps"]}).encode() + b"\n")
        os._exit(0)

    def _one_run(
        self, job: dict, i: int, uid: int, workdir: str, mine: list[int], others: list[int], supervisor: int
    ) -> dict:
        """In process 1: run `i` of the job in a process of its own, at most its timeout; how it ended."""
        setup_read, setup_write = os.pipe()  # what went wrong in the job before its first cell: ours
        stamp_read, stamp_write = os.pipe()  # when each step of its start happened (written before any cell)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (*others, supervisor, setup_read, stamp_read):
                    os.close(fd)  # nothing of the other runs: their files, their cgroups
                self._run_all(job, i, uid, workdir, mine, setup_write, stamp_write)
            except BaseException:  # the notebook's doing: the run's output shows the traceback
                traceback.print_exc()
            finally:
                os._exit(71)
        os.close(setup_write)
        os.close(stamp_write)
        timed_out = not _unless_orphaned(supervisor, pid, job["timeout"])
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        stamps = {"job": started} | _stamps(stamp_read) | {"ended": time.monotonic()}
        stray = _stray_processes()
        stamps["counted"] = time.monotonic()
        with os.fdopen(setup_read, "rb") as f:
            failed = f.read(4096).decode("utf-8", "replace")
        if failed:
            return {"sandbox_error": failed, "stamps": stamps, "last": True}
        return {
            "returncode": -signal.SIGKILL if timed_out else os.waitstatus_to_exitcode(status),
            "timed_out": timed_out,
            "max_rss_kb": usage.ru_maxrss,
            "stray": 0 if timed_out else stray,  # (ended for its time: its processes went with it, as always)
            "seconds": time.monotonic() - started,
            "stamps": stamps,
        }

    def _run_all(
        self, job: dict, i: int, uid: int, workdir: str, mine: list[int], setup_write: int, stamps: int
    ) -> None:
        """The job's run `i` itself: join its cgroup, drop privileges, then run, from the state after the setup.

        `mine` holds the run's cgroup files, then its own three. What fails before the first cell is the
        grader's problem, not the student's: it goes to `setup_write` for process 1 to report, and the job ends.
        """
        confine.die_with_parent()
        joins, run_fds = mine[:-3], mine[-3:]
        try:
            for fd in joins:  # first: everything this process starts is in the run's cgroup
                os.write(fd, b"0")
                os.close(fd)
            _stamp(stamps, "cgroup")
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
        # one run per process: the next run of the job is another process, forked by process 1
        self.run_job([job["runs"][i]], workdir, run_fds, lambda: None, job.get("cell_timeout"))
        # Skip the interpreter's clean-up: tearing down torch takes half a second and nothing is left to save.
        os._exit(0)


def main(argv: list[str]) -> int:
    """`python -m grader.sandbox.linux_child SOCKET_FD`: import torch, then become a worker for the grader at the
    socket's end with the setup its first message names (the path of a JSON spec, `linux.Worker`)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file of the worker or any run, ever
    (fd,) = argv
    sock = socket.socket(fileno=int(fd))
    try:
        preload()  # before the spec: the grader sends it once it knows it, while this runs
        # The imports leave no garbage to collect (a collection finds none, in 60 ms): their objects are frozen
        # as they are, out of every later collection (`Server.serve`).
        gc.freeze()
        spec_path = os.fsdecode(sock.recv(4096))
        if not spec_path:  # the grader went away (or never needed this worker)
            return 0
        with open(spec_path, encoding="utf-8") as f:
            spec = json.load(f)
        worker = Server(spec)
    except BaseException as e:
        sock.sendall(f"error {error_line(e)}\n".encode())
        return 1
    worker.serve(sock)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # no interpreter clean-up: tearing torch down takes most of 0.2 s, which `grader check` waited for
    sys.stderr.flush()
    os._exit(code)
