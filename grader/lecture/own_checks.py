"""The notebook's own checks: which gradient each check call saw (the run records it there), and whether the
`cmp` printouts saved in the notebook agree with the grader.

Guarantees:

* a statement of a learner's own checking (a call of their `cmp`, or autograd's `.grad`) that assigns no
  gradient is left out of the run, and each of its calls that names a lecture tensor gets a variable of its own
  (`_grader_checked_<cell>_<k>`) in which the run records that gradient as the call saw it;
* where an exercise makes another name the same tensor and then changes that name in place, the check says so;
* a saved printout is matched to a variable through the tensor its check call passes, not its label (labels
  have typos); the patterns read one part of one line at a time, so no output makes them slow.

Pure functions of the notebook: nothing here runs its code.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass

import nbformat

from grader.lecture.cells import (
    GRAD_ATTRIBUTES,
    Cell,
    CheckCall,
    check_calls,
    check_calls_in,
    checkers_in,
    gradient_key,
    name_key,
    read,
    stored,
    walk,
)
from grader.lecture.recognition import Recognised

CHECKED = "_grader_checked_"
"""Prefix of the variables in which the run records each gradient as a check call saw it."""


@dataclass(frozen=True)
class SavedCheck:
    """One of the notebook's own `cmp` printouts, saved in its outputs, beside the grader's verdict."""

    exercise: str
    """Exercise id."""
    variable: str
    """The notebook's gradient variable."""
    saved_approximate: bool
    """What the printout said."""
    graded_approximate: bool
    """What the grader found (the value against the reference, before any step credit)."""

    @property
    def agrees(self) -> bool:
        """Whether the two say the same."""
        return self.saved_approximate == self.graded_approximate


def check_statements(
    cell: Cell, checkers: set[str], keys: set[str]
) -> list[tuple[ast.stmt, list[tuple[CheckCall, str]]]]:
    """The check statements of an exercise cell (those the run leaves out), each with its calls that name one of
    the lecture's tensors and the variable the run records that call's gradient in (`_grader_checked_<cell>_<k>`,
    k counting the cell's check calls)."""
    if cell.tree is None:
        return []
    out, k = [], 0
    for stmt in cell.tree.body:
        calls = check_calls_in(ast.Module([stmt], []), cell.index, checkers, keys)
        if is_check(stmt, checkers, keys):
            out.append(
                (
                    stmt,
                    [
                        (call, f"{CHECKED}{cell.index}_{k + j}")
                        for j, call in enumerate(calls)
                        if name_key(call.tensor) in keys
                    ],
                )
            )
        k += len(calls)
    return out


def is_check(stmt: ast.stmt, checkers: set[str], keys: set[str]) -> bool:
    """A statement of a learner's own checking, in an exercise: it calls a checker or touches autograd
    (`.grad`, `retain_grad()`, `loss.backward()`), and assigns no gradient (a name `d<tensor>`). A
    gradient assigned from `.grad` stays: the scan flags it."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
        return False
    nodes = [stmt, *walk(stmt)]
    checks = any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in checkers for n in nodes
    ) or any(isinstance(n, ast.Attribute) and n.attr in GRAD_ATTRIBUTES for n in nodes)
    return checks and not any(gradient_key(n) in keys for n in stored(stmt))


@dataclass(frozen=True)
class Check:
    """The last check call of one graded gradient in its exercise: the run records the gradient as that call saw it."""

    exercise: str
    """Exercise id."""
    name: str
    """The notebook's gradient variable, e.g. `dbndiff`."""
    snapshot: str
    """The variable the run records it in (`_grader_checked_<cell>_<k>`)."""
    cell: str
    """The cell of the call, as messages name it (`cell 14`)."""
    alias: str
    """`dhprebn = dbndiff` when the exercise makes another name the same tensor and then changes that name in place;
    else empty."""


def checks(nb: nbformat.NotebookNode, rec: Recognised) -> tuple[Check, ...]:
    """For each graded gradient that a check call in its exercise names: the last such call."""
    cells = read(nb)
    checkers = checkers_in(cells)
    keys = {name_key(ours) for ours, _ in rec.forward} | {name_key(g.of) for g in rec.gradients}
    section_of = {i: s.exercise for s in rec.sections for i in range(s.cells[0], s.cells[-1] + 1)}
    found: dict[tuple[str, str], Check] = {}
    for c in cells:
        exercise = section_of.get(c.index)
        if exercise is None:
            continue
        for _, names in check_statements(c, checkers, keys):
            for call, snapshot in names:
                gradient = next(
                    (
                        g
                        for g in rec.gradients
                        if g.exercise == exercise
                        and g.name == call.gradient
                        and name_key(g.of) == name_key(call.tensor)
                    ),
                    None,
                )
                if gradient is not None:
                    found[(exercise, gradient.name)] = Check(exercise, gradient.name, snapshot, c.label, "")
    aliases = _aliases([c for c in cells if c.index in section_of])
    return tuple(dataclasses.replace(k, alias=aliases.get(k.name, "")) for k in found.values())


def _aliases(cells: list[Cell]) -> dict[str, str]:
    """Name -> `other = name` for each `other = name` (one tensor, two names) after which `other` is changed in place
    (`other += ...`, `other[i] = ...`, `other.add_(...)`)."""
    out: dict[str, str] = {}
    bound: dict[str, str] = {}  # other -> name, for the plain `other = name` seen so far
    for c in cells:
        for stmt in c.tree.body if c.tree else []:
            for node in [stmt, *walk(stmt)]:
                if (
                    isinstance(node, ast.Assign)
                    and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Name)
                ):
                    bound[node.targets[0].id] = node.value.id
                    continue
                if isinstance(node, ast.Assign):  # rebound: no longer the same tensor as before
                    for name in [t.id for t in node.targets if isinstance(t, ast.Name)]:
                        bound.pop(name, None)
                target: ast.expr | None = node.target if isinstance(node, ast.AugAssign) else None
                if isinstance(node, ast.Assign):
                    target = next((t for t in node.targets if isinstance(t, ast.Subscript)), None)
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr.endswith("_")
                    and not node.func.attr.startswith("_")
                ):
                    target = node.func.value
                while isinstance(target, ast.Subscript):
                    target = target.value
                if isinstance(target, ast.Name) and target.id in bound:
                    out.setdefault(bound[target.id], f"{target.id} = {bound[target.id]}")
    return out


# --- saved printouts -----------------------------------------------------------------------------

# One part of a printout line, `exact: True` or `approximate: tensor(False)`: matched on a part that `|` cut out of
# one line, never on a whole output, where a pattern with runs of `\s*` on either side of the label took minutes
# (cubic in the length) on a line of spaces.
_SAVED_PART = re.compile(
    r"\s*(?P<name>exact|approx\w*)\s*(?::\s*)?(?:tensor\()?(?P<value>True|False)\b\)?", re.IGNORECASE
)


def _printouts(text: str) -> Iterator[tuple[str, bool]]:
    """(label, approximate) of each line of `text` as the lecture's cmp prints it:
    `logprobs        | exact: True  | approximate: True  | maxdiff: 0.0`."""
    for line in text.splitlines():
        parts = line.split("|", 3)
        if len(parts) < 3:
            continue
        exact, approx = _SAVED_PART.match(parts[1]), _SAVED_PART.match(parts[2])
        if (
            exact
            and exact["name"].lower() == "exact"
            and not parts[1][exact.end() :].strip()
            and approx
            and approx["name"].lower().startswith("approx")
        ):
            yield parts[0].strip(), approx["value"].lower() == "true"


def saved_checks(
    nb: nbformat.NotebookNode, rec: Recognised, graded: dict[tuple[str, str], bool]
) -> tuple[SavedCheck, ...]:
    """The last saved `cmp` printout of each graded variable, beside the grader's `approximate` for it.

    A printout is matched to a variable through the check call in the cell's source whose label it
    prints (labels have typos; the tensor passed to the call says which variable it is).
    """
    cells = {c.index: c for c in read(nb)}
    checkers = checkers_in(list(cells.values()))
    tensors = {name_key(ours) for ours, _ in rec.forward}
    theirs = dict(rec.forward)
    names = {(g.exercise, name_key(g.of)): g.name for g in rec.gradients}
    # (a tensor under the notebook's own name, `bndiffsq` for `bndiff2`, is the variable of the lecture's)
    names |= {(g.exercise, name_key(theirs[g.of])): g.name for g in rec.gradients if g.of in theirs}
    found: dict[tuple[str, str], bool] = {}
    for section in rec.sections:
        for i in section.cells:
            by_label = {
                k.label.strip(): name_key(k.tensor) for k in check_calls(cells[i], checkers, tensors) if k.label
            }
            text = "".join(
                o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                for o in nb.cells[i].get("outputs", [])
                if o.get("output_type") == "stream"
            )
            for label, approximate in _printouts(text):
                tensor = by_label.get(label)
                name = names.get((section.exercise, tensor)) if tensor else None
                if name is not None:
                    found[(section.exercise, name)] = approximate
    return tuple(
        SavedCheck(ex, name, saved, graded[(ex, name)]) for (ex, name), saved in found.items() if (ex, name) in graded
    )


def saved_note(nb: nbformat.NotebookNode, checks: tuple[SavedCheck, ...]) -> str:
    """One line on how the saved printouts compare with the grader's verdicts."""
    if not checks:
        return ""
    disagree = [c for c in checks if not c.agrees]
    counts = [c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
    stale = (
        " (the saved outputs come from cells run out of order: some may be older than the code)"
        if counts != sorted(counts)
        else ""
    )
    if not disagree:
        return f"your saved cmp printouts agree with the grader on all {len(checks)} checks they show"
    shown = ", ".join(
        f"{c.variable} (saved approximate: {c.saved_approximate}, graded: {c.graded_approximate})" for c in disagree
    )
    return (
        f"your saved cmp printouts disagree with the grader on {len(disagree)} of {len(checks)} checks: {shown}; "
        f"was the cell edited after it ran?{stale} Trust the grader's verdicts: it ran the code as the notebook keeps "
        "it now, where a printout shows what an earlier version printed; run the cell again to bring the printouts "
        "up to date"
    )
