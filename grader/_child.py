"""The child process: runs a planned notebook with IPython and writes back plain tensors.

Everything here runs next to untrusted student code, which can change anything in this process. So
nothing this module writes is trusted: the grader reads back only tensors (safetensors cannot carry
code) and a JSON summary, and checks both. It never sends back a verdict, only values.

    python -m grader._child plan.json
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _error_line(exc: BaseException) -> str:
    """`NameError: name 'x' is not defined (line 3)`, the line counted within the cell."""
    line = None
    if isinstance(exc, SyntaxError):
        line = exc.lineno
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith("<ipython-input-"):
            line = frame.lineno  # the innermost frame that is still in the cell itself
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = f" (line {line})" if line else ""
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


def _describe(value: object) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return f"of type {kind.__name__}"
    return f"of type {kind.__module__}.{kind.__qualname__}"

REFUSED = "autograd is not allowed in this exercise: write the gradient by hand"


class AutogradRefused(RuntimeError):
    """Raised in place of every autograd entry point while student code runs."""


def _refuse(*args: object, **kwargs: object) -> None:
    raise AutogradRefused(REFUSED)


def _autograd_patches(torch) -> list[tuple[object, str, object]]:
    """(owner, attribute, replacement) for every public way into autograd."""

    def set_grad_enabled(mode: bool):
        if mode:
            _refuse()
        return torch.no_grad()

    def requires_grad_(self, requires_grad: bool = True):
        if requires_grad:
            _refuse()
        return self

    import torch.autograd.forward_ad
    import torch.autograd.functional
    import torch.func

    patches: list[tuple[object, str, object]] = [
        (torch.Tensor, "backward", _refuse),
        (torch.Tensor, "retain_grad", _refuse),
        (torch.Tensor, "requires_grad_", requires_grad_),
        (torch.autograd, "backward", _refuse),
        (torch.autograd, "grad", _refuse),
        (torch, "enable_grad", _refuse),
        (torch.autograd, "enable_grad", _refuse),
        (torch.autograd.grad_mode, "enable_grad", _refuse),
        (torch, "set_grad_enabled", set_grad_enabled),
        (torch.autograd, "set_grad_enabled", set_grad_enabled),
        (torch.autograd.grad_mode, "set_grad_enabled", set_grad_enabled),
    ]
    for name in ("jacobian", "hessian", "vjp", "jvp", "hvp", "vhp"):
        patches.append((torch.autograd.functional, name, _refuse))
    # forward-mode AD does not need grad mode; unpack_dual stays: printing a tensor calls it
    for name in ("dual_level", "make_dual"):
        patches.append((torch.autograd.forward_ad, name, _refuse))
    for name in ("grad", "grad_and_value", "vjp", "jvp", "jacrev", "jacfwd", "hessian", "linearize"):
        for module in (torch.func, sys.modules.get("torch._functorch.apis"), sys.modules.get("torch._functorch.eager_transforms")):
            if module is not None and hasattr(module, name):
                patches.append((module, name, _refuse))
    return patches


class Guard:
    """While active: grad mode off and every public autograd entry point raises `AutogradRefused`."""

    def __init__(self, torch) -> None:
        self.torch = torch
        self.patches = _autograd_patches(torch)
        self.originals = [(owner, name, getattr(owner, name)) for owner, name, _ in self.patches]
        self.depth = 0

    def __enter__(self) -> None:
        self.depth += 1
        if self.depth == 1:
            self.grad_was = self.torch.is_grad_enabled()
            self.torch.set_grad_enabled(False)
            for owner, name, replacement in self.patches:
                setattr(owner, name, replacement)

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            for owner, name, original in self.originals:
                setattr(owner, name, original)
            self.torch._C._set_grad_enabled(self.grad_was)


def main(plan_path: str) -> int:
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)

    import torch
    from IPython.core.interactiveshell import InteractiveShell
    from safetensors.torch import save

    class Shell(InteractiveShell):
        def enable_gui(self, gui=None):  # `%matplotlib inline`: no event loop to start, figures render off screen
            pass

    torch.set_num_threads(1)
    # cache_size=0: no Out[] history, so no cell's displayed value can keep a forward graph alive.
    shell = Shell.instance(cache_size=0)
    ns = shell.user_ns
    absent = object()
    guard = Guard(torch)

    cells = plan["cells"]
    outcomes: list[dict] = []
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, str] = {}
    baselines: dict[str, dict[str, tuple[object, object]]] = {}

    def snapshot(value: object) -> tuple[object, object]:
        # the object and, for tensors, a copy: an answer cell may also update an earlier tensor in place
        return value, value.detach().clone() if type(value) is torch.Tensor else None

    def unchanged(value: object, before: tuple[object, object] | None) -> bool:
        if before is None or not isinstance(value, torch.Tensor) or value is not before[0]:
            return False
        copy = before[1]
        return isinstance(copy, torch.Tensor) and copy.shape == value.shape and bool(torch.equal(copy, value.detach()))

    def record(key: str, value: object, numbers: bool = False) -> None:
        """Store one value for the grader: a plain tensor, or a word on what it was instead."""
        if value is absent:
            values[key] = "absent"
        elif value is None:
            values[key] = "none"
        elif numbers and type(value) in (int, float):
            tensors[key] = torch.tensor(float(value), dtype=torch.float64)
            values[key] = "tensor"
        elif type(value) is torch.Tensor and value.layout == torch.strided and value.device.type == "cpu":
            # clone: safetensors refuses tensors that share storage (d_emb is a view of d_embcat)
            tensors[key] = value.detach().clone().contiguous()
            # answers are computed with grad mode off: a graph behind one means autograd was switched back on
            values[key] = "tensor+graph" if value.grad_fn is not None else "tensor"
        elif isinstance(value, torch.Tensor) and type(value) is not torch.Tensor:
            values[key] = f"other:a subclass of torch.Tensor ({type(value).__name__})"
        elif isinstance(value, torch.Tensor):
            values[key] = f"other:a {value.layout} tensor on {value.device}"
        else:
            values[key] = "other:" + _describe(value)

    def capture(cap: dict) -> None:
        start_values = baselines.get(cap["exercise"], {})
        for name in cap["variables"]:
            value = ns.get(name, absent)
            key = f"{cap['exercise']}/{name}"
            if unchanged(value, start_values.get(name)):
                # the very tensor there was before the answer cell: another exercise's answer, not this one's
                values[key] = "unchanged"
            else:
                record(key, value, numbers=cap["function"] is not None)

    keep: list[object] = []
    counters: dict[str, list[int]] = {}
    recorders: set[int] = set()  # ids of our wrappers (an attribute could be faked by the notebook)
    inside: list[bool] = [False]

    def install_recorder(cap: dict) -> None:
        """Wrap the answer's function so that the calls the grader grades are recorded."""
        exercise, name = cap["exercise"], cap["function"]
        fn = ns.get(name)
        if not callable(fn) or id(fn) in recorders:
            return
        counter = counters.setdefault(exercise, [0])

        def recorder(*args, **kwargs):
            if inside[0]:  # a call from within the function itself is not a training step
                with guard:
                    return fn(*args, **kwargs)
            call = counter[0]
            counter[0] += 1
            if call in cap["calls"]:
                # inputs and weights as they are before the call: the function cannot change what is recorded
                for j, arg in enumerate(args):
                    record(f"{exercise}/{call}/arg{j}", arg)
                for j, weight in enumerate(list(ns.get(cap["wrt"]) or [])):
                    record(f"{exercise}/{call}/param{j}", weight)
            inside[0] = True
            try:
                with guard:  # the student's code, even when a locked cell calls it
                    out = fn(*args, **kwargs)
            except BaseException as exc:
                if call in cap["calls"]:
                    values[f"{exercise}/{call}/!error"] = "error:" + _error_line(exc)
                raise
            finally:
                inside[0] = False
            if call in cap["calls"]:
                outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
                for j, returned in enumerate(cap["returns"]):
                    record(f"{exercise}/{call}/{returned}", outs[j] if j < len(outs) else absent)
            return out

        recorders.add(id(recorder))
        keep.append(recorder)  # ids stay unique while the wrapper lives
        ns[name] = recorder

    # Wait for the grader's go before running any student code: the grader finishes importing what it
    # needs first, so nothing a notebook writes to disk can end up imported by the grader afterwards.
    with os.fdopen(plan["go_fd"], "rb") as go:
        if go.read(1) != b"1":
            return 3
    # Locked cells must see what earlier locked cells left, not what student code made of it: before each
    # one, names set by locked cells are put back, builtins shadowed by the notebook are uncovered, and
    # torch's own functions are restored. From the first answer cell on, locked cells run guarded too.
    import builtins

    import torch.nn.functional

    modules = (torch, torch.nn.functional, torch.Tensor)
    pristine = [(m, dict(vars(m))) for m in modules]
    locked_names: dict[str, object] = {}
    first_answer = min((cap["start"] for cap in plan["captures"]), default=len(cells))

    def restore_for_locked_cell() -> None:
        for name in [n for n in ns if hasattr(builtins, n) and n not in locked_names and not n.startswith("_")]:
            del ns[name]
        for name, obj in locked_names.items():
            if ns.get(name, absent) is not obj:
                ns[name] = obj
        for module, attributes in pristine:
            for name, obj in attributes.items():
                if module.__dict__.get(name, absent) is not obj:
                    setattr(module, name, obj)

    progress = os.fdopen(plan["progress_fd"], "w", encoding="utf-8")
    for position in range(len(cells) + 1):
        for cap in plan["captures"]:
            if cap["before"] == position:
                capture(cap)
            if cap["start"] == position:
                baselines[cap["exercise"]] = {n: snapshot(ns[n]) for n in cap["variables"] if n in ns}
        if position == len(cells):
            break
        for cap in plan["captures"]:
            if cap["function"] and position > cap["start"]:
                install_recorder(cap)
        cell = cells[position]
        progress.write(f"{position}\n")
        progress.flush()
        grad_was = torch.is_grad_enabled()
        if cell["no_grad"]:
            torch.set_grad_enabled(False)
        if not cell["guarded"]:
            restore_for_locked_cell()
            before = dict(ns)
        if cell["guarded"] or position > first_answer:
            with guard:
                result = shell.run_cell(cell["source"], store_history=False, silent=False)
        else:
            result = shell.run_cell(cell["source"], store_history=False, silent=False)
        if not cell["guarded"]:
            locked_names.update((k, v) for k, v in ns.items() if before.get(k, absent) is not v)
        if cell["no_grad"]:
            torch.set_grad_enabled(grad_was)
        error = result.error_before_exec or result.error_in_exec
        outcomes.append({"status": "error" if error else "ok", "error": _error_line(error) if error else ""})
        sys.stdout.flush()

    summary = json.dumps({"cells": outcomes, "values": values})
    with os.fdopen(plan["result_fd"], "wb") as out:
        out.write(save(tensors, metadata={"grader": summary}))
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's clean-up: tearing down torch takes half a second and nothing is left to save.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
