"""Stage 4: turn what came back from a run into points. A pure function of its inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grader.compare import compare
from grader.notebook import Plan
from grader.rubric import Exercise, Rubric
from grader.sandbox import Captured
from grader.scan import scan
from grader.values import MISSING, UNCHANGED, Flag


@dataclass(frozen=True)
class VariableResult:
    """The verdict and points for one graded variable."""

    exercise: str
    """Exercise id, e.g. `ex1`."""
    name: str
    """The student's variable, e.g. `d_logits`."""
    of: str
    """The forward tensor it is the gradient of, e.g. `logits`."""
    status: str
    """One of `grader.compare.STATUSES`."""
    exact: bool
    """Same shape, dtype and values as the reference."""
    approximate: bool
    """Within the rubric's tolerance of the reference."""
    maxdiff: float | None
    """Largest absolute difference from the reference, when comparable."""
    points: float
    """Points earned."""
    max_points: float
    """Points available."""
    message: str
    """What is wrong, for the student; empty when full points."""


@dataclass(frozen=True)
class ExerciseResult:
    """Points for one exercise."""

    id: str
    """Exercise id."""
    score: float
    """Points earned."""
    max_score: float
    """Points available."""


@dataclass(frozen=True)
class Report:
    """The grade of one notebook."""

    assignment: str
    """Assignment name."""
    notebook: str
    """Path of the graded notebook, as given."""
    status: str
    """`graded`, or `failed` when the notebook could not run to the end."""
    error: str
    """Why it failed (one line), or empty."""
    score: float
    """Points earned."""
    max_score: float
    """Points available."""
    exercises: tuple[ExerciseResult, ...]
    """Per exercise."""
    variables: tuple[VariableResult, ...]
    """Per variable, in rubric order."""
    notes: tuple[str, ...]
    """What the grader changed in the notebook and which cells raised."""


def _span_errors(plan: Plan, captured: Captured, exercise: str) -> list[str]:
    """Errors of the cells from the exercise's answer cell up to its capture, the answer cell's first."""
    cap = next(c for c in plan.captures if c.exercise == exercise)
    span = list(captured.cells[cap.start : cap.before])
    span.sort(key=lambda o: o is not captured.cells[cap.start])
    return [f"{o.label} raised {o.error}" for o in span if o.error]


def _scan_flags(plan: Plan, ex: Exercise) -> dict[str, Flag]:
    """Variable -> the first finding of the static scan of the exercise's answer cell that concerns it."""
    cap = next((c for c in plan.captures if c.exercise == ex.id), None)
    if cap is None:
        return {}
    cell = plan.cells[cap.start]
    names = [v.name for v in ex.variables]
    flags: dict[str, Flag] = {}
    # Tricks that hide code (exec, computed getattr, private torch APIs) count wherever the student put
    # them; plain autograd use counts in the answer cell (a scratch cell may print a .grad; at run time
    # the guard refuses autograd in every cell the student wrote anyway).
    answers = {c.start for c in plan.captures}
    elsewhere = [(c, f) for i, c in enumerate(plan.cells) if c.guarded and i not in answers
                 for f in scan(c.source) if f.status == "suspicious"]
    for where, f in [(cell, f) for f in scan(cell.source)] + elsewhere:
        # a finding in a statement that assigns graded variables concerns those; anywhere else, all of them
        concerned = [n for n in names if n in f.targets] if where is cell else []
        rule = "autograd is not allowed in this exercise" if f.status == "autograd_used" else \
            "code that could hide autograd is not allowed in graded notebooks"
        for n in concerned or names:
            flags.setdefault(n, Flag(f.status, f"line {f.line} of {where.label} uses {f.what}: {rule}"))
    return flags


def score(rubric: Rubric, notebook: str, plan: Plan, captured: Captured,
          reference: dict[str, torch.Tensor]) -> Report:
    """Grade every variable of `rubric` from the values `captured` by running `plan`."""
    results: list[VariableResult] = []
    for ex in rubric.exercises:
        found = any(c.exercise == ex.id for c in plan.captures)
        errors = _span_errors(plan, captured, ex.id) if captured.finished and found else []
        flags = _scan_flags(plan, ex)
        for var in ex.variables:
            value = captured.values.get((ex.id, var.name), MISSING)
            flag = flags.get(var.name) or (value if isinstance(value, Flag) else None)
            if not captured.finished:
                status, exact, approx, maxdiff, message = "error", False, False, None, "the notebook did not run to the end"
            elif not found:
                status, exact, approx, maxdiff = "missing", False, False, None
                message = f"{var.name}: the notebook has no answer cell {ex.cell} (was it deleted, or its metadata lost?)"
            elif flag is not None:
                status, exact, approx, maxdiff, message = flag.status, False, False, None, f"{var.name}: {flag.reason}"
            elif value is MISSING or value is UNCHANGED or (value is None and errors):
                if errors:
                    status, message = "error", f"{var.name} was not computed: {errors[0]}"
                elif value is UNCHANGED:
                    status, message = "missing", f"{var.name} was not assigned in the {ex.cell} answer cell"
                else:
                    status, message = "missing", f"{var.name} is not defined"
                exact = approx = False
                maxdiff = None
            else:
                c = compare(var.name, value, reference[var.of], var.tolerance)
                status, exact, approx, maxdiff, message = c.status, c.exact, c.approximate, c.maxdiff, c.message
            earned = var.points if status in ("exact", "approximate") else 0.0
            results.append(VariableResult(ex.id, var.name, var.of, status, exact, approx, maxdiff, earned, var.points, message))
    exercises = tuple(
        ExerciseResult(ex.id, sum(r.points for r in results if r.exercise == ex.id), ex.max_score)
        for ex in rubric.exercises
    )
    notes = plan.notes + tuple(f"{o.label} raised {o.error}" for o in captured.cells if o.error)
    return Report(
        assignment=rubric.assignment,
        notebook=notebook,
        status="graded" if captured.finished else "failed",
        error=captured.reason,
        score=sum(e.score for e in exercises),
        max_score=rubric.max_score,
        exercises=exercises,
        variables=tuple(results),
        notes=notes,
    )
