"""The portable backend: a fresh interpreter per job, watched from the grader, on every platform.

Where the Linux backend cannot work (macOS, Windows, a kernel that refuses user namespaces) each job
runs in an interpreter of its own (`grader.sandbox.portable_child`), started ahead of time so that it
imports torch and runs the setup cells while the grader computes its references or grades the job
before. A watchdog here (psutil, which knows process trees and memory on every platform) holds:

- the wall-clock timeout, restarted as each run of the job begins (its progress file says so);
- a memory cap on the resident memory of the whole process tree, checked every `POLL` seconds;
- a cap on what the notebook prints;
- the end of everything the job started: its process tree as seen at every check, its process group
  where there is one, and any process since its start that carries the job's token in its environment.

What it cannot hold: the notebook runs as the user running the grader, so it can read and write what
that user can (the rubric included) and use the network. `grader.sandbox` warns in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from grader.errors import SandboxError
from grader.plan import Plan, PlannedCell
from grader.runs import Captured
from grader.sandbox import snapshot as snapshots
from grader.sandbox.environment import child_env, worker_folder
from grader.sandbox.jobs import plain, warm_start
from grader.sandbox.limits import OUTPUT_TAIL, WORKER_START_TIMEOUT, Limits
from grader.sandbox.results import Ended, Run, collect

POLL = 0.05
"""Seconds between two looks at a job's interpreter (its memory, its output, the time)."""
TREE_EVERY = 4
"""Looks between two walks of the whole process tree (a walk reads every process of the machine)."""
TOKEN = "GRADER_JOB"
"""The environment variable that marks every process of a job (inherited unless the notebook clears it)."""


def _session() -> dict:
    """Popen arguments that put the child in a process group of its own, where the platform has them."""
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


class _Interpreter:
    """One fresh interpreter for one job, started before the job is known."""

    def __init__(self, spec_path: Path, env: dict[str, str], snapshot: dict[str, str] | None = None) -> None:
        self.snapshot = snapshot  # what it was told of the setup snapshot (`Worker.snapshot`)
        self.snapshot_made = ""  # the digest of the setup snapshot it saved, once ready
        self.folder = Path(tempfile.mkdtemp(prefix="grader-run-"))  # its working folder once its job starts
        self.token = secrets.token_hex(16)
        self.wall_started = time.time()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the worker, closed in close()
        self.ready = False
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "grader.sandbox.portable_child", str(spec_path)],
            # the setup cells run in the worker's folder, beside the data files, as on Linux
            cwd=spec_path.parent,
            env=env
            | {"HOME": str(self.folder), "USERPROFILE": str(self.folder), TOKEN: self.token}
            | ({snapshots.ENVIRONMENT: json.dumps(snapshot)} if snapshot else {}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            **_session(),
        )

    def wait_ready(self) -> None:
        """Block until it has imported torch and run the setup cells; `SandboxError` if it cannot."""
        if self.ready:
            return
        timer = threading.Timer(WORKER_START_TIMEOUT, self.process.kill)
        timer.start()
        try:
            assert self.process.stdout is not None
            line = self.process.stdout.readline().decode("utf-8", "replace").strip()
        finally:
            timer.cancel()
        word, _, made = line.partition(" ")
        if word != "ready":
            self.kill()
            self.log.seek(0)
            stderr = self.log.read().decode("utf-8", "replace")[-OUTPUT_TAIL:]
            raise SandboxError(f"the worker process did not start: {line or 'it exited'} {stderr}".strip())
        self.snapshot_made = made
        self.ready = True

    def send(self, job: dict) -> None:
        """Hand it the job; the pipe stays open until `close()`: the child ends itself when it closes."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(job).encode() + b"\n")
            self.process.stdin.flush()
        except OSError as e:
            raise SandboxError(f"the worker process is gone ({e})") from e

    def kill(self) -> int:
        """End it and everything it started; returns how many of those were still running besides it."""
        if self.process.returncode is not None:  # reaped already, by the job that watched it
            return 0
        return _kill(_process(self.process.pid), {}, self)

    def close(self) -> None:
        self.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.log):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:  # gone already (Windows forgets an ended process at once)
        return None


def _kill(root: psutil.Process | None, seen: dict[int, psutil.Process], interpreter: _Interpreter) -> int:
    """Kill `root`, every process `seen` in its tree, its process group, and any process carrying its
    token; count the others still running. Called before the interpreter is reaped: its process (a
    zombie if it ended) keeps its id, so the group is still the job's."""
    found = dict(seen)
    if root is not None:
        with contextlib.suppress(psutil.Error):
            found.update((p.pid, p) for p in root.children(recursive=True))
    for p in psutil.process_iter(["create_time"]):  # started since the job, and marked as the job's
        created = p.info.get("create_time")
        if created is None or created < interpreter.wall_started - 1 or p.pid in found:
            continue
        try:
            if p.environ().get(TOKEN) == interpreter.token:
                found[p.pid] = p
        except psutil.Error:  # ended meanwhile, or another user's
            pass
    found.pop(interpreter.process.pid, None)
    others = [p for p in found.values() if _running(p)]
    if os.name == "posix" and interpreter.process.returncode is None:
        try:  # what it left in its process group, even if it was never seen
            os.killpg(interpreter.process.pid, 9)
        except OSError:
            pass
    for p in ([root] if root is not None and _running(root) else []) + others:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(others, timeout=5)
    return len(others)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _resident(process: psutil.Process | None) -> int:
    """Resident memory of the interpreter."""
    try:
        return process.memory_info().rss if process is not None else 0
    except psutil.Error:
        return 0


def _unique(processes: list[psutil.Process]) -> int:
    """Memory of the interpreter's descendants that is theirs alone: a forked copy shares its parent's
    pages, which their resident sizes would count once per process."""
    total = 0
    for p in processes:
        try:
            total += p.memory_full_info().uss
        except psutil.AccessDenied:
            total += _resident(p)
        except psutil.Error:  # ended meanwhile
            pass
    return total


class Worker:
    """Fresh interpreters for one assignment and data set, each warmed up ahead of its job.

    The first starts at once; from the second job on (a batch), each job taken starts the next one. The
    first saves the setup snapshot (`snapshot`) and says its digest when ready, before any notebook ran in
    it; the ones started after load it instead of running the setup cells, if it is still that one.
    """

    def __init__(
        self,
        prefix: tuple[PlannedCell, ...],
        warm_up: list[str],
        data_files: dict[str, Path],
        hidden: list[Path],
        limits: Limits,
    ) -> None:
        self.prefix, self.limits = prefix, limits
        self.workdir = worker_folder(data_files)
        spec = {
            "prefix": plain(prefix),
            "warm_up": warm_up,
            "data": {name: str(self.workdir / name) for name in data_files},
        }
        self.spec_path = self.workdir / "spec.json"
        self.spec_path.write_text(json.dumps(spec), encoding="utf-8")
        self.env = child_env(self.workdir, own_path=True)
        self.lock = threading.Lock()
        self.taken = 0
        self.snapshot: dict[str, str] | None = {}
        """What interpreters are told of the setup snapshot: {} until the first is ready (each started meanwhile
        saves one, in a file of its own: two processes need not pickle alike), then where the first's is and its
        digest; None if the first saved none (the setup cannot be saved: every interpreter runs it)."""
        self.spares = [self._start()]

    def _start(self) -> _Interpreter:
        told = self.snapshot
        if told == {}:
            told = {"path": str(self.workdir / f"setup-{secrets.token_hex(8)}.snapshot")}
        try:
            return _Interpreter(self.spec_path, self.env, told)
        except OSError as e:
            raise SandboxError(f"could not start the worker process: {e}") from e

    def take(self) -> _Interpreter:
        """A warm interpreter for one job (waits for it to be ready)."""
        with self.lock:
            self.taken += 1
            interpreter = self.spares.pop(0) if self.spares else self._start()
            if self.taken > 1:
                self.spares.append(self._start())
        interpreter.wait_ready()
        with self.lock:
            if self.snapshot == {} and interpreter.snapshot is not None:  # the first to be ready
                made = interpreter.snapshot_made
                self.snapshot = {"path": interpreter.snapshot["path"], "digest": made} if made else None
        return interpreter

    def start(self, plans: list[Plan], labels: list[str], timeout: float, cell_timeout: float | None = None) -> Job:
        """A job running `plans` one after another (named `labels` in messages), not yet released: each run
        `timeout` seconds at most, each cell `cell_timeout`."""
        return Job(self, plans, labels, timeout, cell_timeout)

    def close(self) -> None:
        """Stop the interpreters not used yet and remove the worker's folder."""
        with self.lock:
            spares, self.spares = self.spares, []
        for interpreter in spares:
            interpreter.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Job:
    """All runs of one submission in one fresh interpreter: `release()` sends them, `wait()` returns
    what each brought back. Each run has `timeout` seconds of its own."""

    def __init__(
        self, worker: Worker, plans: list[Plan], labels: list[str], timeout: float, cell_timeout: float | None = None
    ) -> None:
        self.worker, self.timeout, self.cell_timeout = worker, timeout, cell_timeout
        self.folder = Path(tempfile.mkdtemp(prefix="grader-job-"))
        self.runs = [
            Run(plan, label, *warm_start(plan, worker.prefix), folder=self.folder, index=i)
            for i, (plan, label) in enumerate(zip(plans, labels))
        ]
        self.interpreter: _Interpreter | None = None
        self.started = time.monotonic()
        self.watcher: threading.Thread | None = None
        self.report: Ended | None = None

    def release(self) -> None:
        """Hand the job to a warm interpreter: from here on the notebook's cells run, watched by a thread
        of its own (a submission may have several jobs, waited for one after another)."""
        interpreter = self.worker.take()
        self.interpreter = interpreter
        self.started = time.monotonic()
        interpreter.send(
            {
                "runs": [r.job() for r in self.runs],
                "workdir": str(interpreter.folder),
                "cell_timeout": self.cell_timeout,
            }
        )
        self.watcher = threading.Thread(target=self._watch, args=(interpreter,), daemon=True)
        self.watcher.start()

    def _watch(self, interpreter: _Interpreter) -> None:
        """Wait for the job within its limits, end whatever it left, and say how it ended (`self.report`)."""
        limits, process = self.worker.limits, interpreter.process
        root = _process(process.pid)
        seen: dict[int, psutil.Process] = {}
        deadline, begun, peak, looks, children = self.started + self.timeout, 1, 0, 0, 0
        timed_out, over = False, ""
        # it has ended when its process is a zombie: not reaped yet, so its id and group are still the job's
        while root is not None and _running(root):
            time.sleep(POLL)
            now = time.monotonic()
            running = sum(1 for r in self.runs if r.started())
            if running > begun:  # the next run began: its own timeout from now
                begun, deadline = running, now + self.timeout
            looks += 1
            if looks % TREE_EVERY == 1:
                with contextlib.suppress(psutil.Error):
                    seen.update((p.pid, p) for p in root.children(recursive=True))
                seen = {pid: p for pid, p in seen.items() if _running(p)}
                children = _unique(list(seen.values()))
            peak = max(peak, _resident(root) + children)
            if now >= deadline:
                timed_out = True
            elif peak > limits.memory:
                over = "memory"
            elif any(r.output_size() > limits.file_size for r in self.runs):
                over = "file"
            if timed_out or over:
                break
        ended_by_us = timed_out or bool(over)
        stray = _kill(root, seen, interpreter)
        returncode = process.wait()
        self.report = Ended(
            returncode=returncode,
            timed_out=timed_out,
            over=over,
            memory_limit=limits.memory,
            stray=0 if ended_by_us else stray,
            max_rss_kb=peak // 1024,
            seconds=time.monotonic() - self.started,
        )

    def wait(self) -> list[Captured]:
        """Wait for the job (at most the timeout per run), then read each run's values."""
        try:
            if self.interpreter is None or self.watcher is None:
                return [r._unfinished("the run was never started") for r in self.runs]
            self.watcher.join()
            return collect(self.runs, self.report, self.timeout)
        finally:
            for r in self.runs:
                r.close()
            if self.interpreter is not None:
                self.interpreter.close()
            shutil.rmtree(self.folder, ignore_errors=True)
