"""What each graded variable should be: autograd's gradients of the released forward pass, the values of values
exercises (from the reference cells or the instructor's solution), and the training runs of function exercises
with autograd standing in for the student's function. Keyed by `grader.runs` keys.
"""

from __future__ import annotations

import contextlib
import functools
import io
import numbers

import torch

from grader.assignment import Assignment
from grader.notebook import grade_id, has_tag
from grader.plan import injected_source
from grader.reference.forward import LOCK, after_setup, forward_graph, namespace_with, reference_namespace, run_cells
from grader.reference.steps import parts_by_use
from grader.rubric import Exercise
from grader.runs import TARGETS, GradientParts, Key, TrainingResult


def gradients(assignment: Assignment, params: dict[str, object]) -> dict[Key, object]:
    """Reference of every graded variable of the plain exercises (forward name -> gradient; `GradientParts`,
    `TARGETS` for hints), of values exercises (`ValueOf`) and of the training runs of function exercises
    (`TrainingResult` -> a float64 scalar)."""
    with LOCK:
        return dict(_gradients(assignment, tuple(params.items())))


@functools.lru_cache(maxsize=16)
def _gradients(assignment: Assignment, params_items: tuple) -> tuple[tuple[Key, object], ...]:
    rubric = assignment.rubric
    params = dict(params_items)
    out: list[tuple[Key, object]] = []
    if any(ex.plain for ex in rubric.exercises):
        with LOCK:
            graph = forward_graph(assignment, params_items)
            named = {k: t for k, t in graph.items() if isinstance(k, str)}
            out += [(name, t.grad.detach().clone()) for name, t in named.items() if t.grad is not None]
            if TARGETS in graph:
                out.append((TARGETS, graph[TARGETS].clone()))
            out += [(GradientParts(name), parts) for name, parts in parts_by_use(assignment, params_items).items()]
    for ex in rubric.exercises:
        if ex.function is not None and ex.function.training is not None:
            out.append((TrainingResult(ex.id, ex.function.training.result.name), _training(assignment, ex, params)))
    if any(ex.kind == "values" for ex in rubric.exercises):
        with LOCK:
            out += _values(assignment, params)
    return tuple(out)


def as_reference(value: object) -> torch.Tensor | str:
    """A value as the grader compares it: tensors as they are (detached), numbers as float64 scalars."""
    if isinstance(value, torch.Tensor):
        value = value.detach().clone()
        return value.double() if value.ndim == 0 and value.is_floating_point() else value
    if isinstance(value, numbers.Real):  # (numpy's scalars too)
        return torch.tensor(float(value), dtype=torch.float64)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, bool) for v in value):
        return torch.tensor(list(value), dtype=torch.bool)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, numbers.Real) for v in value):
        return torch.tensor([float(v) for v in value], dtype=torch.float64)
    return f"the reference value is {type(value).__name__}, not a tensor or a number"


def _values(assignment: Assignment, params: dict[str, object]) -> list[tuple[Key, object]]:
    """References of values exercises (`ValueOf` -> tensor, or why there is none)."""
    rubric = assignment.rubric
    out: list[tuple[Key, object]] = []
    exercises = [ex for ex in rubric.exercises if ex.kind == "values"]
    if any(ex.source == "reference" for ex in exercises):
        ns = reference_namespace(assignment, tuple(params.items()))
        for ex in exercises:
            if ex.source == "reference":
                out += [
                    (
                        ex.reference_key(v),
                        as_reference(ns[v.of]) if v.of in ns else f"the reference cells do not define {v.of}",
                    )
                    for v in ex.variables
                ]
    if any(ex.source == "solution" for ex in exercises):
        found = _solution_values(assignment, tuple(params.items()))
        for ex in exercises:
            if ex.source == "solution":
                out += [
                    (
                        ex.reference_key(v),
                        found.get(ex.reference_key(v), found.get("") or f"the solution does not compute {v.of}"),
                    )
                    for v in ex.variables
                ]
    return out


@functools.lru_cache(maxsize=8)
def _solution_values(assignment: Assignment, params_items: tuple) -> dict[Key, object]:
    """The instructor's solution run here (trusted code), with the same parameters: the value of each variable
    of a `source = "solution"` exercise right after its answer cell. `""` -> why there are none."""
    rubric = assignment.rubric
    solution = assignment.solution
    name = rubric.released.name  # (the solution's file name too)
    if solution is None:
        return {
            "": f"its reference comes from the instructor's solution ({name}), which this installation "
            "does not have (a student's copy never does: it is graded where the solution is, by `grader "
            "grade` in a source checkout, nbgrader or the Gradescope autograder)"
        }
    import matplotlib  # (matplotlib: only a solution's run needs it, with its Agg backend chosen first)

    matplotlib.use("Agg")  # a solution cell may plot
    params = dict(params_items)
    base = after_setup(assignment, tuple((k, params[k]) for k in rubric.setup_parameters))
    ns = dict(base)
    exec(injected_source(params), ns)
    skip = set(rubric.skip_cells) | set(rubric.setup_cells)
    wanted = {ex.cell: ex for ex in rubric.exercises if ex.kind == "values" and ex.source == "solution"}
    out: dict[Key, object] = {}
    with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()):
        for cell in solution.cells:
            gid = grade_id(cell)
            if cell.cell_type != "code" or gid in skip or has_tag(cell, "parameters"):
                continue
            exec(compile(cell.source, f"<{name} solution cell {gid}>", "exec"), ns)
            if gid in wanted:
                ex = wanted[gid]
                out.update(
                    (
                        ex.reference_key(v),
                        as_reference(ns[v.of]) if v.of in ns else f"the solution does not compute {v.of}",
                    )
                    for v in ex.variables
                )
    return out


def _training(assignment: Assignment, ex: Exercise, params: dict[str, object]) -> torch.Tensor:
    """The training run of a function exercise, with autograd standing in for the student's function."""
    f = ex.function
    assert f is not None and f.training is not None  # (called for a function exercise with a training run only)
    training = f.training
    ns = namespace_with(assignment, params, f.reference_cells)

    def with_autograd(Xb: torch.Tensor, Yb: torch.Tensor, *rest: object) -> tuple[torch.Tensor, ...]:
        with torch.enable_grad():
            loss = ns[f.forward](Xb, Yb)[0]
            return torch.autograd.grad(loss, ns[f.wrt])

    ns[f.name] = with_autograd
    run_cells(ns, assignment.cells, training.cells, str(assignment.rubric.released))
    result = ns[training.result.name]
    if isinstance(result, torch.Tensor):
        return result.detach().clone()
    return torch.tensor(float(result), dtype=torch.float64)  # the child sends plain numbers the same way
