"""The cell runner: planned cells run one after another in one IPython shell, and the values asked for come back.

Each run of a job (`warm.Warm.run_job`) makes a `Runner`, which runs the cells it is given, answer
cells under the autograd guard (`guard.Guard`) and each within its share of the time
(`clock.CellClock`), and writes what the grader asked for to the run's result file as it is taken.

Everything here happens next to untrusted student code, which can change anything in that process.
So nothing a run writes is trusted: the grader reads back only tensors (safetensors cannot carry
code) and a JSON summary, and checks both. It never sends back a verdict, only values.

Portable: nothing here may use an API that macOS or Windows lacks (the backends add what they can).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import operator
import os
import sys
import traceback
import types
from typing import TYPE_CHECKING

from grader.runs import CallArgument, CallRaised, CallReturned, CallWeight, ValueKey, wire
from grader.sandbox.clock import CellClock
from grader.sandbox.guard import Guard

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType
    from typing import BinaryIO, SupportsFloat, TextIO, TypeGuard

    from IPython.core.interactiveshell import InteractiveShell
    from torch import Tensor


def error_at(exc: BaseException) -> int | None:
    """The line of the cell the error was raised at (the innermost frame still in the cell), if any."""
    line = exc.lineno if isinstance(exc, SyntaxError) else None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith("<ipython-input-"):
            line = frame.lineno
    return line


def error_line(exc: BaseException) -> str:
    """`NameError: name 'x' is not defined (line 3)`, the line counted within the cell."""
    line = error_at(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = f" (line {line})" if line else ""
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


def _describe(value: object) -> str:
    """`of type numpy.ndarray`: what a value that is not a tensor is, for the grader's message."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return f"of type {kind.__name__}"
    return f"of type {kind.__module__}.{kind.__qualname__}"


class Runner:
    """Runs planned cells in one IPython shell and collects the values the grader asked for.

    Made once in the worker; each run is a fork that carries on from the worker's state. A `Runner` is
    made before any notebook code has run, so `pristine` holds torch's own functions.
    """

    def __init__(
        self, torch: ModuleType, shell: InteractiveShell, pristine: Sequence[tuple[object, dict[str, object]]]
    ) -> None:
        self.torch, self.shell, self.ns, self.pristine = torch, shell, shell.user_ns, pristine
        self.guard = Guard(torch)
        self.cells: list[dict] = []
        self.captures: list[dict] = []
        self.outcomes: list[dict] = []
        self.tensors: dict[str, Tensor] = {}
        self.values: dict[str, str] = {}
        self.baselines: dict[str, dict[str, tuple[object, object]]] = {}
        self.locked_names: dict[str, object] = {}
        self.keep: list[object] = []
        self.counters: dict[str, list[int]] = {}
        self.recorders: set[int] = set()  # ids of our wrappers (an attribute could be faked by the notebook)
        self.inside = [False]
        self.owner = os.getpid()
        self.sent: set[str] = set()  # values already in the result file
        self.done: list[str] = []  # exercises whose values were taken
        self.cell_timeout: float | None = None
        self.clock = CellClock()

    # --- values -----------------------------------------------------------------------------------
    def snapshot(self, value: object) -> tuple[object, object]:
        # the object and, for tensors, a copy: an answer cell may also update an earlier tensor in place
        tensor_type: type[Tensor] = self.torch.Tensor
        return value, value.detach().clone() if type(value) is tensor_type else None

    def unchanged(self, value: object, before: tuple[object, object] | None) -> bool:
        torch = self.torch
        tensor_type: type[Tensor] = torch.Tensor
        if before is None or not isinstance(value, tensor_type) or value is not before[0]:
            return False
        copy = before[1]
        return isinstance(copy, tensor_type) and copy.shape == value.shape and bool(torch.equal(copy, value.detach()))

    def record(self, where: ValueKey, value: object, numbers: bool = False) -> None:
        """Store one value for the grader: a plain tensor, or a word on what it was instead."""
        torch, values, key = self.torch, self.values, wire(where)
        tensor_type: type[Tensor] = torch.Tensor
        if value is _ABSENT:
            values[key] = "absent"
        elif value is None:
            values[key] = "none"
        elif numbers and (_plain_number(value) or _numpy_number(value)):
            self.tensors[key] = torch.tensor(float(value), dtype=torch.float64)
            values[key] = "tensor"
        elif type(value) is tensor_type and value.layout == torch.strided and value.device.type == "cpu":
            # clone: safetensors refuses tensors that share storage (d_emb is a view of d_embcat)
            self.tensors[key] = value.detach().clone().contiguous()
            # answers are computed with grad mode off: a graph behind one means autograd was switched back on
            values[key] = "tensor+graph" if value.grad_fn is not None else "tensor"
        elif isinstance(value, tensor_type) and type(value) is not tensor_type:
            values[key] = f"other:a subclass of torch.Tensor ({type(value).__name__})"
        elif isinstance(value, tensor_type):
            values[key] = f"other:a {value.layout} tensor on {value.device}"
        else:
            values[key] = "other:" + _describe(value)

    def capture(self, cap: dict) -> None:
        start_values = self.baselines.get(cap["exercise"], {})
        for name in cap["variables"]:
            value = self.ns.get(name, _ABSENT)
            key = (cap["exercise"], name)
            if self.unchanged(value, start_values.get(name)):
                # the very tensor there was before the answer cell: another exercise's answer, not this one's
                self.values[wire(key)] = "unchanged"
            else:
                self.record(key, value, numbers=cap["function"] is not None or cap.get("numbers", False))

    def install_recorder(self, cap: dict) -> None:
        """Wrap the answer's function so that the calls the grader grades are recorded."""
        exercise, name, ns, guard, inside = cap["exercise"], cap["function"], self.ns, self.guard, self.inside
        fn = ns.get(name)
        if not callable(fn) or id(fn) in self.recorders:
            return
        counter = self.counters.setdefault(exercise, [0])
        record, values = self.record, self.values

        def recorder(*args: object, **kwargs: object) -> object:
            if inside[0]:  # a call from within the function itself is not a training step
                with guard:
                    return fn(*args, **kwargs)
            call = counter[0]
            counter[0] += 1
            if call in cap["calls"]:
                # inputs and weights as they are before the call: the function cannot change what is recorded
                for j, arg in enumerate(args):
                    record(CallArgument(exercise, call, j), arg)
                for j, weight in enumerate(list(ns.get(cap["wrt"]) or [])):
                    record(CallWeight(exercise, call, j), weight)
            inside[0] = True
            try:
                with guard:  # the student's code, even when a locked cell calls it
                    out = fn(*args, **kwargs)
            except BaseException as exc:
                if call in cap["calls"]:
                    values[wire(CallRaised(exercise, call))] = "error:" + error_line(exc)
                raise
            finally:
                inside[0] = False
            if call in cap["calls"]:
                outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
                for j, returned in enumerate(cap["returns"]):
                    record(CallReturned(exercise, call, returned), outs[j] if j < len(outs) else _ABSENT)
            return out

        self.recorders.add(id(recorder))
        self.keep.append(recorder)  # ids stay unique while the wrapper lives
        ns[name] = recorder

    # --- cells ------------------------------------------------------------------------------------
    def restore_for_locked_cell(self) -> None:
        """Locked cells see what earlier locked cells left, not what student code made of it."""
        ns = self.ns
        for name in [n for n in ns if hasattr(builtins, n) and n not in self.locked_names and not n.startswith("_")]:
            del ns[name]  # a builtin the notebook shadowed
        for name, obj in self.locked_names.items():
            if ns.get(name, _ABSENT) is not obj:
                ns[name] = obj
        self.restore_modules()

    def restore_modules(self) -> None:
        """Put back torch's and the builtins' own functions, and the output streams: our code uses them too."""
        restore(self.pristine)

    def run_cell(self, position: int, progress: TextIO) -> dict:
        """Run one planned cell; returns its outcome."""
        torch, cell = self.torch, self.cells[position]
        first_answer = min((cap["start"] for cap in self.captures), default=len(self.cells))
        progress.write(f"{position}\n")
        progress.flush()
        grad_was = torch.is_grad_enabled()
        if cell["no_grad"]:
            torch.set_grad_enabled(False)
        if not cell["guarded"]:
            self.restore_for_locked_cell()
            before = dict(self.ns)
        try:
            with self.clock.budget(self.cell_timeout):
                if cell["guarded"] or position > first_answer:  # from the first answer on, locked cells run guarded too
                    with self.guard:
                        result = self.shell.run_cell(cell["source"], store_history=False, silent=False)
                else:
                    result = self.shell.run_cell(cell["source"], store_history=False, silent=False)
            error = result.error_before_exec or result.error_in_exec
        except BaseException as e:  # IPython itself failed, e.g. on builtins the cell replaced
            error = e
        self.restore_modules()  # what runs next is ours: it needs the real builtins and torch
        if not cell["guarded"]:
            self.locked_names.update((k, v) for k, v in self.ns.items() if before.get(k, _ABSENT) is not v)
        if cell["no_grad"]:
            torch.set_grad_enabled(grad_was)
        sys.stdout.flush()
        if self.clock.rang and isinstance(error, KeyboardInterrupt):
            return {
                "status": "error",
                "error": f"interrupted after {self.cell_timeout:g} s (a cell's share of the time)",
            }
        if not error:
            return {"status": "ok", "error": ""}
        # (the kind and the line as data too: the grader reads them, never the sentence)
        return {"status": "error", "error": error_line(error), "kind": type(error).__name__, "line": error_at(error)}

    def run(
        self, cells: list[dict], captures: list[dict], start: int, progress: TextIO, out: BinaryIO | None = None
    ) -> None:
        """Run `cells` from position `start` to the end, taking the captures on the way; with `out`, each
        exercise's values go to it as soon as they are taken (`emit`), and a last frame when all is done."""
        self.cells, self.captures = cells, captures
        for position in range(start, len(cells) + 1):
            taken = False
            for cap in captures:
                if cap["before"] == position:
                    self.capture(cap)
                    self.done.append(cap["exercise"])
                    taken = True
                if cap["start"] == position:
                    self.baselines[cap["exercise"]] = {
                        n: self.snapshot(self.ns[n]) for n in cap["variables"] if n in self.ns
                    }
            if out is not None and (taken or position == len(cells)):
                self.emit(out, final=position == len(cells))
            if position == len(cells):
                break
            for cap in captures:
                if cap["function"] and position > cap["start"]:
                    self.install_recorder(cap)
            self.outcomes.append(self.run_cell(position, progress))
            if os.getpid() != self.owner:  # a copy the notebook forked: it must not go on and write results
                os._exit(0)

    def emit(self, out: BinaryIO, final: bool) -> None:
        """Append one frame to the result file: what was taken since the last frame, as safetensors (the
        tensors, and a JSON summary as metadata), after its length in 8 bytes. A run that ends before its
        last cell leaves the frames of the exercises it finished: the grader grades those."""
        from safetensors.torch import save  # (imported by the worker before any run: here it is a lookup)

        self.restore_modules()
        new = [k for k in self.values if k not in self.sent]
        summary = json.dumps(
            {"cells": self.outcomes, "values": {k: self.values[k] for k in new}, "done": self.done, "final": final}
        )
        frame = save({k: self.tensors[k] for k in new if k in self.tensors}, metadata={"grader": summary})
        out.write(len(frame).to_bytes(8, "little") + frame)
        out.flush()
        self.sent.update(new)


def _plain_number(value: object) -> TypeGuard[float]:
    """An int, float or bool itself (not a subclass)."""
    return type(value) in (int, float, bool)


def _numpy_number(value: object) -> TypeGuard[SupportsFloat]:
    """A numpy scalar or 0-d array of a real number (`np.float64(3.29)`, `arr.mean()`): a number too."""
    kind = type(value)
    return (
        kind.__module__ == "numpy"
        and getattr(value, "ndim", None) == 0
        and (dtype := getattr(value, "dtype", None)) is not None
        and dtype.kind in "biuf"
    )


_ABSENT = object()  # a name the namespace lacks (`None` is a value a student can assign)


def restore(pristine: Sequence[tuple[object, dict[str, object]]]) -> None:
    """Put back the attributes of each module as they were when `pristine` was taken, and the output streams."""
    for module, attributes in pristine:
        current = module.__dict__
        # Nearly always nothing changed: say so by identity, in C (about 2,000 names in torch alone, twice a cell).
        # Never by `==`, which a replaced attribute's own `__eq__` could answer.
        if (
            len(current) == len(attributes)
            and all(map(operator.is_, current, attributes))
            and all(map(operator.is_, current.values(), attributes.values()))
        ):
            continue
        if current.keys() != attributes.keys():
            # added since: `torch.Tensor.sum = ...` shadows the method of the C base class. Submodules
            # imported since stay (their parent module's attribute is set only when first imported).
            for name in [n for n in current if n not in attributes]:
                if not isinstance(current[name], types.ModuleType):
                    with contextlib.suppress(AttributeError, TypeError):
                        delattr(module, name)
        for name, obj in attributes.items():
            if current.get(name, _ABSENT) is not obj:
                setattr(module, name, obj)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
