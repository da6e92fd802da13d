"""Stage 2: run a planned notebook away from the grader and bring back its values.

The only stage that touches student code, and it does so from a distance. A worker process
(`grader._child`) imports torch and runs the released setup cells once; each run is a fork of it,
confined as `grader._confine` describes (its own user, PID, mount and network namespaces on Linux as
root), with a wall-clock limit after which it and everything it started are killed. What comes back is
a safetensors file (plain tensors plus a JSON summary), size-capped and validated here.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from grader import _confine
from grader._confine import Limits
from grader.errors import SandboxError
from grader.notebook import PARAMS, Plan, PlannedCell, describe_cell
from grader.values import MISSING, UNCHANGED, Flag, NotTensor, Raised

MAX_RESULT_BYTES = 64 * 2**20
"""Largest result file read back."""
FILE_LIMIT = 64 * 2**20
"""Largest file a run may write, its captured output included (RLIMIT_FSIZE)."""
WORKER_START_TIMEOUT = 120.0
"""Seconds a worker may take to import torch and run the setup cells."""
SUPERVISOR_GRACE = 30.0
"""Seconds past a run's timeout to wait for its supervisor's report before giving up on it."""
MEMORY_LIMIT = 2 * 2**30
"""Bytes of data (heap and anonymous mappings, RLIMIT_DATA) a run may use. Not an address-space cap:
PyTorch and OpenBLAS reserve far more virtual memory than they touch."""
OUTPUT_TAIL = 2000
"""Characters of the child's own output kept for diagnostics."""

@dataclass(frozen=True)
class CellOutcome:
    """How one planned cell went."""

    label: str
    """The cell's label, e.g. `cell 9 (ex1)`."""
    error: str
    """`ExceptionType: message (line N)`, or empty if the cell ran without raising."""


@dataclass(frozen=True)
class Captured:
    """What came back from one run of a submission."""

    finished: bool
    """The child ran every cell and returned its values."""
    reason: str
    """Why not, naming the cell, when `finished` is False."""
    cells: tuple[CellOutcome, ...]
    """One per planned cell that ran (empty when not finished)."""
    values: dict[tuple[str, str], object]
    """(exercise, variable) -> a tensor, None, `MISSING`, `UNCHANGED` or a `NotTensor`."""
    seconds: float
    """Wall-clock time of the child."""
    output: str
    """The tail of what the notebook printed."""
    peak_memory_mb: float = 0.0
    """Largest resident memory of the run's process, in MB (pages shared with the worker included)."""
    notes: tuple[str, ...] = ()
    """What else the grader saw, e.g. processes the notebook left running."""


DEFAULT_LIMITS = Limits(memory=MEMORY_LIMIT, file_size=FILE_LIMIT, processes=64, tmp_size=256 * 2**20)
"""What each run may use unless the caller says otherwise."""


def _worker_limits() -> None:  # runs in the worker between fork and exec
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _confine.die_with_parent()  # Linux: the worker and its runs end with the grader, even if it is SIGKILLed


def _child_env(workdir: Path) -> dict[str, str]:
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONPATH": package_parent,  # so that a source checkout works like an installed package
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "ATEN_CPU_CAPABILITY": "default",  # same kernels as the reference: `exact` means the same
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",  # plots render off screen
    }
    for passthrough in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    return env


def _plain(cells: tuple[PlannedCell, ...] | list[PlannedCell]) -> list[dict]:
    return [{"source": c.source, "no_grad": c.no_grad, "guarded": c.guarded} for c in cells]


def _needed() -> list[Path]:
    """Folders a run must still be able to read: Python, its packages and the grader itself.

    Each as given and as resolved: a module imported through a symlinked path must be found there too.
    """
    given = [Path(os.path.abspath(p)) for p in (sys.prefix, sys.base_prefix, *sys.path, Path(__file__).parent) if p]
    return list(dict.fromkeys([*given, *(p.resolve() for p in given)]))


def _hideable(paths: list[Path]) -> list[str]:
    """The folders and files of `paths` that exist and hold nothing a run needs, outermost first."""
    needed = _needed()
    out: list[Path] = []
    for path in sorted({Path(p).resolve() for p in paths}, key=lambda p: len(p.parts)):
        if not path.exists() or path == Path("/") or any(n == path or path in n.parents for n in needed):
            continue
        if not any(o in path.parents for o in out if o.is_dir()):  # already hidden with its folder
            out.append(path)
    return [str(p) for p in out]


class Worker:
    """The grader's handle on one worker process: torch imported and the released setup cells run.

    One per assignment and value of the setup parameters (the data file). `submit` may be called from
    several threads at once; each run is a fork of the worker, confined as `grader._confine` says.
    """

    def __init__(self, prefix: tuple[PlannedCell, ...], warm_up: list[str], data_files: dict[str, Path],
                 hidden: list[Path], limits: Limits) -> None:
        self.prefix = prefix
        self.workdir = Path(tempfile.mkdtemp(prefix="grader-worker-"))
        self.lock = threading.Lock()
        self.ready = False
        for name, source in data_files.items():
            (self.workdir / name).parent.mkdir(parents=True, exist_ok=True)  # `data/names.txt`
            shutil.copyfile(source, self.workdir / name)
        spec = {
            "prefix": _plain(prefix), "warm_up": warm_up,
            "data": {name: str(self.workdir / name) for name in data_files},
            "hidden": _hideable([*hidden, self.workdir]), "needed": sorted({str(p) for p in _needed() if p.is_dir()}),
            "limits": asdict(limits),
        }
        spec_path = self.workdir / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "grader._child", str(spec_path), str(theirs.fileno())],
                cwd=self.workdir, env=_child_env(self.workdir), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
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
            if self.process.poll() is not None and self.process.stderr is not None:
                stderr = self.process.stderr.read().decode("utf-8", "replace")[-OUTPUT_TAIL:]
            raise SandboxError(f"the worker process did not start: {line or 'it exited'} {stderr}".strip())
        self.ready = True

    def submit(self, fds: list[int]) -> None:
        """Hand the worker one run: the job file, then the output, progress, result and status files."""
        with self.lock:
            self._wait_ready()
            try:
                socket.send_fds(self.sock, [b"run"], fds)
            except OSError as e:
                raise SandboxError(f"the worker process is gone ({e})") from e

    def start(self, plans: list[Plan], labels: list[str], timeout: float) -> Job:
        """A job running `plans` one after another (named `labels` in messages), not yet submitted."""
        return Job(self, [Run(plan, label, *warm_start(plan, self.prefix)) for plan, label in zip(plans, labels)],
                   timeout)

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
            if process.stderr is not None:
                process.stderr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def warm_start(plan: Plan, prefix: tuple[PlannedCell, ...]) -> tuple[int, list[int]]:
    """Where a run of `plan` can start from the worker's state: (first position to run, parameter cells to re-run).

    Only where the plan begins with exactly the worker's cells (the released parameters cell and the
    setup cells, byte for byte); the injected parameters may differ, and are then run again.
    """
    if len(plan.cells) < len(prefix):
        return 0, []
    preamble = []
    for i, (ours, theirs) in enumerate(zip(plan.cells, prefix)):
        if ours.grade_id == theirs.grade_id == PARAMS:
            if ours.source != theirs.source:
                preamble.append(i)
        elif (ours.source, ours.no_grad, ours.guarded) != (theirs.source, theirs.no_grad, theirs.guarded):
            return 0, []
    return len(prefix), preamble


class Pool:
    """Warm workers, one per assignment and data set, shared by every notebook graded while it is open."""

    def __init__(self, hidden: list[Path] | tuple[Path, ...] = (), limits: Limits = DEFAULT_LIMITS) -> None:
        self.hidden, self.limits = list(hidden), limits
        self.workers: dict[tuple, Worker] = {}
        self.lock = threading.Lock()

    def hide(self, paths: list[Path]) -> None:
        """Also hide `paths` from the runs of workers started from now on."""
        with self.lock:
            self.hidden += [p for p in paths if p not in self.hidden]

    def worker(self, key: tuple, make: Callable[[], tuple[tuple[PlannedCell, ...], list[str], dict[str, Path]]]) -> Worker:
        """The worker for `key`, started with `make()` -> (prefix, warm-up sources, data files) if need be."""
        with self.lock:
            if key not in self.workers:
                prefix, warm_up, data_files = make()
                self.workers[key] = Worker(prefix, warm_up, data_files, self.hidden, self.limits)
            return self.workers[key]

    def close(self) -> None:
        """Stop every worker."""
        with self.lock:
            for worker in self.workers.values():
                worker.close()
            self.workers.clear()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Run:
    """One run of a job: its plan, and the anonymous files its output, progress and values go to.

    The files were opened by this process and handed over as file descriptors, so nothing is read back
    by a path that the notebook could have replaced with a FIFO or a symlink.
    """

    def __init__(self, plan: Plan, label: str, start: int, preamble: list[int]) -> None:
        self.plan, self.label, self.start, self.preamble = plan, label, start, preamble
        self.output, self.progress, self.result = (tempfile.TemporaryFile() for _ in range(3))
        self.returncode = 0
        self.peak_memory_mb = 0.0
        self.notes: tuple[str, ...] = ()

    def job(self) -> dict:
        return {"cells": _plain(self.plan.cells), "captures": [asdict(c) for c in self.plan.captures],
                "start": self.start, "preamble": self.preamble}

    def fds(self) -> list[int]:
        return [self.output.fileno(), self.progress.fileno(), self.result.fileno()]

    def started(self) -> bool:
        return self.progress.seek(0, os.SEEK_END) > 0

    def close(self) -> None:
        for f in (self.output, self.progress, self.result):
            f.close()

    def captured(self, report: dict | None, timeout: float, seconds: float, current: Run | None) -> Captured:
        """What came back from this run, given the supervisor's `report` and the run that was going on last."""
        output = self._tail()
        self.peak_memory_mb = round(float((report or {}).get("max_rss_kb", 0)) / 1024, 1)
        self.returncode = int((report or {}).get("returncode", 1))
        stray = int((report or {}).get("stray", 0))
        self.notes = (f"the notebook left {stray} processes running when it ended; they were killed",) if stray else ()
        if report is None:
            return self._unfinished("the run's supervisor did not report back (the worker was stopped?)", seconds, output)
        if self.result.seek(0, os.SEEK_END) > 0 and self is not current:
            return self._read(seconds, output)
        if not self.started() and current is not None and current is not self:
            return self._unfinished(f"it did not run: the notebook's process ended in {current.label}", seconds, output)
        if report.get("timed_out") and self is current:
            return self._unfinished(f"timed out after {timeout:g} s in {self._current_cell()}", seconds, output)
        if self.returncode != 0:
            return self._unfinished(self._death(), seconds, output)
        return self._read(seconds, output)

    def _tail(self) -> str:
        size = self.output.seek(0, os.SEEK_END)
        self.output.seek(max(0, size - OUTPUT_TAIL))
        return self.output.read().decode("utf-8", "replace")

    def _current_cell(self) -> str:
        self.progress.seek(0)
        lines = self.progress.read(1 << 20).split()
        try:
            return describe_cell(self.plan.cells[int(lines[-1])])
        except (ValueError, IndexError):
            return "start-up, before the first cell"

    def _death(self) -> str:
        code = self.returncode
        where = self._current_cell()
        if code == -signal.SIGXFSZ:
            return f"the notebook wrote more than {FILE_LIMIT // 2**20} MB (output or a file) in {where}"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:  # real-time signals have no name
                name = str(-code)
            how = f"was killed by signal {name}"
        else:
            how = f"exited with code {code}"
        return f"the notebook's process {how} in {where} (os._exit, a crash or running out of memory?)"

    def _unfinished(self, reason: str, seconds: float, output: str) -> Captured:
        return Captured(False, reason, (), {}, seconds, output, self.peak_memory_mb, self.notes)


    def _read(self, seconds: float, output: str) -> Captured:
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load

        size = self.result.seek(0, os.SEEK_END)
        if size == 0:  # e.g. os._exit(0): the process ended well, but before it could send its values
            return self._unfinished(self._death(), seconds, output)
        if size > MAX_RESULT_BYTES:
            return self._unfinished(f"the notebook's results are too large ({size} bytes)", seconds, output)
        self.result.seek(0)
        raw = self.result.read()
        try:
            tensors = load(raw)
            # safetensors' own layout: an 8-byte little-endian header length, then the JSON header
            header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
            summary = json.loads(header["__metadata__"]["grader"])
            cells, kinds = summary["cells"], summary["values"]
            if not isinstance(cells, list) or len(cells) != len(self.plan.cells) or not isinstance(kinds, dict):
                raise ValueError("the summary does not match the plan")
        except (SafetensorError, ValueError, KeyError, TypeError, RecursionError, MemoryError, OverflowError) as e:
            return self._unfinished(f"the notebook's results could not be read ({type(e).__name__})", seconds, output)

        values: dict[tuple[str, str], object] = {}
        exercises = {cap.exercise for cap in self.plan.captures}
        for key, kind in list(kinds.items())[:100_000]:
            exercise, _, name = str(key).partition("/")
            if exercise not in exercises or not name:
                continue
            tensor = tensors.get(key)
            if kind in ("tensor", "tensor+graph") and not (type(tensor) is torch.Tensor and tensor.device.type == "cpu"):
                value: object = MISSING
            elif kind == "tensor":
                value = tensor
            elif kind == "tensor+graph":
                value = Flag("suspicious", "it carries an autograd graph: grad mode was switched back on in the answer")
            elif kind == "none":
                value = None
            elif kind == "unchanged":
                value = UNCHANGED
            elif isinstance(kind, str) and kind.startswith("other:"):
                value = NotTensor(kind.removeprefix("other:")[:200])
            elif isinstance(kind, str) and kind.startswith("error:"):
                value = Raised(kind.removeprefix("error:")[:500])
            else:
                value = MISSING
            values[(exercise, name)] = value
        outcomes = tuple(
            CellOutcome(c.label, str(o.get("error", ""))[:500] if isinstance(o, dict) else "")
            for c, o in zip(self.plan.cells, cells)
        )
        return Captured(True, "", outcomes, values, seconds, output, self.peak_memory_mb, self.notes)


class Job:
    """All runs of one submission, in one confined process of the worker: `release()` sends them,
    `wait()` returns what each brought back.

    The runs go one after another, each from the state after the setup cells, each with `timeout`
    seconds of its own.
    """

    def __init__(self, worker: Worker, runs: list[Run], timeout: float) -> None:
        self.worker, self.runs, self.timeout = worker, runs, timeout
        self.status: int | None = None
        self.started = time.monotonic()

    def release(self) -> None:
        """Send the job to the worker: from here on the notebook's cells run."""
        job = tempfile.TemporaryFile()
        job.write(json.dumps({"runs": [r.job() for r in self.runs], "timeout": self.timeout}).encode())
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
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.status], [], [], left)[0]:
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
            # the run that was going on when the process ended: the last one that started
            current = next((r for r in reversed(self.runs) if r.started()), None)
            finished = all(r.result.seek(0, os.SEEK_END) > 0 for r in self.runs)
            if report is not None and not report.get("timed_out") and report.get("returncode") == 0 and finished:
                current = None
            return [r.captured(report, self.timeout, seconds, current) for r in self.runs]
        finally:
            if self.status is not None:
                os.close(self.status)
                self.status = None
            for r in self.runs:
                r.close()
