"""The Linux backend, grader side: a warm worker that forks each run, confined, a submission's runs in one set
of namespaces.

The worker (`grader.sandbox.linux_child`) imports torch and runs the released setup cells once; each
run is a fork of it, confined as `grader.sandbox.confine` describes, so no run pays for Python's start,
`import torch` or the data again (20-25 ms a run). A job (a submission's runs on one worker) is handed over
on a Unix `SOCK_SEQPACKET` socket with its files as descriptors; its supervisor reports each run on a pipe of
the run's own.

Linux only (fork, pidfd, namespaces): `grader.sandbox` imports this module only where it works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from grader.errors import SandboxError
from grader.plan import Plan, PlannedCell
from grader.runs import Captured
from grader.sandbox.cgroups import Cap, Hierarchy
from grader.sandbox.environment import copy_data, hideable
from grader.sandbox.jobs import plain, warm_start
from grader.sandbox.limits import OUTPUT_TAIL, SUPERVISOR_GRACE, WORKER_START_TIMEOUT, Limits
from grader.sandbox.linux_start import Started
from grader.sandbox.results import Ended, Run, collect


@functools.cache
def _hierarchy() -> Hierarchy | None:
    """Where runs get a cgroup each, found once per grader process; None where they cannot."""
    return Hierarchy.find()[0]


class Worker:
    """The grader's handle on one worker process: torch imported and the released setup cells run.

    One per assignment and value of the setup parameters (the data file). `submit` may be called from
    several threads at once; each job is a fork of the worker, confined as `confine.mode` says.
    """

    def __init__(
        self,
        prefix: tuple[PlannedCell, ...],
        warm_up: list[str],
        data_files: dict[str, Path],
        hidden: list[Path],
        limits: Limits,
        mode: str,
        started: Started | None = None,
    ) -> None:
        """`started`: a worker process started before its assignment was known (`Started`), given its setup
        here; by default one started now."""
        self.prefix, self.limits = prefix, limits
        self.hierarchy = _hierarchy()
        self.started = started or Started()
        self.sock, self.process, self.log = self.started.sock, self.started.process, self.started.log
        self.workdir = self.started.workdir
        self.lock = threading.Lock()
        self.ready = False
        try:
            copy_data(self.workdir, data_files)
            spec = {
                "prefix": plain(prefix),
                "warm_up": warm_up,
                "data": {name: str(self.workdir / name) for name in data_files},
                "hidden": hideable([*hidden, self.workdir]),
                "limits": asdict(limits),
                "mode": mode,
            }
            spec_path = self.workdir / "spec.json"
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
        except OSError as e:  # (nothing of it reached the process: end it rather than leave it waiting)
            self.started.close()
            raise SandboxError(f"could not prepare the worker's folder: {e}") from e
        except BaseException:  # (the same, for anything else: a bug of ours, raised as it is)
            self.started.close()
            raise
        # Read by the worker once its torch is imported. A worker already gone (its start failed) is said so by
        # `_wait_ready`, with the worker's own last words, when the first job needs it.
        with contextlib.suppress(OSError):
            self.sock.send(os.fsencode(spec_path))

    def _wait_ready(self) -> None:
        if self.ready:
            return
        self.sock.settimeout(WORKER_START_TIMEOUT)
        try:
            line = self.sock.recv(4096).decode("utf-8", "replace").strip()
        except (TimeoutError, OSError) as e:
            line = f"no answer ({e})"
        finally:
            self.sock.settimeout(None)
        if line != "ready":
            stderr = ""
            if self.process.poll() is not None:
                self.log.seek(0)
                stderr = self.log.read().decode("utf-8", "replace")[-OUTPUT_TAIL:]
            raise SandboxError(f"the worker process did not start: {line or 'it exited'} {stderr}".strip())
        self.ready = True

    def submit(self, fds: list[int]) -> None:
        """Hand the worker one job (one run): the job file, then the status pipe, then the run's three files."""
        with self.lock:
            self._wait_ready()
            try:
                socket.send_fds(self.sock, [b"run"], fds)
            except OSError as e:
                raise SandboxError(f"the worker process is gone ({e})") from e

    def cap(self) -> Cap | None:
        """A new cgroup for one run, capping its tree (its private /tmp is memory too); None where the
        machine does not let the grader make one."""
        if self.hierarchy is None:
            return None
        try:
            return self.hierarchy.make(self.limits.memory + self.limits.tmp_size, self.limits.processes)
        except OSError as e:  # it worked when the pool started: a machine that changed under us is ours
            raise SandboxError(f"could not make the run's cgroup: {e}") from e

    def start(self, plans: list[Plan], labels: list[str], timeout: float, cell_timeout: float | None = None) -> Job:
        """A job running `plans` one after another (named `labels` in messages), not yet released: each run
        `timeout` seconds at most, each cell `cell_timeout`."""
        return Job(
            self,
            [Run(plan, label, *warm_start(plan, self.prefix)) for plan, label in zip(plans, labels)],
            timeout,
            cell_timeout,
        )

    def close(self) -> None:
        """Stop the worker (its runs end with it) and remove its folder."""
        self.sock.close()
        process = getattr(self, "process", None)
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Job:
    """All runs of one submission on one worker: `release()` starts them, `wait()` returns what each brought back.

    Each run is a confined process of its own, forked in turn by process 1 of one set of namespaces made
    for the job, holding only its own result files and its own clock (`timeout` seconds), and, where the
    machine allows, a cgroup of its own that caps its whole process tree (`cgroups`). Between two runs
    process 1 kills and reaps every process of the last and gives the next an empty /tmp and /dev/shm.
    """

    def __init__(self, worker: Worker, runs: list[Run], timeout: float, cell_timeout: float | None = None) -> None:
        self.worker, self.runs, self.timeout, self.cell_timeout = worker, runs, timeout, cell_timeout
        self.released = False
        self.status: list[int] = []
        self.caps: list[Cap | None] = []
        self.stamps: list[dict[str, float]] = []
        self.started = time.monotonic()

    def release(self) -> None:
        """Start the runs: from here on the notebook's cells run."""
        self._send()
        self.released = True

    def _send(self) -> None:
        """Hand the worker the job: the job file, each run's status pipe, each run's cgroup files, each run's
        three files."""
        job = tempfile.TemporaryFile()  # noqa: SIM115 -- handed to the job's supervisor, closed after it
        joins: list[int] = []
        theirs: list[int] = []
        try:
            for _ in self.runs:
                stamps = {"cap": time.monotonic()}
                cap = self.worker.cap()
                self.caps.append(cap)
                stamps["capped"] = time.monotonic()
                self.stamps.append(stamps)
                joins += cap.join_files() if cap else []
                read, write = os.pipe()
                self.status.append(read)
                theirs.append(write)
            job.write(
                json.dumps(
                    {
                        "runs": [run.job() for run in self.runs],
                        "timeout": self.timeout,
                        "cell_timeout": self.cell_timeout,
                        "cgroups": len(joins) // len(self.runs),
                    }
                ).encode()
            )
            job.seek(0)
            self.started = time.monotonic()
            self.worker.submit([job.fileno(), *theirs, *joins, *(fd for run in self.runs for fd in run.fds())])
            for stamps in self.stamps:
                stamps["sent"] = time.monotonic()
        except BaseException:
            self._close()
            raise
        finally:
            for fd in (*theirs, *joins):
                os.close(fd)
            job.close()

    def _report(self, i: int) -> Ended | None:
        """The supervisor's report on run `i`, or None if it never came."""
        deadline = self.started + self.timeout + SUPERVISOR_GRACE
        data = b""
        watch = select.poll()  # not select(): a large batch has descriptors past 1024
        watch.register(self.status[i], select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not watch.poll(left * 1000):
                return None
            chunk = os.read(self.status[i], 4096)
            if not chunk:
                break
            data += chunk
        try:
            return Ended.from_json(json.loads(data))
        except (ValueError, RecursionError, OverflowError):  # (JSON allows Infinity and numbers of any size)
            return None

    def _end_cap(self, i: int) -> str:
        """Which of run `i`'s cgroup caps stopped something (`Cap.held`); the cgroup is removed."""
        cap = self.caps[i] if i < len(self.caps) else None
        if cap is None:
            return ""
        self.caps[i] = None
        try:
            return cap.held()
        finally:
            cap.remove()

    def _wait_one(self, i: int) -> Captured:
        run, stamps = self.runs[i], self.stamps[i]
        report = self._report(i)
        stamps["report"] = time.monotonic()
        self.started = time.monotonic()  # the next run's clock starts when this one is done
        os.close(self.status[i])
        self.status[i] = -1
        held = self._end_cap(i)
        stamps["uncapped"] = time.monotonic()
        if report is not None and report.sandbox_error:
            raise SandboxError(f"could not confine the notebook's run: {report.sandbox_error}")
        if report is not None and not report.began:
            return dataclasses.replace(run._unfinished("it did not run: its process 1 ended first"), started=False)
        if report is not None and held:
            caps = tuple(held.split())
            report = replace(report, held=caps, memory_limit=self.worker.limits.memory + self.worker.limits.tmp_size)
            killed = report.returncode == -9 and not report.timed_out
            if killed and "memory" in caps:  # the OOM killer chose the notebook's own process
                report = replace(report, over="memory", cap="cgroup")
            elif killed and "outer-memory" in caps:
                report = replace(report, over="memory", cap="outer")
        captured = collect([run], report, self.timeout)[0]
        stamps["collected"] = time.monotonic()
        timings = os.environ.get("GRADER_TIMINGS")
        if timings and report is not None and report.stamps:
            # (benchmarks/batch_speed.py's breakdown of where a run's time goes; one JSON line per run)
            with open(timings, "a", encoding="utf-8") as f:
                f.write(json.dumps(stamps | dict(report.stamps)) + "\n")
        return captured

    def wait(self) -> list[Captured]:
        """Each run in turn (at most the timeout each), then what each brought back."""
        try:
            if not self.released:
                return [run._unfinished("the run was never started") for run in self.runs]
            return [self._wait_one(i) for i in range(len(self.runs))]
        finally:
            self._close()

    def _close(self) -> None:
        for i, fd in enumerate(self.status):
            if fd >= 0:
                os.close(fd)
                self.status[i] = -1
        for i in range(len(self.caps)):
            self._end_cap(i)
        for r in self.runs:
            r.close()
