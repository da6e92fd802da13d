"""Planning the run of a lecture notebook: which cells the child runs, in what order, and what it captures.

Guarantees:

* the plan holds the notebook's cells up to the end of Exercise 3, each rewritten (`rewrite`): all with
  autograd refused (the forward pass without PyTorch's backward pass, the exercises without their check
  calls), each exercise cell given its exercise's id;
* the grader's own cells (the stand-in for missing modules, the copy function for checks) come first, and only
  when a cell needs them;
* one capture takes the forward tensors just before Exercise 1, and one per exercise found takes its
  gradients (and the copies its check calls recorded) over its cells, up to the next exercise;
* what could not be found, or was not run, is said in the plan's notes and its unfound variables.

Pure functions of the notebook: nothing here runs its code.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass

import nbformat

from grader import rubric as rubrics
from grader.lecture.cells import Cell, cell_range, checkers_in, name_key, read
from grader.lecture.own_checks import Check, check_statements, checks
from grader.lecture.recognition import Recognised
from grader.lecture.rewrite import COPY_SOURCE, STAND_IN_SOURCE, rewrite_cell
from grader.lecture.tensors import LEAVES
from grader.plan import Capture, Plan, PlannedCell

FORWARD = "#forward"
"""Id of the capture that takes the forward pass's tensors, just before Exercise 1."""
OWN = "#own"
"""Id of the capture that takes autograd's gradients through the notebook's own forward pass (`own_forward`)."""
OWN_LEAVES = "#own-leaves"
"""Id of the capture that takes that run's parameters and minibatch, to confirm it ran the same forward pass."""
OWN_PREFIX = "_grader_own_"
"""The names the grader's own cell keeps those gradients under (`_grader_own_bnvar_inv`)."""

# (`import torch` inside the function: in the notebook's namespace, `torch` may be unbound (`import torch as t`)
# or something else)
_OWN_SOURCE = """# The grader's own cell: autograd's gradients through the notebook's own forward pass, from its loss
def _grader_own_gradients(names, loss):
    import torch
    tensors = {{ours: globals().get(theirs) for ours, theirs in names}}
    for t in tensors.values():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            if t.is_leaf:
                t.grad = None  # (nothing accumulated before counts)
            else:
                t.retain_grad()
    torch.autograd.backward(globals()[loss])
    for ours, t in tensors.items():
        globals()[{prefix!r} + ours] = t.grad if isinstance(t, torch.Tensor) else None


_grader_own_gradients({names!r}, {loss!r})
del _grader_own_gradients
"""


def plan(nb: nbformat.NotebookNode, rec: Recognised, rubric: rubrics.Rubric) -> Plan:
    """The run of a lecture notebook: its cells up to Exercise 3, all with autograd refused (the forward
    pass without PyTorch's backward pass, the exercises without their check calls)."""
    cells = read(nb)
    checkers = checkers_in(cells)
    keys = {name_key(ours) for ours, _ in rec.forward} | {name_key(g.of) for g in rec.gradients}
    first = rec.sections[0].cells[0] if rec.sections else len(nb.cells)
    rewritten = _rewritten(cells, rec, checkers, keys, first)
    copies = any(
        names for c in cells if first <= c.index <= rec.last for _, names in check_statements(c, checkers, keys)
    )
    planned = [*_grader_cells(rewritten.stand_in, copies), *rewritten.cells]
    notes = [*rec.notes, *rewritten.notes, *_checks_note(rewritten.checked_lines), *_not_run_note(cells, rec)]
    captures = _captures(rec, rubric, planned, checks(nb, rec))
    return Plan(tuple(planned), captures, tuple(notes), _unfound(rec, rubric))


@dataclass(frozen=True)
class _Rewritten:
    """The notebook's cells that the run executes, as `rewrite_cell` made them."""

    cells: tuple[PlannedCell, ...]
    """Each cell up to the last one the run needs, in order."""
    notes: tuple[str, ...]
    """What changed, cell by cell."""
    stand_in: bool
    """Whether a cell needs the stand-in for missing modules."""
    checked_lines: tuple[tuple[Cell, str], ...]
    """Each exercise cell with checks left out, and their lines (`lines 3-5`)."""


def _rewritten(cells: list[Cell], rec: Recognised, checkers: set[str], keys: set[str], first: int) -> _Rewritten:
    """The cells up to `rec.last`, each rewritten: those before Exercise 1 (`first`) without autograd, the others
    each given its exercise's id."""
    section_of = {i: s.exercise for s in rec.sections for i in range(s.cells[0], s.cells[-1] + 1)}
    planned: list[PlannedCell] = []
    notes: list[str] = []
    needs_stand_in = False
    checked_lines: list[tuple[Cell, str]] = []
    for c in cells:
        if c.index > rec.last:
            continue
        role = "before" if c.index < first else "exercise"
        source, changed, stand_in, checked = rewrite_cell(c, role, checkers, keys)
        notes += changed
        if checked:
            checked_lines.append((c, checked))
        needs_stand_in |= stand_in
        if role == "before":  # autograd refused here too: no gradient can be taken early and kept for later
            planned.append(PlannedCell(c.label, source, no_grad=True, guarded=True, cell=c.index))
        else:
            exercise = section_of.get(c.index) or _section_before(rec, c.index)
            planned.append(
                PlannedCell(
                    f"{c.label} ({exercise})", source, no_grad=False, guarded=True, grade_id=exercise, cell=c.index
                )
            )
    return _Rewritten(tuple(planned), tuple(notes), needs_stand_in, tuple(checked_lines))


def _checks_note(checked_lines: tuple[tuple[Cell, str], ...]) -> list[str]:
    """One note for all cells whose checks were left out (one gradient per cell: dozens of them)."""
    if not checked_lines:
        return []
    where = (
        f"{checked_lines[0][0].label}, {checked_lines[0][1]}"
        if len(checked_lines) == 1
        else "cells " + _numbers([c.number for c, _ in checked_lines])
    )
    return [
        f"your checks against autograd's gradients ({where}) were not run: the grader compares every "
        "gradient itself, as each check saw it"
    ]


def _not_run_note(cells: list[Cell], rec: Recognised) -> list[str]:
    """The note on the cells after the last one the run needs, naming the training loop among them."""
    skipped = [c for c in cells if c.index > rec.last]
    if skipped and not rec.sections:
        return ["nothing was run: there is no answer to grade yet"]
    if not skipped:
        return []
    loops = [
        (c, c.source.splitlines()[n.lineno - 1].strip())
        for c in skipped
        if c.tree
        for n in ast.walk(c.tree)
        if isinstance(n, (ast.For, ast.While))
    ]
    # the training loop: the one over `max_steps` or a large literal, if there is one (read in the loop's
    # first 200 characters: the pattern takes time quadratic in a line's length)
    loops.sort(key=lambda cl: not re.search(r"range\(.*(steps|\d{4,})", cl[1][:200]))
    what = f", among them the loop `{loops[0][1][:60]}` in {loops[0][0].label}" if loops else ""
    return [
        f"{cell_range((skipped[0].index, skipped[-1].index))} not run{what}: lecture notebooks are "
        "graded on Exercises 1-3"
    ]


def _grader_cells(stand_in: bool, copies: bool) -> list[PlannedCell]:
    """The grader's own cells the notebook's need, which run first: the copy function for its check statements
    (guarded like the notebook's cells: it only defines the function they call), the stand-in for missing modules."""
    out = []
    if copies:
        out.append(PlannedCell("the grader's record of your checks", COPY_SOURCE, no_grad=False, guarded=True))
    if stand_in:
        out.append(
            PlannedCell("the grader's stand-in for missing modules", STAND_IN_SOURCE, no_grad=False, guarded=False)
        )
    return out


def _captures(
    rec: Recognised, rubric: rubrics.Rubric, planned: list[PlannedCell], recorded: tuple[Check, ...]
) -> tuple[Capture, ...]:
    """The forward tensors just before Exercise 1, then each exercise found: its gradients and the copies its check
    calls `recorded`, over its cells (in `planned`), up to the next exercise."""
    positions = {p.cell: i for i, p in enumerate(planned) if p.cell is not None}
    forward_names = tuple(dict.fromkeys(theirs for _, theirs in rec.forward))
    starts = sorted(positions[s.cells[0]] for s in rec.sections)
    before = starts[0] if starts else len(planned)
    captures = [Capture(FORWARD, forward_names, before, before)]
    for ex in rubric.exercises:
        section = next((s for s in rec.sections if s.exercise == ex.id), None)
        if section is None:
            continue
        start = positions[section.cells[0]]
        later = [p for p in starts if p > start]
        snapshots = tuple(k.snapshot for k in recorded if k.exercise == ex.id)
        captures.append(
            Capture(ex.id, tuple(v.name for v in ex.variables) + snapshots, start, later[0] if later else len(planned))
        )
    return tuple(captures)


def _unfound(rec: Recognised, rubric: rubrics.Rubric) -> tuple[tuple[str, str, str], ...]:
    """(exercise, variable, why) for each exercise with no cells and each gradient not found in its exercise."""
    unfound = []
    for ex in rubric.exercises:
        if not any(s.exercise == ex.id for s in rec.sections):
            unfound.append(
                (
                    ex.id,
                    "",
                    f"no cells for Exercise {ex.id[2:]} were found (no `# Exercise {ex.id[2:]}` "
                    "comment, and no cell computing its gradient after Exercise 1)",
                )
            )
            continue
        for g in rec.gradients:
            if g.exercise == ex.id and not g.how:
                unfound.append(
                    (
                        ex.id,
                        g.name,
                        f"not found in Exercise {ex.id[2:]} (no check call names {g.of}; "
                        f"no d{g.of} or d_{g.of} is assigned)",
                    )
                )
    return tuple(unfound)


def _numbers(numbers: list[int]) -> str:
    """`11-38, 40, 42` for the numbers 11 to 38, 40 and 42 (in order)."""
    runs: list[list[int]] = []
    for k in numbers:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def _section_before(rec: Recognised, index: int) -> str:
    return max((s for s in rec.sections if s.cells[0] <= index), key=lambda s: s.cells[0]).exercise


def own_forward(plan: Plan, rec: Recognised, loss: str) -> Plan:
    """The run that gives the reference where the notebook's forward pass is not the lecture's: its cells up to
    Exercise 1 as `plan` runs them (rewritten: no backward pass of its own, no check), with autograd on and no
    guard, then the grader's own cell, which asks autograd for the gradient of every forward tensor from `loss`.
    A run of its own, in a process of its own: the answers are graded from the other run, where autograd is
    refused, so a `.grad` copied into an answer is still caught there."""
    forward = next(c for c in plan.captures if c.exercise == FORWARD)
    names = tuple((ours, theirs) for ours, theirs in rec.forward)
    cells = [dataclasses.replace(c, no_grad=False, guarded=False) for c in plan.cells[: forward.before]]
    cells.append(
        PlannedCell(
            "the grader's autograd through your forward pass",
            _OWN_SOURCE.format(names=names, loss=dict(rec.forward).get(loss, loss), prefix=OWN_PREFIX),
            no_grad=False,
            guarded=False,
        )
    )
    end = len(cells)
    leaves = tuple(theirs for ours, theirs in names if ours in LEAVES)
    return Plan(
        tuple(cells),
        (
            Capture(OWN, tuple(OWN_PREFIX + ours for ours, _ in names), end, end),
            Capture(OWN_LEAVES, leaves, end, end),
        ),
        (),
    )
