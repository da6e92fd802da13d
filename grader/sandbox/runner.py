"""What runs beside student code in a child process, on every platform: the cell runner and the warm state.

A child (a fork of the Linux worker, or a fresh interpreter of the portable backend) imports torch and
runs the released setup cells once (`Warm`, our code, no student's); then each run of a job carries on
from that state (`Warm.run_job`), cell after cell in one IPython shell (`Runner`), with autograd refused
in answer cells (`Guard`).

Everything a run does happens next to untrusted student code, which can change anything in that
process. So nothing a run writes is trusted: the grader reads back only tensors (safetensors cannot
carry code) and a JSON summary, and checks both. It never sends back a verdict, only values.

Portable: nothing here may use an API that macOS or Windows lacks (the backends add what they can).
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable


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

    set_grad_mode = torch._C._set_grad_enabled

    def private_set_grad_enabled(mode: bool):
        if mode:
            _refuse()
        return set_grad_mode(False)

    patches: list[tuple[object, str, object]] = [
        (torch._C, "_set_grad_enabled", private_set_grad_enabled),  # what torch.set_grad_enabled calls
        (torch._C, "_ImperativeEngine", _refuse),  # autograd's engine, behind every backward
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


class Runner:
    """Runs planned cells in one IPython shell and collects the values the grader asked for.

    Made once in the worker; each run is a fork that carries on from the worker's state. A `Runner` is
    made before any notebook code has run, so `pristine` holds torch's own functions.
    """

    def __init__(self, torch, shell, pristine: list[tuple[object, dict]]) -> None:
        self.torch, self.shell, self.ns, self.pristine = torch, shell, shell.user_ns, pristine
        self.guard = Guard(torch)
        self.cells: list[dict] = []
        self.captures: list[dict] = []
        self.outcomes: list[dict] = []
        self.tensors: dict[str, object] = {}
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
        self.clock = _CellClock()

    # --- values -----------------------------------------------------------------------------------
    def snapshot(self, value: object) -> tuple[object, object]:
        # the object and, for tensors, a copy: an answer cell may also update an earlier tensor in place
        return value, value.detach().clone() if type(value) is self.torch.Tensor else None

    def unchanged(self, value: object, before: tuple[object, object] | None) -> bool:
        torch = self.torch
        if before is None or not isinstance(value, torch.Tensor) or value is not before[0]:
            return False
        copy = before[1]
        return isinstance(copy, torch.Tensor) and copy.shape == value.shape and bool(torch.equal(copy, value.detach()))

    def record(self, key: str, value: object, numbers: bool = False) -> None:
        """Store one value for the grader: a plain tensor, or a word on what it was instead."""
        torch, values = self.torch, self.values
        if value is _ABSENT:
            values[key] = "absent"
        elif value is None:
            values[key] = "none"
        elif numbers and (type(value) in (int, float, bool) or _numpy_number(value)):
            self.tensors[key] = torch.tensor(float(value), dtype=torch.float64)
            values[key] = "tensor"
        elif type(value) is torch.Tensor and value.layout == torch.strided and value.device.type == "cpu":
            # clone: safetensors refuses tensors that share storage (d_emb is a view of d_embcat)
            self.tensors[key] = value.detach().clone().contiguous()
            # answers are computed with grad mode off: a graph behind one means autograd was switched back on
            values[key] = "tensor+graph" if value.grad_fn is not None else "tensor"
        elif isinstance(value, torch.Tensor) and type(value) is not torch.Tensor:
            values[key] = f"other:a subclass of torch.Tensor ({type(value).__name__})"
        elif isinstance(value, torch.Tensor):
            values[key] = f"other:a {value.layout} tensor on {value.device}"
        else:
            values[key] = "other:" + _describe(value)

    def capture(self, cap: dict) -> None:
        start_values = self.baselines.get(cap["exercise"], {})
        for name in cap["variables"]:
            value = self.ns.get(name, _ABSENT)
            key = f"{cap['exercise']}/{name}"
            if self.unchanged(value, start_values.get(name)):
                # the very tensor there was before the answer cell: another exercise's answer, not this one's
                self.values[key] = "unchanged"
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
                    record(f"{exercise}/{call}/{returned}", outs[j] if j < len(outs) else _ABSENT)
            return out

        self.recorders.add(id(recorder))
        self.keep.append(recorder)  # ids stay unique while the wrapper lives
        ns[name] = recorder

    # --- cells ------------------------------------------------------------------------------------
    def restore_for_locked_cell(self) -> None:
        """Locked cells see what earlier locked cells left, not what student code made of it."""
        import builtins

        ns = self.ns
        for name in [n for n in ns if hasattr(builtins, n) and n not in self.locked_names and not n.startswith("_")]:
            del ns[name]  # a builtin the notebook shadowed
        for name, obj in self.locked_names.items():
            if ns.get(name, _ABSENT) is not obj:
                ns[name] = obj
        self.restore_modules()

    def restore_modules(self) -> None:
        """Put back torch's and the builtins' own functions, and the output streams: our code uses them too."""
        _restore(self.pristine)

    def run_cell(self, position: int, progress) -> dict:
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
            return {"status": "error", "error": f"interrupted after {self.cell_timeout:g} s (a cell's share of the time)"}
        return {"status": "error" if error else "ok", "error": _error_line(error) if error else ""}

    def run(self, cells: list[dict], captures: list[dict], start: int, progress, out=None) -> None:
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
                    self.baselines[cap["exercise"]] = {n: self.snapshot(self.ns[n]) for n in cap["variables"] if n in self.ns}
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

    def emit(self, out, final: bool) -> None:
        """Append one frame to the result file: what was taken since the last frame, as safetensors (the
        tensors, and a JSON summary as metadata), after its length in 8 bytes. A run that ends before its
        last cell leaves the frames of the exercises it finished: the grader grades those."""
        from safetensors.torch import save

        self.restore_modules()
        new = [k for k in self.values if k not in self.sent]
        summary = json.dumps({"cells": self.outcomes, "values": {k: self.values[k] for k in new}, "done": self.done,
                              "final": final})
        frame = save({k: self.tensors[k] for k in new if k in self.tensors}, metadata={"grader": summary})
        out.write(len(frame).to_bytes(8, "little") + frame)
        out.flush()
        self.sent.update(new)


def _numpy_number(value: object) -> bool:
    """A numpy scalar or 0-d array of a real number (`np.float64(3.29)`, `arr.mean()`): a number too."""
    kind = type(value)
    return kind.__module__ == "numpy" and getattr(value, "ndim", None) == 0 and getattr(value, "dtype", None) is not None \
        and value.dtype.kind in "biuf"


_ABSENT = object()
MAX_RUNS = 16
"""Most runs in one job (a submission's own parameters and its hidden re-runs)."""


def _restore(pristine: list[tuple[object, dict]]) -> None:
    """Put back the attributes of each module as they were when `pristine` was taken, and the output streams."""
    import types

    for module, attributes in pristine:
        current = module.__dict__
        if current.keys() != attributes.keys():
            # added since: `torch.Tensor.sum = ...` shadows the method of the C base class. Submodules
            # imported since stay (their parent module's attribute is set only when first imported).
            for name in [n for n in current if n not in attributes]:
                if not isinstance(current[name], types.ModuleType):
                    try:
                        delattr(module, name)
                    except (AttributeError, TypeError):
                        pass
        for name, obj in attributes.items():
            if current.get(name, _ABSENT) is not obj:
                setattr(module, name, obj)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


class _CellClock:
    """Interrupts the cell running in the main thread once it has had its share of the time.

    The interrupt is Python's own for Ctrl-C (SIGINT where there are signals, `interrupt_main` where
    not), so it lands as a KeyboardInterrupt in the cell, between two bytecodes or in a blocking call.
    Our handler raises only while a cell runs: an interrupt that arrives just after the cell ended does
    nothing. A notebook that catches or ignores it runs on until the run's own timeout ends the process.
    """

    current: _CellClock | None = None

    def __init__(self) -> None:
        self.running = False
        self.rang = False
        self.lock = threading.Lock()

    @staticmethod
    def install() -> None:
        """In the main thread, before the first cell: our handler for the interrupt."""
        def handler(signum, frame):
            clock = _CellClock.current
            if clock is not None and clock.running:
                raise KeyboardInterrupt
        signal.signal(signal.SIGINT, handler)

    @contextlib.contextmanager
    def budget(self, seconds: float | None):
        self.rang = False
        if not seconds:
            yield
            return
        timer = threading.Timer(seconds, self._ring)
        timer.daemon = True
        _CellClock.current = self
        self.running = True
        timer.start()
        try:
            yield
        finally:
            with self.lock:
                self.running = False
            timer.cancel()

    def _ring(self) -> None:
        with self.lock:
            if not self.running:
                return
            self.rang = True
            if hasattr(signal, "pthread_kill"):  # a real signal: it also ends a blocking call (sleep, read)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            else:
                _thread.interrupt_main()


# --- the warm state ----------------------------------------------------------------------------------

class Warm:
    """torch imported and the released setup cells run: the state every run of a job starts from.

    A job is one submission: all its runs (its own parameters, then the hidden re-runs), one after
    another in one process, each starting again from the state after the setup cells.
    """

    def __init__(self, spec: dict) -> None:
        import builtins
        import random

        import torch
        import torch.nn.functional
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        import safetensors.torch  # (every run needs it: import it once, here)

        class Shell(InteractiveShell):
            def enable_gui(self, gui=None):  # `%matplotlib inline`: no event loop to start, figures render off screen
                pass

        torch.set_num_threads(1)
        safetensors.torch.save({"warm": torch.zeros(1)})  # imports what saving needs (numpy) here, not in a run
        config = Config()
        config.HistoryManager.enabled = False  # no SQLite file and no saving thread to carry across fork()
        # cache_size=0: no Out[] history, so no cell's displayed value can keep a forward graph alive.
        self.shell = Shell.instance(config=config, cache_size=0)
        self.torch, self.random, self.spec = torch, random, spec
        self.pristine = [(m, dict(vars(m))) for m in (torch, torch.nn.functional, torch.Tensor, builtins)]
        self.initial = dict(self.shell.user_ns)
        self.rng = self._rng_state()
        self.data = {name: open(path, "rb").read() for name, path in spec["data"].items()}
        self.warm = Runner(torch, self.shell, self.pristine)
        with open(os.devnull, "w") as quiet:
            self.warm.run(spec["prefix"], [], 0, quiet)  # stops at the end of the prefix: no captures in it
        failed = [o["error"] for o in self.warm.outcomes if o["error"]]
        if failed:
            raise RuntimeError(f"the released setup cells failed in the worker: {failed[0]}")
        self.warmed_rng = self._rng_state()
        self.after_setup = dict(self.shell.user_ns)
        # copies of the data the setup made: a run that changes it in place must not change the next run's
        self.setup_tensors = {k: (v, v._version, v.clone()) for k, v in self.after_setup.items()
                              if type(v) is torch.Tensor}
        self._warm_up(spec.get("warm_up", []))

    def _rng_state(self) -> tuple:
        return self.torch.get_rng_state(), self.random.getstate()

    def _set_rng(self, state: tuple) -> None:
        self.torch.set_rng_state(state[0])
        self.random.setstate(state[1])

    def _warm_up(self, sources: list[str]) -> None:
        """Run the released cells after the setup once, on a copy of the namespace, and forget them.

        The first call of many torch operations is slow (lazy initialisation); doing it here once saves
        it in every run forked later.
        """
        import contextlib
        import io

        scratch = dict(self.shell.user_ns)
        grad_was = self.torch.is_grad_enabled()
        with contextlib.redirect_stdout(io.StringIO()):
            for source in sources:
                try:
                    exec(compile(self.shell.transform_cell(source), "<warm-up>", "exec"), scratch)
                except BaseException:
                    pass  # a released stub may well raise; the warm-up is only for torch's sake
        self.torch.set_grad_enabled(grad_was)
        self._set_rng(self.warmed_rng)

    def run_job(self, runs: list[dict], workdir: str, run_fds: list[int], new_run: Callable[[], object],
                cell_timeout: float | None = None) -> None:
        """Each run in turn, each from the state after the setup; `new_run()` as each run after the first begins.

        `run_fds` holds three open files per run: its output, its progress and its result. A cell that
        runs past `cell_timeout` seconds is interrupted as Jupyter interrupts one (KeyboardInterrupt in
        the cell), and the run goes on with the next cell.
        """
        for name in ("HOME", "TMPDIR", "TEMP", "TMP"):
            os.environ[name] = workdir
        prefix_names = dict(self.warm.locked_names)
        prefix_outcomes = list(self.warm.outcomes)
        for i, run in enumerate(runs):
            output_fd, progress_fd, result_fd = run_fds[3 * i : 3 * i + 3]
            if i > 0:
                new_run()
                self._reset(workdir)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(output_fd, 1)
            os.dup2(output_fd, 2)
            os.close(output_fd)
            os.chdir(workdir)
            runner = Runner(self.torch, self.shell, self.pristine)
            ns = self.shell.user_ns
            ns.clear()
            if run["start"] > 0:  # carries on from the worker's state after the setup cells
                ns.update(self.after_setup)
                self._set_rng(self.warmed_rng)
                runner.locked_names = {k: ns.get(k, v) for k, v in prefix_names.items()}
                runner.outcomes = prefix_outcomes[: run["start"]]
                runner.cells = run["cells"]
                with open(os.devnull, "w") as quiet:
                    for position in run["preamble"]:  # this run's parameters, where they differ from the worker's
                        runner.outcomes[position] = runner.run_cell(position, quiet)
            else:  # the notebook's own set-up differs from the release: start from an empty namespace
                ns.update(self.initial)
                self._set_rng(self.rng)
            runner.cell_timeout = cell_timeout
            _CellClock.install()  # again for each run: the last one may have replaced the handler
            with os.fdopen(progress_fd, "w", encoding="utf-8") as progress, os.fdopen(result_fd, "wb") as out:
                runner.run(run["cells"], run["captures"], run["start"], progress, out)
            del runner
        sys.stdout.flush()
        sys.stderr.flush()

    def write_data(self, workdir: str) -> None:
        for name, content in self.data.items():
            os.makedirs(os.path.dirname(os.path.join(workdir, name)), exist_ok=True)  # `data/names.txt`
            with open(os.path.join(workdir, name), "wb") as f:
                f.write(content)

    def _reset(self, workdir: str) -> None:
        """Between two runs of a job: undo what the last one could have changed outside its namespace."""
        _restore(self.pristine)
        for name, (tensor, version, copy) in self.setup_tensors.items():
            if tensor._version != version:  # changed in place: the next run gets the data as the setup made it
                fresh = copy.clone()
                self.setup_tensors[name] = (fresh, fresh._version, copy)
                self.after_setup[name] = fresh
        self.torch._C._set_grad_enabled(True)
        try:
            self.write_data(workdir)
        except OSError:
            pass  # e.g. the last run filled its disk: this run will say so itself


