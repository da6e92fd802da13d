"""A cap on the memory and the processes of a run's whole process tree: a control group per run.

The rlimits `confine.drop_privileges` sets are per process: a notebook that starts 60 processes may
use 60 times the memory cap, and the machine (or the container the grader runs in) runs out before
any single process reaches it. Where the grader may make control groups, each run gets one of its
own, made by the grader before the run starts and joined by the run's process 1 before it starts
anything, so that everything the notebook starts is in it:

- `memory`: the run's whole tree together at most `memory` bytes (its private /tmp included, which
  is memory too); past it, the kernel's OOM killer ends a process of this run only;
- `pids`: at most `processes` processes and threads in the tree;
- after the run, `Cap.held()` says which of the two caps stopped something, for the report.

Where it works: cgroup v1 (a `memory` and a `pids` hierarchy), and cgroup v2 where the grader's own
cgroup already hands both controllers to its children (`cgroup.subtree_control`). It needs write
access to the grader's own cgroup: root on a plain machine, or a delegated cgroup. Elsewhere
`Hierarchy.find()` returns None and why; the per-process rlimits still hold.

Grader side of the Linux backend. Only file operations under /sys/fs/cgroup are used.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_UNLIMITED = 2**60
"""Limits at or above this mean none (v1 writes 9223372036854771712 for no limit)."""
_COUNTER = itertools.count()


def _mounts() -> dict[str, Path]:
    """Where each cgroup hierarchy is mounted: `memory`, `pids` (v1) and `unified` (v2), as present."""
    found: dict[str, Path] = {}
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        mountpoint, fstype, options = Path(fields[1]), fields[2], fields[3].split(",")
        if fstype == "cgroup2":
            found.setdefault("unified", mountpoint)
        elif fstype == "cgroup":
            for controller in ("memory", "pids"):
                if controller in options:
                    found.setdefault(controller, mountpoint)
    return found


def _own_paths() -> dict[str, str]:
    """The grader's own cgroup in each hierarchy, relative to its mount: `memory`, `pids`, `unified`."""
    paths: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return paths
    for line in lines:
        number, controllers, path = line.split(":", 2)
        if number == "0" and controllers == "":
            paths["unified"] = path
        for controller in controllers.split(","):
            if controller in ("memory", "pids"):
                paths[controller] = path
    return paths


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


def _counts(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (`memory.events`, `pids.events`, `memory.oom_control`) as a dict."""
    counts: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return counts
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            counts[key] = int(value)
    return counts


def memory_limit() -> int | None:
    """The memory limit of the cgroup the grader runs in (a container's, Gradescope's 768 MB), or None.

    The smallest limit on the way from the grader's own cgroup up to the root of what is mounted: a
    container's limit is usually set on the container's cgroup, not on a child of it.
    """
    mounts, own = _mounts(), _own_paths()
    candidates: list[tuple[Path, str]] = []
    if "memory" in mounts and "memory" in own:
        candidates.append((mounts["memory"] / own["memory"].lstrip("/"), "memory.limit_in_bytes"))
    if "unified" in mounts and "unified" in own:
        candidates.append((mounts["unified"] / own["unified"].lstrip("/"), "memory.max"))
    limits = []
    for folder, name in candidates:
        root = folder
        while True:
            value = _read_int(root / name)
            if value is not None:
                limits.append(value)
            if root == root.parent or not (root.parent / name).exists():
                break
            root = root.parent
    return min(limits, default=None)


@dataclass(frozen=True)
class Hierarchy:
    """Where the grader makes a cgroup per run."""

    version: int
    """1 or 2."""
    folders: tuple[Path, ...]
    """The grader's own cgroup in each hierarchy to make runs' cgroups in (v1: memory, pids; v2: one)."""

    @staticmethod
    def find() -> tuple[Hierarchy | None, str]:
        """Where this process may make a cgroup per run, or None and why not."""
        mounts, own = _mounts(), _own_paths()
        if "memory" in mounts and "pids" in mounts and "memory" in own and "pids" in own:
            folders = tuple(mounts[c] / own[c].lstrip("/") for c in ("memory", "pids"))
            hierarchy = Hierarchy(1, folders)
        elif "unified" in mounts and "unified" in own:
            folder = mounts["unified"] / own["unified"].lstrip("/")
            try:
                delegated = set((folder / "cgroup.subtree_control").read_text(encoding="ascii").split())
            except OSError as e:
                return None, f"cgroup v2: {e}"
            if not {"memory", "pids"} <= delegated:
                return None, f"cgroup v2: {folder} does not hand memory and pids to its children"
            hierarchy = Hierarchy(2, (folder,))
        else:
            return None, "no cgroup memory and pids controllers are mounted"
        hierarchy.sweep()
        try:  # the only test that counts: make one
            probe = hierarchy.make(2**30, 64)
        except OSError as e:
            return None, f"cgroup v{hierarchy.version}: cannot make one in {hierarchy.folders[0]} ({e.strerror})"
        probe.remove()
        return hierarchy, ""

    def sweep(self) -> None:
        """Remove the cgroups of graders that are gone (killed with SIGKILL, say): empty ones only."""
        for folder in self.folders:
            for stale in folder.glob("grader-*"):
                try:
                    pid = int(stale.name.split("-")[1])
                    os.kill(pid, 0)
                except ProcessLookupError:
                    try:
                        stale.rmdir()
                    except OSError:
                        pass  # processes still in it, or another grader's: left alone
                except (ValueError, OSError):
                    continue

    def make(self, memory: int, processes: int) -> Cap:
        """A new cgroup with these caps. Raises OSError where it cannot be made."""
        # the random part: a grader killed before it removed its cgroups may have had this process id
        name = f"grader-{os.getpid()}-{next(_COUNTER)}-{secrets.token_hex(3)}"
        made: list[Path] = []
        try:
            for folder in self.folders:
                (folder / name).mkdir(mode=0o755)
                made.append(folder / name)
            cap = Cap(self.version, tuple(made), memory, processes)
            cap.configure()
        except OSError:
            for folder in reversed(made):
                _remove(folder)
            raise
        with _LIVE_LOCK:
            _LIVE.add(cap)
        return cap


@dataclass(frozen=True)
class Cap:
    """One run's cgroup (one folder per hierarchy)."""

    version: int
    """1 or 2."""
    folders: tuple[Path, ...]
    """v1: its folder in the memory hierarchy, then in the pids one; v2: its one folder."""
    memory: int
    """Bytes the whole tree may use."""
    processes: int
    """Processes and threads the whole tree may have."""

    def _file(self, name: str) -> Path:
        if self.version == 2:
            return self.folders[0] / name
        return self.folders[0 if name.startswith("memory.") else 1] / name

    def configure(self) -> None:
        if self.version == 1:
            self._file("memory.limit_in_bytes").write_text(str(self.memory))
            swap = self._file("memory.memsw.limit_in_bytes")
            if swap.exists():  # memory and swap together: swapping out is no way around the cap
                swap.write_text(str(self.memory))
        else:
            self._file("memory.max").write_text(str(self.memory))
            swap = self._file("memory.swap.max")
            if swap.exists():
                swap.write_text("0")
        self._file("pids.max").write_text(str(self.processes))

    def join_files(self) -> list[int]:
        """Descriptors of its `cgroup.procs` files, open for writing: the run's process 1 writes `0`
        to each (itself) before it starts anything. The caller closes them once they are sent."""
        fds: list[int] = []
        try:
            for folder in self.folders:
                fds.append(os.open(folder / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def held(self) -> str:
        """What stopped something in the run, space-separated: `memory` (this cap: the kernel killed a
        process of the run at it), `outer-memory` (a process of the run was killed when an enclosing
        limit, a container's or the machine's, ran out, this cap never reached), `processes`; or ''."""
        if self.version == 1:
            oom = _counts(self._file("memory.oom_control")).get("oom_kill", 0)
            # not memory.failcnt: it stays 0 when the kernel kills within the group rather than fail a charge
            reached = (_read_int(self._file("memory.max_usage_in_bytes")) or 0) >= self.memory - 2**20
        else:
            events = _counts(self._file("memory.events"))
            oom, reached = events.get("oom_kill", 0), events.get("max", 0) > 0
        refused = _counts(self._file("pids.events")).get("max", 0)
        memory = ("memory" if reached else "outer-memory") if oom else ""
        return " ".join(filter(None, (memory, "processes" if refused else "")))

    def remove(self, seconds: float = 1.0) -> None:
        """Kill what is still in the cgroup (a grader interrupted mid-run), then remove it (its killed processes
        may take a moment to leave: up to `seconds` for each folder)."""
        for folder in self.folders:
            _remove(folder, seconds)
        with _LIVE_LOCK:  # only now: a grader exiting meanwhile (`remove_live`) must still wait for it
            _LIVE.discard(self)


_LIVE: set[Cap] = set()
_LIVE_LOCK = threading.Lock()


def remove_live() -> None:
    """Remove every cgroup this process made and has not removed yet, killing what is in each: for a grader
    about to exit (SIGTERM, Ctrl-C, an error) while runs it started may still be going, on threads of its own."""
    with _LIVE_LOCK:
        caps = list(_LIVE)
    for cap in caps:  # (a process killed while the machine is busy may take seconds to leave its cgroup)
        cap.remove(seconds=10.0)


def _remove(folder: Path, seconds: float = 1.0) -> bool:
    """Remove one cgroup folder, killing its processes first; whether it is gone."""
    for attempt in range(max(1, int(seconds * 100))):
        try:
            folder.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:  # EBUSY: processes still in it
            if attempt % 10 == 0:
                _kill_members(folder)
            time.sleep(0.01)
    return False


def _kill_members(folder: Path) -> None:
    try:
        (folder / "cgroup.kill").write_text("1")  # cgroup v2, Linux 5.14 and later: the whole group at once
        return
    except OSError:
        pass
    try:
        members = (folder / "cgroup.procs").read_text(encoding="ascii").split()
    except OSError:
        return
    for pid in members:
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid), signal.SIGKILL)
