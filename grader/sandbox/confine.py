"""Confinement of one job of student code on Linux, applied in the worker's forks before the first cell.

Runs in the worker's forked processes, never in the grader. Two modes give the same guarantees:

- `root` (a container, Gradescope, a course server): the kernel's namespaces directly, and a user id
  of its own per job (`UID_BASE` plus its supervisor's pid), with no groups and no privileges;
- `userns` (an ordinary user, where the kernel allows unprivileged user namespaces): the same
  namespaces inside a user namespace of the job's own, and the notebook in a second, nested one
  where it holds no privilege over anything the job set up.

Either way every job gets:

- its own PID namespace: everything it starts dies with process 1 of it, whatever session or process
  group it moved to, and it cannot see or signal the grader;
- its own network namespace with nothing in it: no network at all, loopback included; its own IPC;
- a file system of its own (`private_view`): an empty root with only what the run needs put back
  read-only (the system's programs and libraries, /etc, Python and its packages, the grader package),
  a fresh size-capped /tmp (its working folder, the only place it can write) and /dev/shm, a few
  device nodes and its own /proc. No home folder, /var, /srv, /mnt or /media; anything the grader hides
  (solutions, rubric, other submissions, the output folder) is covered even where it sits inside a
  folder that is put back;
- limits: no core files, RLIMIT_FSIZE, RLIMIT_DATA and RLIMIT_AS, and RLIMIT_NPROC counted for the
  job alone (its own user id as root; its own user namespace otherwise, Linux 5.14 and later);
- `no_new_privs`, and death with its parent along the whole chain.

`problem(mode)` says, by trying it in a throwaway process, why a mode does not work on this machine.
Linux only.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import resource
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grader.sandbox.limits import Limits

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = (
    0x00020000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = (
    1,
    2,
    4,
    8,
    32,
    1024,
    2048,
    4096,
)
_MS_REC, _MS_PRIVATE, _MS_RELATIME, _MS_STRICTATIME = 0x4000, 0x40000, 1 << 21, 1 << 24
_MNT_DETACH = 2
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "s390x": 280}
_KEYCTL_JOIN_SESSION_KEYRING = 1
OPEN_FILES = 1024
"""Files a run may hold open at once (RLIMIT_NOFILE): each pins kernel memory."""
UID_BASE = 1_000_000
"""As root, each job's user id is this plus its supervisor's process id: unique among the jobs alive at once."""
RUN_UID = 1000
"""As an ordinary user, the notebook's user id inside its own user namespace (the real one outside)."""
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""What every run sees of the system, read-only: programs, libraries, their configuration."""
DEVICES = ("null", "zero", "full", "random", "urandom")

_LIBC = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _LIBC.mount(
            os.fsencode(source),
            os.fsencode(target),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _map_ids(inside: int, uid: int, gid: int) -> None:
    """Right after unsharing a user namespace: `inside` there is `uid`/`gid` of the namespace above.

    One id each, our own: what an ordinary user may map. Denying setgroups is the price of the group map.
    """
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inside} {uid} 1")
    _write("/proc/self/gid_map", f"{inside} {gid} 1")


def new_namespaces(mode: str) -> None:
    """In the supervisor, before it forks process 1: PID, mount, network and IPC namespaces for its children.

    IPC: System V shared memory made by a run goes with it, and counts for nobody else.
    """
    flags = _CLONE_NEWPID | _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC
    # a session keyring of its own: the grader's (Kerberos, AFS, cifs credentials) is not the job's to read
    keyctl = _SYS_KEYCTL.get(os.uname().machine)
    if keyctl is not None:
        _LIBC.syscall(keyctl, _KEYCTL_JOIN_SESSION_KEYRING, None)  # no keyrings in this kernel: nothing to hide
    if mode == "root":
        _check(_LIBC.unshare(flags), "unshare")
        return
    uid, gid = os.geteuid(), os.getegid()
    _check(_LIBC.unshare(flags | _CLONE_NEWUSER), "unshare")
    _map_ids(0, uid, gid)  # root of this namespace only: enough to mount, nothing outside it


def die_with_parent() -> None:
    """SIGKILL this process when the process that forked it ends."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def needed() -> list[str]:
    """Folders and files of Python a run must read: the interpreter, its packages, the grader package.

    Computed in the worker, from its own `sys.path` (started with -P: no current folder in it), as
    spelled there: `private_view` binds their real paths and mirrors the symlinks on the way. The folder
    that holds the grader package (a source checkout) is not needed, only the package itself: beside it
    lie the solutions, the tests and the history. Neither is a folder that holds a home folder.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    holder = os.path.dirname(package)
    try:
        home = os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        home = "/"
    paths = []
    for path in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path, package):
        path = os.path.abspath(path) if path else ""
        if not path or path == holder or not os.path.exists(path):
            continue
        if _inside(home, os.path.realpath(path)):  # `PYTHONPATH=~`: never the whole home
            continue
        paths.append(path)
    return list(dict.fromkeys(paths))


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _outermost(paths: list[str]) -> list[str]:
    """`paths` without those inside another of them."""
    out: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(_inside(path, o) for o in out):
            out.append(path)
    return out


def _flags_of(path: str) -> int:
    """The mount flags a read-only remount of `path` must keep (a user namespace may not drop them)."""
    st = os.statvfs(path)
    flags = 0
    for st_flag, ms_flag in (
        (os.ST_NOSUID, _MS_NOSUID),
        (os.ST_NODEV, _MS_NODEV),
        (os.ST_NOEXEC, _MS_NOEXEC),
        (os.ST_NOATIME, _MS_NOATIME),
        (os.ST_NODIRATIME, _MS_NODIRATIME),
        (os.ST_RELATIME, _MS_RELATIME),
    ):
        if st.f_flag & st_flag:
            flags |= ms_flag
    if not st.f_flag & (os.ST_NOATIME | os.ST_RELATIME):
        flags |= _MS_STRICTATIME
    return flags


def _read_only(path: str) -> None:
    _mount("none", path, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _flags_of(path))


def _mount_points(under: list[str]) -> list[str]:
    """Every mount point at or below one of `under`, from this process's mountinfo (its root's view)."""
    points = []
    with open("/oldroot/proc/self/mountinfo", "rb") as f:
        for line in f:
            # the mount point is the fifth field, with space, tab, newline and backslash as \NNN octal
            raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), line.split()[4])
            point = os.fsdecode(raw)
            if any(_inside(point, u) for u in under):
                points.append(point)
    return points


def _pivot_root(new: str, old: str) -> None:
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(0, f"pivot_root: unknown system call number on {os.uname().machine}")
    _check(_LIBC.syscall(number, os.fsencode(new), os.fsencode(old)), "pivot_root")


def _mirror_links(path: str, depth: int = 0) -> None:
    """Make the symlinks on the way to `path` in the old root (`/home -> /data/home`, `/lib64 -> usr/lib64`)
    again in the new one, so that the path resolves here as it did there (to what is bound)."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:i])
        old = "/oldroot" + prefix
        if not os.path.islink(old):
            continue
        target = os.readlink(old)
        if not os.path.lexists(prefix):
            os.makedirs(os.path.dirname(prefix), exist_ok=True)
            os.symlink(target, prefix)
        if depth < 8:  # the link's own target may pass through links too
            _mirror_links(os.path.normpath(os.path.join(os.path.dirname(prefix), target)), depth + 1)
        return


def private_view(hidden: list[str], workdir: str, tmp_size: int) -> bool:
    """In process 1 of the job's namespaces: a root file system holding only what the run needs. Returns
    whether `renew_tmp` can give a later run an empty /tmp (nothing of the host's is bound inside it).

    An empty tmpfs becomes the root; the old one, moved to /oldroot, lends it the system folders and
    `needed()`: each real path bound read-only at its own place (mounts below it included), each other
    spelling a symlink to it, as in the old root. `hidden` paths (real paths) that lie inside what is
    lent are covered: an empty read-only folder, or an empty file.
    """
    given = [p for p in SYSTEM if os.path.lexists(p)] + needed()
    keep = _outermost([os.path.realpath(p) for p in given if os.path.exists(p)])
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)  # nothing mounted here reaches the host
    safe = _MS_NOSUID | _MS_NODEV
    _mount("root", "/tmp", "tmpfs", safe, "size=1m,nr_inodes=4k,mode=0755")
    os.mkdir("/tmp/oldroot")
    _pivot_root("/tmp", "/tmp/oldroot")
    os.chdir("/")
    # the run's own /tmp first: a Python or a checkout under the host's /tmp is bound on top of it
    os.mkdir("/tmp")
    _mount("tmp", "/tmp", "tmpfs", safe, f"size={tmp_size},nr_inodes=16k,mode=1777")
    for path in keep:
        source = "/oldroot" + path
        if os.path.isdir(source):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
        _mount(source, path, None, _MS_BIND | _MS_REC)
    for path in given:
        if os.path.realpath("/oldroot" + path) != "/oldroot" + path:
            _mirror_links(path)
    for path in _mount_points(keep):
        _read_only(path)
    _devices(tmp_size)
    for path in hidden:
        if not any(_inside(path, k) for k in keep) or not os.path.lexists(path):
            continue  # not in the view at all
        if os.path.isdir(path):
            _mount("hidden", path, "tmpfs", _MS_RDONLY | safe | _MS_NOEXEC, "size=4k,nr_inodes=16,mode=0555")
        else:  # a file in a folder the run needs (a notebook beside the grader): empty it
            _mount("/dev/null", path, None, _MS_BIND)
    os.makedirs("/proc", exist_ok=True)
    _mount("proc", "/proc", "proc", safe | _MS_NOEXEC)  # while the old /proc is still there: the kernel wants one
    _check(_LIBC.umount2(b"/oldroot", _MNT_DETACH), "umount /oldroot")
    os.rmdir("/oldroot")
    _mount("none", "/", None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | safe)
    os.makedirs(workdir, mode=0o700)
    return not any(_inside(path, "/tmp") for path in (*keep, *given))


def _devices(tmp_size: int) -> None:
    """A /dev of the few device nodes a run needs (bound from the old root), read-only, with its own /dev/shm."""
    os.mkdir("/dev")
    _mount("dev", "/dev", "tmpfs", _MS_NOSUID | _MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755")
    for device in DEVICES:
        open(f"/dev/{device}", "w").close()
        _mount(f"/oldroot/dev/{device}", f"/dev/{device}", None, _MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/shm")
    _mount("shm", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={tmp_size},nr_inodes=4k,mode=1777")
    _mount("none", "/dev", None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NOEXEC)  # its nodes only


def renew_tmp(workdir: str, tmp_size: int) -> None:
    """In process 1, between two runs (every process of the last one gone): an empty /tmp and /dev/shm in place
    of the last run's, whatever it left there; the tmpfs it wrote goes, and its memory with it. Only where
    `private_view` said nothing of the host's lies inside /tmp."""
    safe = _MS_NOSUID | _MS_NODEV
    for name, path, inodes in (("tmp", "/tmp", "16k"), ("shm", "/dev/shm", "4k")):  # as `private_view` made them
        _check(_LIBC.umount2(os.fsencode(path), _MNT_DETACH), f"umount {path}")
        _mount(name, path, "tmpfs", safe, f"size={tmp_size},nr_inodes={inodes},mode=1777")
    os.makedirs(workdir, mode=0o700)


def _status_bytes(field: str) -> int:
    """A size from /proc/self/status (`VmSize`, `VmData`), in bytes, or 0 where /proc cannot say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def drop_privileges(limits: Limits, workdir: str, uid: int, mode: str) -> None:
    """Set the limits (a `Limits`), then keep no privilege: as root become `uid`, which owns nothing but
    `workdir` and belongs to no group; as an ordinary user enter a nested user namespace as `RUN_UID`."""
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_FSIZE, limits.file_size)
    _limit(resource.RLIMIT_NOFILE, OPEN_FILES)
    # Both counted from what the fork of the worker has already (torch and the data): the cap is on what
    # the notebook adds, so a cap fitted to a small container still leaves the run room to work.
    # RLIMIT_DATA does not count shared mappings (mmap of anonymous shared memory): cap the address space too.
    _limit(resource.RLIMIT_DATA, _status_bytes("VmData") + limits.memory)
    mapped = _status_bytes("VmSize")
    if mapped:
        _limit(resource.RLIMIT_AS, mapped + limits.memory)
    # Where memory runs out outside the run's own cap (the container's), the kernel ends a run, not the grader
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    if mode == "root":
        _limit(resource.RLIMIT_NPROC, limits.processes)
        for folder, _, files in os.walk(workdir):  # its data files too: the run may write beside them
            for name in (folder, *(os.path.join(folder, f) for f in files)):
                os.chown(name, uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    else:
        # Root of the job's namespace could undo its mounts; in a namespace below it, the notebook holds
        # no capability over them (they are locked), and the kernel (5.14+) counts RLIMIT_NPROC per
        # user namespace: the cap is on this job's processes, not on all of the user's.
        _check(_LIBC.unshare(_CLONE_NEWUSER), "unshare")
        _map_ids(RUN_UID, 0, 0)
        if _counts_per_namespace():
            _limit(resource.RLIMIT_NPROC, limits.processes)
    _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    die_with_parent()  # again: a change of user id clears the parent-death signal


def _limit(which: int, value: int) -> None:
    """Set an rlimit to `value`, or to the hard limit already there where that is lower (`ulimit -v` on a
    course server): raising it would fail, and lower is what was wanted anyway."""
    _, hard = resource.getrlimit(which)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))


def _counts_per_namespace() -> bool:
    """Whether this kernel counts RLIMIT_NPROC per user namespace (5.14 and later). Before, it counts
    every process of the real user, and a cap of 64 would stop the notebook's own threads."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 14)


# --- can this machine do it? ------------------------------------------------------------------------

_SETTINGS = (
    "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    "/proc/sys/kernel/unprivileged_userns_clone",
    "/proc/sys/user/max_user_namespaces",
)


def _try(mode: str) -> None:
    """In a throwaway process: everything a job does to confine itself, then exit 0 (or the error, 1)."""
    try:
        new_namespaces(mode)
        pid = os.fork()
        if pid == 0:  # process 1 of the namespaces
            try:
                private_view([], "/tmp/run", 2**20)
                inner = os.fork()
                if inner == 0:
                    try:
                        if mode == "userns":
                            _check(_LIBC.unshare(_CLONE_NEWUSER), "unshare")
                            _map_ids(RUN_UID, 0, 0)
                        else:  # root inside a container's user namespace may not have ids to spare
                            os.setgroups([])
                            os.setgid(UID_BASE + os.getpid())
                            os.setuid(UID_BASE + os.getpid())
                        os._exit(0)
                    except BaseException as e:
                        print(e, file=sys.stderr)
                        os._exit(1)
                os._exit(os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1]))
            except BaseException as e:
                print(e, file=sys.stderr)
                os._exit(1)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except BaseException as e:
        print(e, file=sys.stderr)
        code = 1
    sys.stderr.flush()
    os._exit(code)


def problem(mode: str) -> str | None:
    """Why `mode` cannot confine a job on this machine, naming the setting to look at; None if it can."""
    if mode == "root" and os.geteuid() != 0:
        return "not root"
    try:  # this file as a script, in an interpreter without site-packages: 20 ms, not the package's imports
        done = subprocess.run(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), mode], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not try it ({e})"
    if done.returncode == 0:
        return None
    why = (done.stderr.strip().splitlines() or ["it failed"])[-1]
    if mode == "root":
        return f"namespaces refused ({why})"
    settings = []
    for path in _SETTINGS:
        try:
            with open(path) as f:
                settings.append(f"{path.removeprefix('/proc/sys/').replace('/', '.')}={f.read().strip()}")
        except OSError:
            pass
    return (
        f"unprivileged user namespaces refused ({why}; see sysctl {', '.join(settings) or 'user.max_user_namespaces'})"
    )


if __name__ == "__main__":  # `problem()` runs this file to try a mode
    _try(sys.argv[1])
