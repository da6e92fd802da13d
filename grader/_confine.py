"""Confinement of one run of student code, applied inside the forked child before its first cell.

Runs in the worker's forked processes, never in the grader. On Linux as root (a container, Gradescope,
a course server) every run gets:

- its own PID namespace: the run is process 1 there, so when it ends or is killed, every process it
  started dies with it, whatever session or process group it moved to;
- its own network namespace with nothing in it: no network at all, loopback included;
- its own mount namespace: a fresh, size-capped tmpfs on /tmp (its working directory) and /dev/shm,
  an empty read-only tmpfs over every folder the grader hides (solutions, rubric, the other
  submissions, the output folder), and a /proc that shows only its own processes;
- a user id of its own (no account, no groups, no privileges), so it can write nowhere but its
  working directory, cannot signal or trace the grader, and RLIMIT_NPROC caps its processes and threads.

Elsewhere (not root, or not Linux) only what needs no privilege holds: resource limits, a session of
its own that is killed as a group, death with its supervisor, one BLAS thread. `available()` says which.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from dataclasses import dataclass

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWPID, _CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 0x4000, 0x40000)
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
UID_BASE = 1_000_000
"""Each run's user id is this plus its supervisor's process id: unique among the runs alive at once."""


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    memory: int
    """Bytes of data (heap and anonymous mappings, RLIMIT_DATA) per process."""
    file_size: int
    """Largest file it may write, its output included (RLIMIT_FSIZE); more ends it with SIGXFSZ."""
    processes: int
    """Processes and threads of its user id (RLIMIT_NPROC; enforced only where it has a user id of its own)."""
    tmp_size: int
    """Size of its private /tmp, its working directory (where a private mount namespace is possible)."""


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def available() -> bool:
    """Whether runs get the namespaces and a user id of their own (Linux, as root)."""
    return _LIBC is not None and os.geteuid() == 0


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    assert _LIBC is not None
    _check(_LIBC.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {target}")


def new_namespaces() -> bool:
    """In the supervisor, before it forks the run: PID, mount and network namespaces for its children."""
    if not available():
        return False
    assert _LIBC is not None
    # IPC: System V shared memory made by a run goes with it, and counts for nobody else
    _check(_LIBC.unshare(_CLONE_NEWPID | _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC), "unshare")
    return True


def die_with_parent() -> None:
    """SIGKILL this process when the process that forked it ends (Linux only)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _untraversable(path: str) -> str | None:
    """The outermost folder above `path` that other users may not enter (e.g. /root), if any."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts) + 1):
        folder = os.sep + os.path.join(*parts[:i])
        try:
            if not os.stat(folder).st_mode & 0o001:
                return folder
        except OSError:
            return None
    return None


def private_view(hidden: list[str], needed: list[str], workdir: str, tmp_size: int) -> None:
    """In the run (process 1 of its namespaces): hide folders and files, private /tmp, /dev/shm and /proc.

    Folders in `needed` (Python, its packages, the grader) stay readable even where they sit under
    something covered: under /tmp, or under a folder other users may not enter such as /root (where
    pyenv puts Python), which is covered by an empty folder with only the needed paths put back.
    """
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)  # nothing mounted here reaches the host
    for path in hidden:
        if os.path.isdir(path):
            _mount("hidden", path, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=4k,mode=0555")
        elif os.path.isfile(path):  # a file in a folder the run needs (a notebook beside the grader): empty it
            _mount("/dev/null", path, None, _MS_BIND)
    flags = _MS_NOSUID | _MS_NODEV
    covers = {"/tmp": f"size={tmp_size},mode=1777"}
    for path in needed:
        closed = _untraversable(path)
        if closed and closed != path and not any(closed.startswith(c + os.sep) for c in covers):
            covers.setdefault(closed, "size=4k,mode=0755")  # (under /tmp, the fresh /tmp covers it already)
    keep = {}  # needed folders under a cover, held open so that they can be put back after it
    for path in needed:
        if os.path.isdir(path) and any(path.startswith(c + os.sep) for c in covers):
            keep[path] = os.open(path, os.O_PATH | os.O_DIRECTORY)
    for cover, options in sorted(covers.items()):
        _mount("cover", cover, "tmpfs", flags, options)
    for path, fd in sorted(keep.items()):
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        _mount("none", path, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | flags)
        os.close(fd)
    for cover in covers:
        if cover != "/tmp":
            _mount("none", cover, None, _MS_REMOUNT | _MS_RDONLY | flags, "size=4k,mode=0755")
    if os.path.isdir("/dev/shm"):
        _mount("shm", "/dev/shm", "tmpfs", flags, f"size={tmp_size},mode=1777")
    for shared in ("/var/tmp", "/run/lock"):  # other folders everyone may write to: private and small
        if os.path.isdir(shared) and not os.path.islink(shared):
            _mount("private", shared, "tmpfs", flags, "size=1m,mode=1777")
    try:  # the rest of the root file system read-only in this view (where the container allows)
        _mount("none", "/", None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY)
    except OSError:
        pass  # a user id of its own still cannot write root's files
    _mount("proc", "/proc", "proc", flags | _MS_NOEXEC)
    os.makedirs(workdir, mode=0o700)


def _mapped_bytes() -> int:
    """This process's virtual memory size (VmSize), or 0 where /proc cannot say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def drop_privileges(limits: Limits, workdir: str, uid: int) -> None:
    """Set the limits; where root, become `uid`, which owns nothing but `workdir` and belongs to no group."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
    resource.setrlimit(resource.RLIMIT_DATA, (limits.memory, limits.memory))
    # RLIMIT_DATA does not count shared mappings (mmap of anonymous shared memory): cap the address space
    # too, at what the fork of the worker already maps (torch's reservations included) plus the memory cap
    mapped = _mapped_bytes()
    if mapped:
        resource.setrlimit(resource.RLIMIT_AS, (mapped + limits.memory, mapped + limits.memory))
    if available():
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        os.chown(workdir, uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    die_with_parent()  # again: a change of user id clears the parent-death signal
