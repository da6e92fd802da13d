"""The released forward pass, run in the grader's own process with autograd: the shared start of every
reference.

The setup cells (the data set) run once per value of the rubric's `setup_parameters`; the reference cells
once per parameter set. Both are memos keyed by the assignment (equal digests, equal assignments) and the
parameters, shared by every caller, who copy and never change them. Only trusted code runs here: the
released notebook's own cells, never the student's.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from grader.assignment import Assignment
from grader.errors import GraderError, RubricError
from grader.plan import injected_source
from grader.runs import TARGETS, Key

# The reference cells use process-wide state (the `random` module's seed, stdout): one run at a time.
LOCK = threading.RLock()


def _check_kernels() -> None:
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        raise GraderError(
            f"torch was imported with its {capability} kernels before the grader could pin the scalar ones; "
            "import grader before torch, or set ATEN_CPU_CAPABILITY=default in the environment"
        )


def run_cells(ns: dict, sources: Mapping[str, str], cells: tuple[str, ...], where: str) -> None:
    missing = [gid for gid in cells if gid not in sources]
    if missing:
        raise RubricError(f"{where}: no cells with grade_id {missing}")
    with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()), _no_collections():
        for gid in cells:
            exec(compile(sources[gid], f"<{Path(where).name} reference cell {gid}>", "exec"), ns)


@contextlib.contextmanager
def _no_collections() -> Iterator[None]:
    """The garbage collector off while released cells run: a setup that builds its data set in Python (lists of
    lists) triggers collections that each walk every object of torch's import, which made backprop_ninja's
    setup take 0.5 s instead of 0.33. Only the instructor's cells run here, and they end; the collector is
    on again after them, as it was (a caller's choice to keep it off is kept)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# The memos below (functools.lru_cache) are keyed by the assignment, which is equal to another exactly when
# their digests are, and by the parameters: they compute, never load.


@functools.lru_cache(maxsize=4)
def after_setup(assignment: Assignment, setup_params: tuple) -> dict:
    """The namespace after the setup cells (shared: callers copy it, never change it)."""
    _check_kernels()
    rubric = assignment.rubric
    ns: dict = {"__name__": "__reference__"}
    exec(injected_source(dict(setup_params)), ns)
    run_cells(ns, assignment.cells, rubric.setup_cells, str(rubric.released))
    return ns


def namespace_with(assignment: Assignment, params: dict[str, object], cells: tuple[str, ...]) -> dict:
    """A fresh namespace: the shared setup, then the parameters and `cells`."""
    rubric = assignment.rubric
    base = after_setup(assignment, tuple((k, params[k]) for k in rubric.setup_parameters))
    ns = dict(base)
    exec(injected_source(params), ns)
    run_cells(ns, assignment.cells, cells, str(rubric.released))
    return ns


@functools.lru_cache(maxsize=8)
def reference_namespace(assignment: Assignment, params_items: tuple) -> dict:
    """The reference cells run once per parameter set: the gradients' graph and the values both read it."""
    return namespace_with(assignment, dict(params_items), assignment.rubric.reference_cells)


@functools.lru_cache(maxsize=8)
def forward_graph(assignment: Assignment, params_items: tuple) -> dict[Key, torch.Tensor]:
    """The released forward pass with autograd: every graded forward tensor, its `.grad` set, the graph kept
    (and the batch's targets under `TARGETS`)."""
    rubric = assignment.rubric
    where = str(rubric.released)
    plain = [ex for ex in rubric.exercises if ex.plain]
    ns = reference_namespace(assignment, params_items)
    wanted = sorted({v.of for ex in plain for v in ex.variables})
    absent = [name for name in wanted if not isinstance(ns.get(name), torch.Tensor)]
    if absent or not isinstance(ns.get(rubric.loss), torch.Tensor):
        raise RubricError(f"{where}: the reference cells do not define {absent or [rubric.loss]}")
    tensors: dict[Key, torch.Tensor] = {name: ns[name] for name in wanted}
    with torch.enable_grad():
        for t in tensors.values():
            if t.requires_grad and not t.is_leaf:
                t.retain_grad()
        ns[rubric.loss].backward(retain_graph=True)  # kept: the per-use parts and local references walk it
    for name, t in tensors.items():
        if t.grad is None:
            raise RubricError(f"{where}: {name} gets no gradient from {rubric.loss}")
    if rubric.targets and isinstance(ns.get(rubric.targets), torch.Tensor):
        tensors[TARGETS] = ns[rubric.targets].detach()
    return tensors


def forward_values(assignment: Assignment, params: dict[str, object]) -> dict[str, torch.Tensor]:
    """The graded forward tensors' values (detached), as the reference's forward pass made them."""
    with LOCK:
        graph = forward_graph(assignment, tuple(params.items()))
        return {k: t.detach() for k, t in graph.items() if isinstance(k, str)}
