"""The warm state: torch imported and the released setup cells run, the state every run of a job starts from.

A child (a fork of the Linux worker, or a fresh interpreter of the portable backend) builds a `Warm`
once, running only our code (torch's import, the released setup cells), no student's. Then each run of
a job carries on from that state (`Warm.run_job`), and between two runs `Warm` undoes what the last
one could have changed outside its namespace.

Portable: nothing here may use an API that macOS or Windows lacks (the backends add what they can).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import pickle
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grader.sandbox import snapshot as snapshots
from grader.sandbox.clock import CellClock
from grader.sandbox.runner import Runner, restore

MAX_RUNS = 16
"""Most runs in one job (a submission's own parameters and its hidden re-runs)."""
LEARN_AT_MOST = 20_000
"""Characters of the longest cell `Warm.learn` transforms ahead."""
LEARN_SECONDS = 0.05
"""Seconds `Warm.learn` may take (makemore's notebooks need about 5 ms)."""


def preload() -> None:
    """Import what every worker needs whatever it will run (torch, safetensors, IPython's shell): a worker started
    before its setup is known (`linux_start.Started`) does this while it waits."""
    # The heavy imports are the worker's start itself, made here (not at the top) so that the grader's
    # process, which imports this module's names too, never pays for them.
    import safetensors.torch  # (every run needs it: import it once, here)
    import torch  # (see above)
    import torch.nn.functional  # (see above: the functions every notebook calls)
    from IPython.core import interactiveshell  # noqa: F401 -- (see above) the shell every run's cells go through

    torch.set_num_threads(1)
    safetensors.torch.save({"warm": torch.zeros(1)})  # imports what saving needs (numpy) here, not in a run


class Warm:
    """torch imported and the released setup cells run: the state every run of a job starts from.

    A job is what one process runs: one run on Linux (each run a confined fork of its own); all the runs of a
    submission (its own parameters, then the hidden re-runs) on the portable backend, one after another, each
    starting again from the state after the setup cells.
    """

    def __init__(self, spec: dict) -> None:
        preload()
        # (imported by preload() already; named here for this function)
        import torch  # (see above)
        import torch.nn.functional  # (see above)
        from traitlets.config import Config  # (see above)

        config = Config()
        config.HistoryManager.enabled = False  # no SQLite file and no saving thread to carry across fork()
        # Plain tracebacks: the grader reads the error itself (`runner.error_line`), and the run's output keeps the
        # lines a student needs. The default's source context, highlighted by pygments, took about 0.2 s of every
        # run that raised (its lexers compiled again in each fork), more than the run's cells.
        config.InteractiveShell.xmode = "Plain"
        # cache_size=0: no Out[] history, so no cell's displayed value can keep a forward graph alive.
        self.shell = _shell_class().instance(config=config, cache_size=0)
        self.torch, self.random, self.spec = torch, random, spec
        self.pristine = [(m, dict(vars(m))) for m in (torch, torch.nn.functional, torch.Tensor, builtins)]
        self.initial = dict(self.shell.user_ns)
        self.rng = self._rng_state()
        self.data = {name: Path(path).read_bytes() for name, path in spec["data"].items()}
        self.warm = Runner(torch, self.shell, self.pristine)
        self.snapshot_made = ""
        """The digest of the setup snapshot this process saved (`snapshot.take`), for the grader; "" if none."""
        snapshot = spec.get("snapshot") or {}
        if not self._load_setup(snapshot):
            self._run_setup(spec["prefix"], snapshot)
        self.warmed_rng = self._rng_state()
        self.after_setup = dict(self.shell.user_ns)
        # copies of the data the setup made: a run that changes it in place must not change the next run's
        self.setup_tensors = {
            k: (v, v._version, v.clone()) for k, v in self.after_setup.items() if type(v) is torch.Tensor
        }
        self._warm_up(spec.get("warm_up", []))

    def _load_setup(self, snapshot: dict) -> bool:
        """The setup's state from the snapshot the grader named (`path`, `digest`), if it is there and is that one."""
        if not snapshot.get("digest"):
            return False
        data = snapshots.read(snapshot["path"])
        loaded = snapshots.load(self.torch, data, snapshot["digest"], self.shell.user_ns) if data else None
        if loaded is None:
            return False
        self.warm.locked_names, self.warm.outcomes = loaded["locked"], loaded["outcomes"]
        return True

    def _run_setup(self, prefix: list[dict], snapshot: dict) -> None:
        """Run the released setup cells; where the grader asked for a snapshot (`path`, no digest yet), save one."""
        before, modules = self._globals(), set(sys.modules)
        with open(os.devnull, "w") as quiet:
            self.warm.run(prefix, [], 0, quiet)  # stops at the end of the prefix: no captures in it
        failed = [o["error"] for o in self.warm.outcomes if o["error"]]
        if failed:
            raise RuntimeError(f"the released setup cells failed in the worker: {failed[0]}")
        if not snapshot.get("path") or snapshot.get("digest"):
            return
        after = self._globals()
        state = {
            "outcomes": self.warm.outcomes,
            "modules": set(sys.modules) - modules,
            # what the namespace does not show: a setup that changed any of it runs in every process
            "globals_changed": before != after,
            "magics": any(self.shell.transform_cell(c["source"]).strip() != c["source"].strip() for c in prefix),
        }
        data = snapshots.take(self.torch, self.shell.user_ns, self.initial, self.warm.locked_names, state)
        if data is not None and snapshots.write(snapshot["path"], data):
            self.snapshot_made = snapshots.digest(data)

    def _globals(self) -> dict[str, object]:
        """State outside the namespace a setup cell could change: compared before and after it."""
        numpy = sys.modules.get("numpy")
        return {
            "numpy": pickle.dumps(numpy.random.get_state()) if numpy is not None else b"",
            "grad": self.torch.is_grad_enabled(),
            "dtype": self.torch.get_default_dtype(),
            "threads": self.torch.get_num_threads(),
            "environ": dict(os.environ),
            "path": list(sys.path),
            "cwd": os.getcwd(),
        }

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
        scratch = dict(self.shell.user_ns)
        grad_was = self.torch.is_grad_enabled()
        with contextlib.redirect_stdout(io.StringIO()):
            for source in sources:
                try:
                    exec(compile(self.shell.remember(source), "<warm-up>", "exec"), scratch)
                except BaseException:
                    pass  # a released stub may well raise; the warm-up is only for torch's sake
        self.torch.set_grad_enabled(grad_was)
        self._set_rng(self.warmed_rng)

    def learn(self, runs: list[dict]) -> None:
        """Transform, once, the cells a job's runs will run (`Shell.remember`): every run of a submission runs the
        same cells, and each run, a fork made after this, then skips IPython's tokenizing of them (about 3 ms a
        run). Only text is read here, nothing run, and for `LEARN_SECONDS` at most: this process has none of a
        run's limits, and the cells are the student's. A cell not transformed here (a long one, one that cannot
        be, those past the time) is left to the run, where IPython does it as always."""
        seen = set(getattr(self.shell, "known", {}))
        stop = time.monotonic() + LEARN_SECONDS
        # (compiling a cell warns of some of its lines, `x is 1`: that is the run's to print, in its own output)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for source in (cell["source"] for run in runs for cell in run["cells"][run["start"] :]):
                if time.monotonic() > stop:
                    return
                if source in seen or len(source) > LEARN_AT_MOST:
                    continue
                seen.add(source)
                with contextlib.suppress(Exception):
                    self.shell.remember(source)

    def run_job(
        self,
        runs: list[dict],
        workdir: str,
        run_fds: list[int],
        new_run: Callable[[], object],
        cell_timeout: float | None = None,
    ) -> None:
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
            CellClock.install()  # again for each run: the last one may have replaced the handler
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
        restore(self.pristine)
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


def _shell_class() -> type[Any]:  # (Any: the class is made where IPython is imported, at run time)
    """IPython's shell class as the worker uses it (imported here: the grader's process never pays for IPython)."""
    from IPython.core.interactiveshell import InteractiveShell  # (the worker only: see the docstring)

    class Shell(InteractiveShell):
        """IPython's shell, which knows the released cells' transformed source ahead (`remember`).

        IPython tokenizes every cell to transform it (magics, `!commands`) and compiles it once more to see
        whether it awaits at top level: about a millisecond a cell, as long as a short cell runs. The
        worker does both once for each released cell; every run forked from it reads the answers, while
        the transformers are the ones they were found with. Single-line cells are left to IPython: their
        transformation depends on the namespace (autocall, `exit`).
        """

        known: dict[str, tuple[str, bool]]  # raw cell -> (transformed, whether it awaits at top level)
        found_with: tuple = ()

        # `%matplotlib inline`: no event loop to start, figures render off screen
        def enable_gui(self, gui: str | None = None) -> None:
            pass

        def _transformers(self) -> tuple:
            manager = self.input_transformer_manager
            lists = (manager.cleanup_transforms, manager.line_transforms, manager.token_transformers)
            return (manager, *(tuple(x) for x in lists), tuple(self.input_transformers_post))

        def remember(self, raw_cell: str) -> str:
            """`raw_cell` transformed; kept for later runs where that cannot depend on the namespace."""
            transformed = self.transform_cell(raw_cell)
            if len(self.input_transformer_manager.transform_cell(raw_cell).splitlines()) > 1:
                if not hasattr(self, "known"):
                    self.known, self.found_with = {}, self._transformers()
                if self._transformers() == self.found_with and self.autoawait:
                    awaits = InteractiveShell.should_run_async(self, raw_cell, transformed_cell=transformed)
                    self.known[raw_cell] = (transformed, awaits)
            return transformed

        def _hit(self, raw_cell: str) -> tuple[str, bool] | None:
            hit = getattr(self, "known", {}).get(raw_cell)
            return hit if hit is not None and self._transformers() == self.found_with else None

        def transform_cell(self, raw_cell: str) -> str:
            hit = self._hit(raw_cell)
            return hit[0] if hit is not None else super().transform_cell(raw_cell)

        def should_run_async(
            self, raw_cell: str, *, transformed_cell: str | None = None, preprocessing_exc_tuple: object = None
        ) -> bool:
            hit = self._hit(raw_cell)
            if hit is not None and preprocessing_exc_tuple is None and transformed_cell == hit[0]:
                return bool(self.autoawait) and hit[1]
            return super().should_run_async(
                raw_cell, transformed_cell=transformed_cell, preprocessing_exc_tuple=preprocessing_exc_tuple
            )

    return Shell
