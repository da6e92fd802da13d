"""Stage 2: run a planned notebook in a separate child process and bring back its values.

The only stage that touches student code, and it does so from a distance: the child is a fresh
Python process (`grader._child`) in its own session and temporary working directory, with a minimal
environment and a wall-clock limit after which its whole process group is killed. What comes back is
a safetensors file (plain tensors plus a JSON summary), size-capped and validated here.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from grader.errors import SandboxError
from grader.notebook import Plan, describe_cell
from grader.values import MISSING, UNCHANGED, Flag, NotTensor, Raised

MAX_RESULT_BYTES = 256 * 2**20
"""Largest result file read back; also the cap on any file the child writes (RLIMIT_FSIZE)."""
MEMORY_LIMIT = 2 * 2**30
"""Bytes of data (heap and anonymous mappings, RLIMIT_DATA) a child may use. Not an address-space cap:
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


def _limits() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_RESULT_BYTES, MAX_RESULT_BYTES))
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # Linux: die with the grader, even if it is SIGKILLed
        _LIBC.unshare(_CLONE_NEWNET)  # a network of its own with nothing in it (needs root; else no effect)


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


_PR_SET_PDEATHSIG, _CLONE_NEWNET = 1, 0x40000000
_LIBC = _libc()  # looked up here: between fork and exec the child should only make the calls


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
    for passthrough in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "TMPDIR"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    return env


class Run:
    """A started child process: `release()` lets it run the notebook, `wait()` returns its values.

    The child's output, progress and result go to anonymous temporary files that this process opened
    (and the child inherited as file descriptors), so nothing is read back by a path that the notebook
    could have replaced with a FIFO or a symlink.
    """

    def __init__(self, plan: Plan, data_files: dict[str, Path], timeout: float) -> None:
        self.plan, self.timeout = plan, timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="grader-run-"))
        self.output, self.progress, self.result = (tempfile.TemporaryFile() for _ in range(3))
        go_read, self._go = os.pipe()
        try:
            for name, source in data_files.items():
                shutil.copyfile(source, self.workdir / name)
            plan_path = self.workdir / ".plan.json"
            plan_path.write_text(json.dumps({
                "cells": [{"source": c.source, "no_grad": c.no_grad, "guarded": c.guarded} for c in plan.cells],
                "captures": [asdict(c) for c in plan.captures],
                "go_fd": go_read, "progress_fd": self.progress.fileno(), "result_fd": self.result.fileno(),
            }), encoding="utf-8")
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "grader._child", str(plan_path)],
                cwd=self.workdir, env=_child_env(self.workdir), stdin=subprocess.DEVNULL,
                stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_limits,
                pass_fds=(go_read, self.progress.fileno(), self.result.fileno()),
            )
        except OSError as e:
            self._close()
            raise SandboxError(f"could not start the child process: {e}") from e
        finally:
            os.close(go_read)

    def release(self) -> None:
        """Let the child start running the notebook's cells."""
        if self._go is not None:
            try:
                os.write(self._go, b"1")
            except BrokenPipeError:  # the child is already gone; wait() will say so
                pass
            self._close_go()

    def _close_go(self) -> None:
        if self._go is not None:
            os.close(self._go)
            self._go = None

    def _close(self) -> None:
        self._close_go()
        for f in (self.output, self.progress, self.result):
            f.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> Captured:
        """Wait for the child (at most the timeout), kill whatever it left running, read its values."""
        self._close_go()  # without a release the child stops before the first cell
        try:
            timed_out = False
            try:
                self.process.wait(timeout=max(0.0, self.timeout - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                timed_out = True
            self._kill_group()  # also ends anything the notebook started in the background
            self.process.wait()
            seconds = time.monotonic() - self.started
            output = self._tail()
            if timed_out:
                return self._unfinished(f"timed out after {self.timeout:g} s in {self._current_cell()}", seconds, output)
            if self.process.returncode != 0:
                return self._unfinished(self._death(), seconds, output)
            return self._read(seconds, output)
        finally:
            self._close()

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
        code = self.process.returncode
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:  # real-time signals have no name
                name = str(-code)
            how = f"was killed by signal {name}"
        else:
            how = f"exited with code {code}"
        return f"the notebook's process {how} in {self._current_cell()} (os._exit, a crash or running out of memory?)"

    @staticmethod
    def _unfinished(reason: str, seconds: float, output: str) -> Captured:
        return Captured(False, reason, (), {}, seconds, output)

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
        except (SafetensorError, ValueError, KeyError, TypeError) as e:
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
        return Captured(True, "", outcomes, values, seconds, output)


def start(plan: Plan, data_files: dict[str, Path], timeout: float) -> Run:
    """Start running `plan` in a child process; `data_files` (name -> path) are copied beside it."""
    return Run(plan, data_files, timeout)
