"""The reference gradients, computed by the grader itself with autograd.

Runs the released notebook's own setup and forward cells (trusted code, never the student's) with the
same parameters as the graded run, then asks autograd for the gradient of the loss with respect to
every tensor a graded variable is the gradient of. Results are cached per parameter set, so grading
many notebooks pays for the reference once.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
from pathlib import Path

import nbformat
import torch

from grader.errors import GraderError, RubricError
from grader.notebook import grade_id, injected_source
from grader.rubric import Rubric

# The reference cells use process-wide state (the `random` module's seed, stdout): one run at a time.
_LOCK = threading.Lock()


def _check_kernels() -> None:
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        raise GraderError(
            f"torch was imported with its {capability} kernels before the grader could pin the scalar ones; "
            "import grader before torch, or set ATEN_CPU_CAPABILITY=default in the environment"
        )


def gradients(rubric: Rubric, released: nbformat.NotebookNode, params: dict[str, object]) -> dict[str, torch.Tensor]:
    """Reference gradient of `rubric.loss` for every graded tensor (forward name -> gradient)."""
    sources = {grade_id(c): c.source for c in released.cells if c.cell_type == "code"}
    missing = [gid for gid in rubric.reference_cells if gid not in sources]
    if missing:
        raise RubricError(f"{rubric.released}: no cells with grade_id {missing}")
    code = (injected_source(params),) + tuple(sources[gid] for gid in rubric.reference_cells)
    wanted = tuple(sorted({v.of for ex in rubric.exercises for v in ex.variables}))
    with _LOCK:
        return dict(_compute(code, rubric.loss, wanted, str(rubric.released)))


@functools.lru_cache(maxsize=16)
def _compute(code: tuple[str, ...], loss_name: str, wanted: tuple[str, ...], where: str) -> tuple[tuple[str, torch.Tensor], ...]:
    _check_kernels()
    ns: dict[str, object] = {"__name__": "__reference__"}
    with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()):
        for i, source in enumerate(code):
            exec(compile(source, f"<{Path(where).name} reference cell {i}>", "exec"), ns)
        tensors = {name: ns.get(name) for name in wanted}
        absent = [name for name, t in tensors.items() if not isinstance(t, torch.Tensor)]
        if absent or not isinstance(ns.get(loss_name), torch.Tensor):
            raise RubricError(f"{where}: the reference cells do not define {absent or [loss_name]}")
        for t in tensors.values():
            if t.requires_grad and not t.is_leaf:
                t.retain_grad()
        ns[loss_name].backward()
    grads = []
    for name, t in tensors.items():
        if t.grad is None:
            raise RubricError(f"{where}: {name} gets no gradient from {loss_name}")
        grads.append((name, t.grad.detach().clone()))
    return tuple(grads)
