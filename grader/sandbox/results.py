"""What comes back from a run, read and checked the same way whichever backend ran it.

A run writes three files: what the notebook printed, the position of each cell as it starts, and its
results: a frame per exercise as soon as its values are taken (safetensors: plain tensors plus a JSON
summary), and a last one when every cell has run, so that a run that hangs, crashes or is killed later
keeps what it finished. The grader opened all three itself before the
notebook's first cell, and reads them through those handles: a notebook that replaces the paths with
a FIFO or a symlink changes nothing here. The contents are untrusted and validated: same values, same
report, on every backend.

Portable: nothing here may use an API that macOS or Windows lacks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from grader.plan import Plan, describe_cell
from grader.runs import Captured, CellOutcome, ValueKey, unwire
from grader.sandbox.jobs import plain
from grader.sandbox.limits import FILE_LIMIT, MAX_RESULT_BYTES
from grader.values import MISSING, UNCHANGED, Flag, NotTensor, Raised

_SIGXFSZ = getattr(signal, "SIGXFSZ", None)  # no such signal on Windows
MAX_HEADER_BYTES = 8 * 2**20
"""Largest safetensors header read back (its JSON: the tensors' names, shapes and the summary)."""
MAX_ENTRIES = 20_000
"""Most tensors a result may hold (a few hundred values and recorded calls are what a run sends)."""

_Frames = tuple[tuple[CellOutcome, ...], dict, tuple[str, ...], bool]
"""A result file's frames, merged (`Run._frames`): cells, values, exercises done, whether the last frame came."""


@dataclass(frozen=True)
class Ended:
    """How a job's process ended, as its backend saw it: one schema for every backend. A backend builds it, or
    reads its supervisor's JSON with `from_json`, which checks every field once; the rest only reads fields."""

    returncode: int = 1
    """The notebook's process's exit code (negative: the signal that ended it)."""
    timed_out: bool = False
    """The run went over its time and was ended for it."""
    over: str = ""
    """`"memory"` or `"file"` where the backend ended the run for that limit; empty otherwise."""
    cap: str = ""
    """Which cap held where `over` is `"memory"`: `"cgroup"` (the run's), `"outer"` (the machine's or
    container's), or empty for the portable backend's watchdog."""
    held: tuple[str, ...] = ()
    """The run's cgroup caps that stopped something (`Cap.held`: `memory`, `outer-memory`, `processes`)."""
    memory_limit: int = 0
    """The run's memory cap in bytes, as the notes state it."""
    stray: int = 0
    """Processes the notebook left running when it ended (killed since)."""
    max_rss_kb: int = 0
    """Peak resident memory of the run, in KiB."""
    seconds: float = 0.0
    """How long the job took, as the backend timed it."""
    sandbox_error: str = ""
    """Why the run could not be confined; a non-empty one stops the grading (`SandboxError`)."""
    stamps: tuple[tuple[str, float], ...] = ()
    """When each step of the run's start and end happened (the Linux supervisor's; `batch_speed.py`)."""
    began: bool = True
    """False where the run never began: an earlier run of its job ended the processes it would have run in
    (the grader starts it again in processes of its own)."""

    @classmethod
    def from_json(cls, data: object) -> Ended | None:
        """The report a supervisor wrote as JSON, each field checked; None where it is not an object."""
        if not isinstance(data, dict):
            return None

        def number(name: str, default: float = 0.0) -> float:
            value = data.get(name)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default

        stamps = data.get("stamps")
        return cls(
            returncode=int(number("returncode", 1)),  # (no exit code read: not a clean exit)
            timed_out=data.get("timed_out") is True,
            stray=int(number("stray")),
            max_rss_kb=int(number("max_rss_kb")),
            seconds=float(number("seconds")),
            sandbox_error=str(data.get("sandbox_error") or "")[:500],
            began=data.get("began") is not False,
            stamps=tuple((str(k), float(v)) for k, v in stamps.items() if type(v) in (int, float))
            if isinstance(stamps, dict)
            else (),
        )

    def limited(self) -> bool:
        """Whether the run was ended from outside: for its time or a limit."""
        return self.timed_out or bool(self.over)


class Run:
    """One run of a job: its plan, and the files its output, progress and values go to.

    With `folder`, the files are named (`run-N-output`, ...) for a child that opens them by path
    (the portable backend); without, they are anonymous and handed over as file descriptors (Linux).
    Either way this process reads them back only through its own handles.
    """

    def __init__(
        self, plan: Plan, label: str, start: int, preamble: list[int], folder: Path | None = None, index: int = 0
    ) -> None:
        self.plan, self.label, self.start, self.preamble = plan, label, start, preamble
        if folder is None:
            self.paths: list[str] = []
            self.output, self.progress, self.result = (tempfile.TemporaryFile() for _ in range(3))  # noqa: SIM115 -- closed in close()
        else:
            self.paths = [str(folder / f"run-{index}-{kind}") for kind in ("output", "progress", "result")]
            self.output, self.progress, self.result = (open(p, "w+b") for p in self.paths)  # noqa: SIM115 -- closed in close()
        self.returncode = 0
        self.peak_memory_mb = 0.0
        self.notes: tuple[str, ...] = ()

    def job(self) -> dict:
        job = {
            "cells": plain(self.plan.cells),
            "captures": [asdict(c) for c in self.plan.captures],
            "start": self.start,
            "preamble": self.preamble,
        }
        return job | ({"files": self.paths} if self.paths else {})

    def fds(self) -> list[int]:
        return [self.output.fileno(), self.progress.fileno(), self.result.fileno()]

    def started(self) -> bool:
        return self.progress.seek(0, os.SEEK_END) > 0

    def output_size(self) -> int:
        return self.output.seek(0, os.SEEK_END)

    def close(self) -> None:
        for f in (self.output, self.progress, self.result):
            f.close()

    def captured(self, ended: Ended | None, timeout: float, current: Run | None) -> Captured:
        """What came back from this run, given how its job ended (`ended`, None where nobody reported) and
        the run that was going on last."""
        report = ended or Ended()
        self.peak_memory_mb = round(report.max_rss_kb / 1024, 1)
        self.returncode = report.returncode
        stray = report.stray
        self.notes = (f"the notebook left {stray} processes running when it ended; they were killed",) if stray else ()
        held = report.held
        if report.over != "memory":
            megabytes = report.memory_limit // 2**20
            if "memory" in held:
                self.notes += (
                    f"a process the notebook started was killed for memory: together its processes "
                    f"reached {megabytes} MB, the cap on the run's whole process tree (its cgroup)",
                )
            elif "outer-memory" in held:
                self.notes += (
                    "a process the notebook started was killed for memory: the machine or container "
                    "the grader runs in ran out before the run's own cap",
                )
        if "processes" in held:
            self.notes += (
                "the run reached its cap on processes and threads (its cgroup's): starting another one failed",
            )
        if ended is None:
            return self._unfinished("the run's supervisor did not report back (the worker was stopped?)")
        if self.result.seek(0, os.SEEK_END) > 0 and self is not current:
            return self._read()
        if not self.started() and current is not None and current is not self:
            return dataclasses.replace(
                self._unfinished(f"it did not run: the notebook's process ended in {current.label}"), started=False
            )
        if report.timed_out and self is current:
            return self._unfinished(f"timed out after {timeout:g} s in {self._current_cell()}")
        if report.over == "memory" and self is current:
            megabytes = report.memory_limit // 2**20
            if report.cap == "outer":
                return self._unfinished(
                    "the notebook ran out of memory (the machine or container the grader runs in "
                    f"ran out before the run's own cap of {megabytes} MB) "
                    f"in {self._current_cell()}"
                )
            which = (
                "the cap on the run's whole process tree, its cgroup, held"
                if report.cap == "cgroup"
                else "the watchdog's cap on the run's whole process tree held"
            )
            return self._unfinished(
                f"the notebook ran out of memory (its processes used more than {megabytes} MB "
                f"together: {which}) in {self._current_cell()}"
            )
        if report.over == "file" and self is current:
            return self._unfinished(self._too_much_written())
        if self.returncode != 0:
            return self._unfinished(self._death())
        return self._read()

    def _current_cell(self) -> str:
        self.progress.seek(0)
        lines = self.progress.read(1 << 20).split()
        try:
            return describe_cell(self.plan.cells[int(lines[-1])])
        except (ValueError, IndexError):
            return "start-up, before the first cell"

    def _too_much_written(self) -> str:
        return f"the notebook wrote more than {FILE_LIMIT // 2**20} MB (output or a file) in {self._current_cell()}"

    def _death(self) -> str:
        code = self.returncode
        where = self._current_cell()
        if _SIGXFSZ is not None and code == -_SIGXFSZ:
            return self._too_much_written()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:  # real-time signals have no name
                name = str(-code)
            how = f"was killed by signal {name}"
        else:
            how = f"exited with code {code}"
        return f"the notebook's process {how} in {where} (os._exit, a crash or running out of memory?)"

    def _unfinished(self, reason: str, frames: _Frames | str | None = None) -> Captured:
        """The run did not end well: what it finished before, graded; the rest, `reason`. `frames`: the
        result file as `_frames` read it, where the caller has read it already."""
        frames = self._frames() if frames is None else frames
        if isinstance(frames, str):  # nothing readable: nothing finished
            return Captured(False, reason, (), {}, self.peak_memory_mb, self.notes)
        cells, values, done, _ = frames
        return Captured(False, reason, cells, values, self.peak_memory_mb, self.notes, done)

    def _read(self) -> Captured:
        """The run ended well: its values, if its last frame is there."""
        frames = self._frames()
        if isinstance(frames, str):
            if self.result.seek(0, os.SEEK_END) == 0:  # e.g. os._exit(0) before its first exercise ended
                return self._unfinished(self._death(), frames)
            return self._unfinished(frames, frames)
        cells, values, done, final = frames
        if not final:  # e.g. os._exit(0) part-way: what it finished is kept
            return self._unfinished(self._death(), frames)
        return Captured(True, "", cells, values, self.peak_memory_mb, self.notes, done)

    def _frames(self) -> _Frames | str:
        """The frames of the result file, merged: (cells, values, exercises done, whether the last frame
        came), or why nothing could be read. A frame cut short (the run ended while writing it) ends
        the reading; so does one that does not check out, after which nothing is trusted."""
        size = self.result.seek(0, os.SEEK_END)
        if size > MAX_RESULT_BYTES:
            return f"the notebook's results are too large ({size} bytes)"
        self.result.seek(0)
        raw = self.result.read()
        offset, cells, kinds, tensors, done, final, entries = 0, [], {}, {}, [], False, 0
        exercises = {cap.exercise for cap in self.plan.captures}
        while offset + 8 <= len(raw) and not final:
            length = int.from_bytes(raw[offset : offset + 8], "little")
            if offset + 8 + length > len(raw):
                break  # cut short
            frame = _frame(raw[offset + 8 : offset + 8 + length], len(self.plan.cells), MAX_ENTRIES - entries)
            if isinstance(frame, str):
                if offset == 0:
                    return frame
                break
            frame_cells, frame_kinds, frame_tensors, frame_done, final = frame
            cells = frame_cells  # each frame carries every cell so far
            kinds.update(frame_kinds)
            tensors.update(frame_tensors)
            done = [e for e in frame_done if e in exercises]
            entries += len(frame_tensors) + len(frame_kinds)
            offset += 8 + length
        if offset == 0:
            return "the notebook's results could not be read (no frame)"
        if final and len(cells) != len(self.plan.cells):
            return "the notebook's results could not be read (the summary does not match the plan)"
        outcomes = tuple(_outcome(c.label, o) for c, o in zip(self.plan.cells, cells))
        return outcomes, _values(kinds, tensors, exercises), tuple(dict.fromkeys(done)), final


def _frame(blob: bytes, planned: int, room: int) -> tuple[list, dict, dict, list, bool] | str:
    """One frame: safetensors bytes whose metadata is the run's JSON summary. Its header is read first:
    a forged file of a million empty tensors would cost seconds and a gigabyte to load."""
    # (safetensors.torch imports torch: not at the top, which the portable backend's start reads before torch)
    from safetensors import SafetensorError
    from safetensors.torch import load  # (see above)

    try:
        # safetensors' own layout: an 8-byte little-endian header length, then the JSON header
        length = int.from_bytes(blob[:8], "little")
        if length > MAX_HEADER_BYTES:
            raise ValueError("the header is too large")
        header = json.loads(blob[8 : 8 + length])
        if not isinstance(header, dict) or len(header) > room:
            raise ValueError("too many entries")
        tensors = load(blob)
        summary = json.loads(header["__metadata__"]["grader"])
        cells, kinds, done, final = summary["cells"], summary["values"], summary["done"], summary["final"]
        if (
            not isinstance(cells, list)
            or len(cells) > planned
            or not isinstance(kinds, dict)
            or not isinstance(done, list)
            or not isinstance(final, bool)
        ):
            raise ValueError("the summary does not match the plan")
    except (SafetensorError, ValueError, KeyError, TypeError, RecursionError, MemoryError, OverflowError) as e:
        return f"the notebook's results could not be read ({type(e).__name__})"
    return cells, kinds, tensors, [str(e) for e in done], final


def _values(kinds: dict, tensors: dict, exercises: set[str]) -> dict[ValueKey, object]:
    """Each key -> what the run sent for it, checked: a plain CPU tensor, or a word on what it was."""
    import torch  # (as for safetensors above)

    values: dict[ValueKey, object] = {}
    for name, kind in list(kinds.items())[:MAX_ENTRIES]:
        key = unwire(name)
        if key is None or (key[0] if isinstance(key, tuple) else key.exercise) not in exercises:
            continue
        tensor = tensors.get(name)
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
        values[key] = value
    return values


def collect(runs: list[Run], ended: Ended | None, timeout: float) -> list[Captured]:
    """Each run's values, given how the job ended (`ended`, None if nobody reported)."""
    # the run that was going on when the process ended: the last one that started
    current = next((r for r in reversed(runs) if r.started()), None)
    finished = all(r.result.seek(0, os.SEEK_END) > 0 for r in runs)
    if ended is not None and not ended.limited() and ended.returncode == 0 and finished:
        current = None
    return [r.captured(ended, timeout, current) for r in runs]


def _outcome(label: str, o: object) -> CellOutcome:
    """One cell's outcome as the child wrote it, each field checked (the child ran student code)."""
    if not isinstance(o, dict):
        return CellOutcome(label, "")
    line, kind = o.get("line"), o.get("kind")
    return CellOutcome(
        label,
        str(o.get("error", ""))[:500],
        line if type(line) is int and line > 0 else None,
        kind[:100] if isinstance(kind, str) and kind.isidentifier() else "",
    )
