"""Lecture notebooks after their run: what came back, graded as the lecture's own `cmp` checks it.

Guarantees, for a notebook `grader.lecture` recognised and the sandbox ran:

* the reference is autograd's, computed here (never in the notebook's process) through the lecture's forward
  pass at the notebook's own forward tensors as the run captured them: a forward pass equivalent to the
  lecture's but different in the last bits is graded as its own autograd would check it;
* a gradient a check call named is graded as that call saw it (the run records a copy there); where the
  variable changed afterwards (`dhprebn = dbndiff` then `dhprebn += ...`), the variable says so;
* constant parameters (`bngain = torch.ones(...)`) are graded like any others; only a variable whose right
  gradient is all zeros (where an all-zero answer, a stub too, would pass) earns nothing, and says why;
* a notebook with the forward pass and no answers yet reports every variable `missing`.

Nothing here runs the notebook's code: values in, a `Report` out (the reference's autograd aside).
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from grader import lecture, reference
from grader import rubric as rubrics
from grader.assignment import Assignment
from grader.plan import Plan
from grader.runs import Captured, Key
from grader.score import score
from grader.values import UNCHANGED
from grader.verdicts import GradedRun, Report, VariableResult

if TYPE_CHECKING:
    import nbformat


@dataclass(frozen=True)
class Changed:
    """A gradient whose value at the end of its exercise differs from the one its check call saw."""

    exercise: str
    """Exercise id."""
    name: str
    """The notebook's gradient variable."""
    message: str
    """What happened and how to avoid it, for the student."""


def graded(
    path: str,
    student: nbformat.NotebookNode,
    recognised: lecture.Recognised,
    assignment: Assignment,
    plan: Plan,
    captured: Captured,
    own_run: Captured | None = None,
) -> tuple[Report, list[GradedRun]]:
    """The `Report` of a lecture notebook's run, and the run with its values and references (for pictures).
    `own_run`: the run of `lecture.own_forward`'s plan, where `differing` found steps of the notebook's forward pass
    that are not the lecture's."""
    rubric = assignment.rubric
    refs: dict[Key, object] = {}
    notes: list[str] = []
    changed: tuple[Changed, ...] = ()
    zero: dict[tuple[str, str], str] = {}
    if captured.finished and recognised.sections:
        params, own, problem = parameters(recognised, plan, captured)
        if not problem:
            try:
                refs = reference.gradients(assignment, params)  # (targets and per-use parts, for hints)
            except Exception as e:  # e.g. a minibatch that does not index the embedding table
                problem = f"the lecture's forward pass does not run on the notebook's tensors ({type(e).__name__}: {e})"
        if not problem:
            try:
                refs.update(reference.own_gradients(assignment, params, own))
                notes += forward_differences(assignment, recognised, own, params)
                if own_run is not None:
                    notes.append(
                        _graded_against_own(assignment, student, recognised, params, own, refs, captured, own_run)
                    )
            except Exception as e:  # (the grader's own failure: the lecture's values still give a reference)
                notes.append(
                    f"the reference is autograd's at the lecture's forward values, not the notebook's own "
                    f"({type(e).__name__}: {e})"
                )
        if problem:
            captured = dataclasses.replace(captured, finished=False, reason=problem, done=())
        else:
            captured, changed = as_checked(recognised, student, captured)
            try:
                refs.update(reference.step_references(assignment, params, captured, refs))  # (as our own assignments')
            except Exception as e:  # (the grader's own failure: every step is then judged on its value alone)
                notes.append(f"no step was judged on its own ({type(e).__name__}: {e})")
            zero = zero_references(rubric, refs, recognised, captured)
    notes += unassigned_notes(student, plan, captured)
    run = GradedRun("the notebook as it is", (), plan, captured, refs)
    result = _with_warnings(score(rubric, path, [run], {}), changed, zero)
    graded_flags = {(v.exercise, v.name): v.approximate for v in result.variables}
    checks = lecture.saved_checks(student, recognised, graded_flags) if captured.finished else ()
    saved = lecture.saved_note(student, checks)
    result = dataclasses.replace(
        result, notes=result.notes + tuple(notes) + ((saved,) if saved else ()), saved_checks=checks
    )
    return result, [run]


def parameters(
    recognised: lecture.Recognised, plan: Plan, captured: Captured
) -> tuple[dict[str, object], dict[str, torch.Tensor], str]:
    """The lecture reference's parameters (a file of the run's parameters and minibatch), the run's forward tensors
    by the lecture's names, or why there are none."""
    forward = dict(recognised.forward)
    values = {w: captured.values.get((lecture.FORWARD, forward[w])) if w in forward else None for w in lecture.LEAVES}
    tensors = {w: v for w, v in values.items() if type(v) is torch.Tensor}
    bad = [forward.get(w, w) for w in values if w not in tensors]
    if bad:
        before = next((c.before for c in plan.captures if c.exercise == lecture.FORWARD), len(captured.cells))
        first = next((o for o in captured.cells[:before] if o.error), None)
        why = f"{first.label} raised {first.error}, so " if first else ""
        return (
            {},
            {},
            (
                f"{why}the notebook left no tensor {', '.join(bad)} before Exercise 1; the grader needs the "
                f"parameters and the minibatch (the lecture's {', '.join(lecture.LEAVES)}, or the same names "
                "with underscores)"
            ),
        )
    wrong = [forward[w] for w in lecture.LEAVES[:7] if not tensors[w].is_floating_point()] + [
        forward[w] for w in lecture.LEAVES[7:] if tensors[w].is_floating_point()
    ]
    if wrong:
        return (
            {},
            {},
            (f"{', '.join(wrong)} in the notebook do not have the lecture's kinds (float parameters, integer batch)"),
        )
    found = {ours: captured.values.get((lecture.FORWARD, theirs)) for ours, theirs in recognised.forward}
    own = {k: v for k, v in found.items() if type(v) is torch.Tensor}
    return {"leaves": lecture.leaves(tensors)}, own, ""


def differing(assignment: Assignment, recognised: lecture.Recognised, plan: Plan, captured: Captured) -> list[str]:
    """The lecture tensors whose step in the notebook's forward pass is not the lecture's (`reference.differing_steps`):
    then the reference is autograd through the notebook's own forward pass (`lecture.own_forward`). Empty where the
    run did not get that far."""
    if not captured.finished or not recognised.sections:
        return []
    params, own, problem = parameters(recognised, plan, captured)
    if problem:
        return []
    try:
        return reference.differing_steps(assignment, params, own)
    except Exception:  # (the lecture's forward pass does not run on these tensors: graded() says why)
        return []


def _graded_against_own(
    assignment: Assignment,
    student: nbformat.NotebookNode,
    recognised: lecture.Recognised,
    params: dict[str, object],
    own: dict[str, torch.Tensor],
    refs: dict[Key, object],
    captured: Captured,
    own_run: Captured,
) -> str:
    """Put autograd's gradients through the notebook's own forward pass (from `own_run`) in `refs`, where that run
    is confirmed; the note that says so, naming the first line that differs from the lecture's, or why not.

    Confirmed: the run made the same parameters and minibatch as the graded run, and where the notebook's forward
    pass is the lecture's (every tensor whose gradient does not flow back through a differing step), its gradients
    are those the grader computes through the lecture's steps at the notebook's values. So the run, which ran the
    notebook's code with autograd on, can only tell the grader what its own differing steps send back."""
    forward = dict(recognised.forward)
    steps = reference.differing_steps(assignment, params, own)
    line = _differing_line(assignment, student, recognised, steps[0])
    not_used = f"{line}, but the gradients of your own forward pass could not be used"
    if not own_run.finished:
        return f"{not_used}: {own_run.reason}"
    remade = _remade_leaf(forward, captured, own_run)
    if remade:
        return f"{not_used}: run again, the notebook made another {remade}"
    gradients = _own_run_gradients(assignment, refs, own_run)
    unconfirmed = _unconfirmed(assignment, params, steps, refs, gradients)
    if unconfirmed:
        theirs = forward.get(unconfirmed, unconfirmed)
        return f"{not_used}: autograd's gradient of {theirs} there is not what the lecture's steps give"
    refs.update(gradients)
    return (
        f"graded against your own forward pass: {line}; every gradient is checked against autograd through "
        "the forward pass as your notebook has it, as your own cmp checks it"
    )


def _differing_line(
    assignment: Assignment, student: nbformat.NotebookNode, recognised: lecture.Recognised, first: str
) -> str:
    """The notebook's line computing `first` (the first differing step) beside the lecture's, where both are found."""
    forward = dict(recognised.forward)
    where = lecture.assigning_line(student, forward.get(first, first), recognised.sections[0].cells[0])
    released = _released_line(assignment, first)
    if where and released:
        return f"`{where[2]}` (cell {where[0] + 1}, line {where[1]}) is not the lecture's `{released}`"
    return f"your {forward.get(first, first)} is not computed as the lecture computes it"


def _remade_leaf(forward: dict[str, str], captured: Captured, own_run: Captured) -> str:
    """The first parameter or minibatch tensor (the notebook's name) that `own_run` did not make as the graded run
    did; empty where it made them all the same."""
    for ours in lecture.LEAVES:
        theirs = forward.get(ours, ours)
        again, graded_run = (
            own_run.values.get((lecture.OWN_LEAVES, theirs)),
            captured.values.get((lecture.FORWARD, theirs)),
        )
        if not (type(again) is torch.Tensor and type(graded_run) is torch.Tensor and torch.equal(again, graded_run)):
            return theirs
    return ""


def _own_run_gradients(assignment: Assignment, refs: dict[Key, object], own_run: Captured) -> dict[str, torch.Tensor]:
    """The gradients `own_run` brought back of the plain exercises' tensors, those of their references' shape and
    dtype."""
    gradients: dict[str, torch.Tensor] = {}
    for name in {v.of for ex in assignment.rubric.exercises if ex.plain for v in ex.variables}:
        g, ref = own_run.values.get((lecture.OWN, lecture.OWN_PREFIX + name)), refs.get(name)
        if type(g) is torch.Tensor and isinstance(ref, torch.Tensor) and g.shape == ref.shape and g.dtype == ref.dtype:
            gradients[name] = g
    return gradients


def _unconfirmed(
    assignment: Assignment,
    params: dict[str, object],
    steps: list[str],
    refs: dict[Key, object],
    gradients: dict[str, torch.Tensor],
) -> str:
    """The first of `gradients` (the lecture's name) that does not flow back through a differing step of `steps` and
    is not what the lecture's steps give (in `refs`); empty where there is none."""
    edges = reference.forward_edges(assignment, params)
    through: set[str] = set()  # the tensors whose gradient flows back through a differing step (its inputs, theirs)
    for name in reversed(list(edges)):
        if name in through or name in steps:
            through.update(edges[name])
    for name, g in gradients.items():
        ref = refs[name]
        assert isinstance(ref, torch.Tensor)
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        if name not in through and not torch.allclose(g, ref, rtol=1e-4, atol=1e-5 * scale):
            return name
    return ""


def _released_line(assignment: Assignment, name: str) -> str:
    """The lecture's own statement that computes `name`."""
    for gid in assignment.rubric.reference_cells:
        source = assignment.cells[gid]
        for statement in ast.parse(source).body:
            if any(isinstance(t, ast.Name) and t.id == name for t in getattr(statement, "targets", [])):
                return ast.get_source_segment(source, statement) or ast.unparse(statement)
    return ""


def forward_differences(
    assignment: Assignment, recognised: lecture.Recognised, own: dict[str, torch.Tensor], params: dict[str, object]
) -> list[str]:
    """A note if the notebook's forward pass is not the lecture's on its own tensors beyond rounding (the first
    tensor, from the loss back, that differs)."""
    forward = dict(recognised.forward)
    ours = reference.forward_values(assignment, params)
    for name in [
        v.of for v in reversed(assignment.rubric.exercises[0].variables)
    ]:  # (listed from the loss back: the first one)
        theirs, mine = own.get(name), ours.get(name)
        if theirs is None or mine is None:
            continue
        if (
            theirs.shape != mine.shape
            or theirs.dtype != mine.dtype
            or not torch.allclose(theirs, mine, rtol=1e-4, atol=1e-5)
        ):
            diff = (
                f"off by up to {(theirs.double() - mine.double()).abs().max().item():.3g}"
                if theirs.shape == mine.shape
                else f"shape {tuple(theirs.shape)}, not {tuple(mine.shape)}"
            )
            return [
                f"the notebook's {forward[name]} is not what the lecture's forward pass gives on its parameters and "
                f"minibatch ({diff}): the reference steps back through the lecture's formulas, so the gradients "
                f"of what {name} is computed from may differ from what your own autograd says"
            ]
    return []


def unassigned_notes(student: nbformat.NotebookNode, plan: Plan, captured: Captured) -> list[str]:
    """For a cell that stopped on a name no line above it assigns (a line deleted after the cell ran, or cells run
    out of order), one line saying so; what the cell computed before that line is graded as usual."""
    notes = []
    for cell, outcome in zip(plan.cells, captured.cells):
        if outcome.kind != "NameError" or cell.cell is None:
            continue
        found = lecture.first_unassigned(student, cell.cell)
        if found is None or (outcome.line is not None and outcome.line != found[1]):
            continue
        name, line = found
        kept = student.cells[cell.cell]
        why = (
            "the saved output was made before a line was deleted or by cells run out of order"
            if kept.get("outputs") or kept.get("execution_count")
            else "was a line that assigns it deleted, or is it assigned in a cell further down?"
        )
        notes.append(f"`{name}` is used on line {line} of cell {cell.cell + 1} but never assigned above it; {why}")
    return notes


def as_checked(
    recognised: lecture.Recognised, student: nbformat.NotebookNode, captured: Captured
) -> tuple[Captured, tuple[Changed, ...]]:
    """The run's values with each checked gradient as its last check call saw it, and those that changed after."""
    values = dict(captured.values)
    changed = []
    for k in lecture.checks(student, recognised):
        seen, end = values.get((k.exercise, k.snapshot)), values.get((k.exercise, k.name))
        if type(seen) is not torch.Tensor or end is UNCHANGED:
            # the call could not read it (not defined yet), or the exercise never assigned it (its check looked at
            # an earlier exercise's answer): the end value stands
            continue
        if type(end) is torch.Tensor and end.shape == seen.shape and end.dtype == seen.dtype and torch.equal(end, seen):
            continue
        values[(k.exercise, k.name)] = seen
        if k.alias:
            other = k.alias.partition(" = ")[0]
            how = (
                f"`{k.alias}` makes {other} the same tensor as {k.name}, so changing {other} in place changed "
                f"{k.name} too: write `{other} = {k.name}.clone()`"
            )
        else:
            how = "it was changed in place or assigned again after that check without a new check"
        changed.append(
            Changed(
                k.exercise,
                k.name,
                f"{k.name} is graded as your check in {k.cell} saw it, but its value changed afterwards: {how}",
            )
        )
    return dataclasses.replace(captured, values=values), tuple(changed)


def zero_references(
    rubric: rubrics.Rubric, refs: dict[Key, object], recognised: lecture.Recognised, captured: Captured
) -> dict[tuple[str, str], str]:
    """(exercise, variable) -> why it earns nothing, for each variable whose right gradient is all zeros here (an
    all-zero answer would pass: the check cannot tell a right answer from a stub)."""
    forward = dict(recognised.forward)
    constant = []
    for w in lecture.LEAVES[:7]:
        value = captured.values.get((lecture.FORWARD, forward.get(w, w)))
        if type(value) is torch.Tensor and value.numel() > 1 and bool((value == value.flatten()[0]).all()):
            first = float(value.flatten()[0])
            constant.append(f"{forward.get(w, w)} is all {({0.0: 'zeros', 1.0: 'ones'}).get(first, f'{first:g}')}")
    why = f" ({', '.join(constant)})" if constant else ""
    out = {}
    for ex in rubric.exercises:
        for v in ex.variables:
            ref = refs.get(ex.reference_key(v))
            if isinstance(ref, torch.Tensor) and ref.numel() and not bool(ref.any()):
                out[(ex.id, v.name)] = (
                    f"{v.name}: the right gradient is all zeros with this notebook's parameters{why}, so any all-zero "
                    "answer passes, a stub too: not counted; draw the parameters at random, as the lecture does, to "
                    "test this step"
                )
    return out


def _with_warnings(report: Report, changed: tuple[Changed, ...], zero: dict[tuple[str, str], str]) -> Report:
    """`report` with the lecture's own warnings on their variables (and the points of all-zero references
    taken back)."""
    if not changed and not zero:
        return report
    by = {(c.exercise, c.name): c.message for c in changed}
    variables: list[VariableResult] = []
    for v in report.variables:
        key = (v.exercise, v.name)
        if key in zero and v.status in ("exact", "approximate"):
            v = dataclasses.replace(v, points=0.0, message=_joined(zero[key], v.message))
        if key in by:
            v = dataclasses.replace(v, message=_joined(v.message, by[key]))
        variables.append(v)
    exercises = tuple(
        dataclasses.replace(e, score=sum(v.points for v in variables if v.exercise == e.id)) for e in report.exercises
    )
    return dataclasses.replace(
        report, variables=tuple(variables), exercises=exercises, score=sum(e.score for e in exercises)
    )


def _joined(first: str, second: str) -> str:
    return f"{first}; {second}" if first and second else first or second
