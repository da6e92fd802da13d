"""Stage 2: plan a submission's run.

The plan is what the child process executes: the student's cells in the student's order, with locked
cells restored to their released version, the grader's parameters injected after the `parameters`
cell, the cells the rubric skips left out, and the points at which each exercise's variables are
captured. Pure: it reads the notebooks it is given and starts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import nbformat

from grader.assignment import Assignment
from grader.notebook import grade_id, has_tag, is_locked
from grader.rubric import Rubric


@dataclass(frozen=True)
class PlannedCell:
    """One code cell as the child will run it."""

    label: str
    """How messages name the cell, e.g. `cell 9 (ex1)`."""
    source: str
    """The code to run."""
    no_grad: bool
    """Run with autograd switched off."""
    guarded: bool = False
    """Student code: run with autograd refused (`autograd is not allowed in this exercise`)."""
    grade_id: str | None = None
    """The nbgrader grade_id of the cell it came from, if any (`<parameters>` for the injected one)."""
    cell: int | None = None
    """The index of the notebook cell it came from (None for the grader's own cells)."""


@dataclass(frozen=True)
class Capture:
    """When to take a snapshot of one exercise's variables."""

    exercise: str
    """Exercise id."""
    variables: tuple[str, ...]
    """Variable names to capture."""
    start: int
    """Plan position of the exercise's answer cell; values not (re)assigned since then don't count."""
    before: int
    """Capture just before running the cell at this plan position (`len(cells)`: at the end)."""
    function: str | None = None
    """For an answer that is a function: its name; its calls are recorded from the answer cell on."""
    calls: tuple[int, ...] = ()
    """Which calls to record (0 = the first)."""
    returns: tuple[str, ...] = ()
    """Names for the values a recorded call returns, in order."""
    wrt: str | None = None
    """Name of the list of tensors whose values are recorded with each call (the weights at that step)."""
    numbers: bool = False
    """Values exercises: plain Python numbers count too (sent as float64 tensors)."""


@dataclass(frozen=True)
class Plan:
    """What the child process runs, and how to read what it returns."""

    cells: tuple[PlannedCell, ...]
    """Cells in execution order."""
    captures: tuple[Capture, ...]
    """One per exercise."""
    notes: tuple[str, ...]
    """What the grader changed or could not find, for the report."""
    unfound: tuple[tuple[str, str, str], ...] = ()
    """(exercise, variable or "" for all of its variables, why): answers the grader could not locate."""


PARAMS = "<parameters>"  # stands for the injected parameters cell among grade_ids


def injected_source(params: dict[str, object]) -> str:
    """Code assigning `params`, as papermill's injected-parameters cell does."""
    return "# Parameters injected by the grader\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())


def _first_line(source: str) -> str:
    lines = [ln for ln in source.strip().splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


def plan(student: nbformat.NotebookNode, assignment: Assignment, params: dict[str, object]) -> Plan:
    """Plan the grading run of `student` against the released notebook of `assignment`, with `params` injected."""
    released, rubric = assignment.released, assignment.rubric
    locked = {grade_id(c): c for c in released.cells if c.cell_type == "code" and is_locked(c) and grade_id(c)}
    cells, gids, notes, seen = _student_cells(student, rubric, locked, params)
    _restore_deleted(released, rubric, locked, seen, cells, gids, notes)
    if PARAMS not in gids:
        # No tagged cell: inject right before the first cell that uses the parameters, so that an
        # untagged cell of the student's own setting them cannot override them.
        at = min((gids.index(g) for g in rubric.setup_cells + rubric.reference_cells if g in gids), default=0)
        cells.insert(at, PlannedCell("injected parameters", injected_source(params), no_grad=False, grade_id=PARAMS))
        gids.insert(at, PARAMS)
        notes.append("no cell is tagged `parameters`: the grader's parameters were set before the setup cell")
    captures = _captures(rubric, gids, len(cells), notes)
    return Plan(tuple(cells), tuple(captures), tuple(notes))


def _student_cells(
    student: nbformat.NotebookNode,
    rubric: Rubric,
    locked: dict[str | None, nbformat.NotebookNode],
    params: dict[str, object],
) -> tuple[list[PlannedCell], list[str | None], list[str], set[str]]:
    """The student's code cells as they will run (locked ones as released, skipped and repeated ones left out, the
    parameters injected after the tagged cell); the grade_id of each (None: none, or not its first time); the notes
    on what changed; and the grade_ids seen."""
    no_grad, skip = set(rubric.no_grad_cells), set(rubric.skip_cells)
    protected = set(locked) | skip | no_grad | set(rubric.reference_cells)
    cells: list[PlannedCell] = []
    gids: list[str | None] = []  # grade_id of each planned cell, for placing missing locked cells
    notes: list[str] = []
    seen: set[str] = set()
    for number, cell in enumerate(student.cells, start=1):
        if cell.cell_type != "code":
            continue
        gid = grade_id(cell)
        label = f"cell {number}" + (f" ({gid})" if gid else "")
        if gid in protected and gid in seen:
            # a copy of a locked cell would run the forward pass again, or PyTorch's backward pass
            notes.append(f"{label} repeats the locked cell {gid}: it was not run")
            continue
        source = cell.source
        if gid in locked:
            if source.strip() != locked[gid].source.strip() and gid not in skip:  # (a skipped cell never runs)
                notes.append(f"{label} is locked but was edited: the released version was run instead")
            source = locked[gid].source
        first_time = gid is not None and gid not in seen
        if gid:
            seen.add(gid)
        if gid in skip:
            continue
        cells.append(
            PlannedCell(label, source, no_grad=gid in no_grad, guarded=gid not in locked, grade_id=gid, cell=number - 1)
        )
        gids.append(gid if first_time else None)
        if has_tag(cell, "parameters") and PARAMS not in gids:
            cells.append(PlannedCell("injected parameters", injected_source(params), no_grad=False, grade_id=PARAMS))
            gids.append(PARAMS)
    return cells, gids, notes, seen


def _restore_deleted(
    released: nbformat.NotebookNode,
    rubric: Rubric,
    locked: dict[str | None, nbformat.NotebookNode],
    seen: set[str],
    cells: list[PlannedCell],
    gids: list[str | None],
    notes: list[str],
) -> None:
    """Locked cells the student deleted go back in (into `cells`, `gids` and `notes`) after the cell that precedes
    them in the release."""
    released_order = [
        PARAMS if has_tag(c, "parameters") else grade_id(c) for c in released.cells if c.cell_type == "code"
    ]
    no_grad, skip = set(rubric.no_grad_cells), set(rubric.skip_cells)
    for i, gid in enumerate(released_order):
        if gid in locked and gid not in seen and gid not in skip:
            previous = [g for g in released_order[:i] if g in gids]
            at = gids.index(previous[-1]) + 1 if previous else 0
            cells.insert(
                at, PlannedCell(f"released cell ({gid})", locked[gid].source, no_grad=gid in no_grad, grade_id=gid)
            )
            gids.insert(at, gid)
            notes.append(f"locked cell {gid} was missing: the released version was run in its place")


def _captures(rubric: Rubric, gids: list[str | None], count: int, notes: list[str]) -> list[Capture]:
    """When to capture each exercise's variables in a plan of `count` cells with these grade_ids (an exercise
    without its answer cell gets none, and a note in `notes`)."""
    starts = sorted(gids.index(ex.cell) for ex in rubric.exercises if ex.cell in gids)
    captures = []
    for ex in rubric.exercises:
        if ex.cell not in gids:
            notes.append(f"no answer cell {ex.cell} found: {ex.id} earns no points")
            continue
        start = gids.index(ex.cell)
        later = [p for p in starts if p > start]
        before = later[0] if later else count
        f = ex.function
        if f is None:
            captures.append(
                Capture(ex.id, tuple(v.name for v in ex.variables), start, before, numbers=ex.kind == "values")
            )
        else:
            # the training loop that calls the function comes after the answer cell: capture right after
            # it, so that a scratch cell of the student's further down cannot stop or change its result
            training = [i for i, g in enumerate(gids) if f.training and g in f.training.cells and i > start]
            result = (f.training.result.name,) if f.training else ()
            end = training[-1] + 1 if training else count
            captures.append(
                Capture(
                    ex.id,
                    result,
                    start,
                    end,
                    function=f.name,
                    calls=f.calls,
                    returns=tuple(v.name for v in ex.variables),
                    wrt=f.wrt,
                )
            )
    return captures


def describe_cell(cell: PlannedCell) -> str:
    """The cell's label and its first line of code, for one-line messages."""
    first = _first_line(cell.source)
    return f"{cell.label}: `{first[:60]}{'...' if len(first) > 60 else ''}`" if first else cell.label
