"""The Linux backend, grader side: a warm worker that forks each run into namespaces of its own.

The worker (`grader.sandbox.linux_child`) imports torch and runs the released setup cells once; each
job is a fork of it, confined as `grader.sandbox.confine` describes, so no run pays for Python's start,
`import torch` or the data again (20-25 ms a run). Jobs are handed over on a Unix `SOCK_SEQPACKET`
socket with their files as descriptors; a supervisor per job reports how it ended on a pipe.

Linux only (fork, pidfd, namespaces): `grader.sandbox` imports this module only where it works.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from grader.errors import SandboxError
from grader.notebook import Plan, PlannedCell
from grader.sandbox import confine
from grader.sandbox.common import (OUTPUT_TAIL, SUPERVISOR_GRACE, WORKER_START_TIMEOUT, Limits, child_env, hideable,
                                   plain, warm_start, worker_folder)
from grader.sandbox.results import Captured, Run, collect


def _worker_limits() -> None:  # runs in the worker between fork and exec
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    confine.die_with_parent()  # the worker and its runs end with the grader, even if it is SIGKILLed


class Worker:
    """The grader's handle on one worker process: torch imported and the released setup cells run.

    One per assignment and value of the setup parameters (the data file). `submit` may be called from
    several threads at once; each job is a fork of the worker, confined as `confine.mode` says.
    """

    def __init__(self, prefix: tuple[PlannedCell, ...], warm_up: list[str], data_files: dict[str, Path],
                 hidden: list[Path], limits: Limits, mode: str) -> None:
        self.prefix = prefix
        self.workdir = worker_folder(data_files)
        self.lock = threading.Lock()
        self.ready = False
        spec = {
            "prefix": plain(prefix), "warm_up": warm_up,
            "data": {name: str(self.workdir / name) for name in data_files},
            "hidden": hideable([*hidden, self.workdir]), "limits": asdict(limits), "mode": mode,
        }
        spec_path = self.workdir / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # a file, not a pipe: what the worker and its forks print is read only if it fails to start, and a
        # pipe nobody reads would block them once full
        self.log = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "grader.sandbox.linux_child", str(spec_path), str(theirs.fileno())],
                cwd=self.workdir, env=child_env(self.workdir), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True,
                preexec_fn=_worker_limits, pass_fds=(theirs.fileno(),),
            )
        except OSError as e:
            self.close()
            raise SandboxError(f"could not start the worker process: {e}") from e
        finally:
            theirs.close()

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
        """Hand the worker one job: the job file, then the status pipe, then each run's three files."""
        with self.lock:
            self._wait_ready()
            try:
                socket.send_fds(self.sock, [b"run"], fds)
            except OSError as e:
                raise SandboxError(f"the worker process is gone ({e})") from e

    def start(self, plans: list[Plan], labels: list[str], timeout: float, cell_timeout: float | None = None) -> Job:
        """A job running `plans` one after another (named `labels` in messages), not yet released: each run
        `timeout` seconds at most, each cell `cell_timeout`."""
        return Job(self, [Run(plan, label, *warm_start(plan, self.prefix)) for plan, label in zip(plans, labels)],
                   timeout, cell_timeout)

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
    """All runs of one submission, in one confined process of the worker: `release()` sends them,
    `wait()` returns what each brought back.

    The runs go one after another, each from the state after the setup cells, each with `timeout`
    seconds of its own.
    """

    def __init__(self, worker: Worker, runs: list[Run], timeout: float, cell_timeout: float | None = None) -> None:
        self.worker, self.runs, self.timeout, self.cell_timeout = worker, runs, timeout, cell_timeout
        self.status: int | None = None
        self.started = time.monotonic()

    def release(self) -> None:
        """Send the job to the worker: from here on the notebook's cells run."""
        job = tempfile.TemporaryFile()
        job.write(json.dumps({"runs": [r.job() for r in self.runs], "timeout": self.timeout,
                              "cell_timeout": self.cell_timeout}).encode())
        job.seek(0)
        status_read, status_write = os.pipe()
        try:
            self.started = time.monotonic()
            self.worker.submit([job.fileno(), status_write, *(fd for r in self.runs for fd in r.fds())])
            self.status = status_read
        except BaseException:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)
            job.close()

    def _report(self) -> dict | None:
        """The supervisor's report, or None if it never came."""
        assert self.status is not None
        deadline = self.started + self.timeout * len(self.runs) + SUPERVISOR_GRACE
        data = b""
        watch = select.poll()  # not select(): a large batch has descriptors past 1024
        watch.register(self.status, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not watch.poll(left * 1000):
                return None
            chunk = os.read(self.status, 4096)
            if not chunk:
                break
            data += chunk
        try:
            report = json.loads(data)
        except ValueError:
            return None
        return report if isinstance(report, dict) else None

    def wait(self) -> list[Captured]:
        """Wait for the job (at most the timeout per run), then read each run's values."""
        try:
            if self.status is None:
                return [r._unfinished("the run was never started", 0.0, "") for r in self.runs]
            report = self._report()
            if report is not None and report.get("sandbox_error"):
                raise SandboxError(f"could not confine the notebook's run: {report['sandbox_error']}")
            seconds = float((report or {}).get("seconds", time.monotonic() - self.started))
            return collect(self.runs, report, self.timeout, seconds)
        finally:
            if self.status is not None:
                os.close(self.status)
                self.status = None
            for r in self.runs:
                r.close()
