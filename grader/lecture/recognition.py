"""Recognising a lecture notebook: which cells are which exercise, which names are the lecture's tensors, and
which variable holds each gradient.

Guarantees:

* Exercise 1 begins at a `# Exercise 1` comment (or heading) with at least half of the lecture's tensors
  assigned before it, else at the first such cell computing one of its gradients; Exercises 2 and 3 begin at
  their markers, else at the one gradient of the chain each computes again in one go; Exercise 4 (the training
  loop) is never graded, and nothing after Exercise 3 is run;
* a gradient is found by the tensor a check call passes with it (`cmp('bngain', dbn_gain, bngain)`), else by
  its name (`dbngain`, `d_bn_gain`); one not found gets a name guessed in the notebook's style, and says so;
* a notebook that is not the lecture's raises `UnknownAssignment` naming `--assignment`; one with the forward
  pass and no answers yet is the lecture's.

Pure functions of the notebook: nothing here runs its code.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass

import nbformat

from grader import rubric as rubrics
from grader.errors import UnknownAssignment
from grader.lecture.cells import (
    Cell,
    CheckCall,
    cell_range,
    check_calls,
    checkers_in,
    gradient_key,
    name_key,
    read,
    stored,
    walk,
)
from grader.lecture.tensors import LEAVES


@dataclass(frozen=True)
class Section:
    """The cells of one exercise."""

    exercise: str
    """`ex1`, `ex2` or `ex3`."""
    cells: tuple[int, ...]
    """Indices (in `nb.cells`) of its code cells that run."""
    found_by: str
    """How it was found, for the report."""


@dataclass(frozen=True)
class Gradient:
    """Which of the notebook's variables holds the gradient of one of the lecture's tensors."""

    exercise: str
    """Exercise id."""
    of: str
    """The lecture's name of the tensor, e.g. `bngain`."""
    name: str
    """The notebook's variable, e.g. `d_bn_gain` (a guess in the notebook's style when not found)."""
    how: str
    """`cmp` (a check call names it), `name` (assigned under a matching name) or `` (not found)."""


@dataclass(frozen=True)
class Recognised:
    """A lecture notebook mapped onto the lecture rubric."""

    sections: tuple[Section, ...]
    """Exercises 1-3, those found."""
    forward: tuple[tuple[str, str], ...]
    """(the lecture's name, the notebook's name) of the parameters, the batch and the forward tensors."""
    gradients: tuple[Gradient, ...]
    """One per graded variable of the lecture rubric, in its order."""
    last: int
    """Index of the last cell the run needs; the cells after it are not run."""
    notes: tuple[str, ...]
    """How the mapping was made and what could not be found."""


def is_ours(nb: nbformat.NotebookNode) -> bool:
    """Whether the notebook comes from one of our released notebooks: it names an assignment, or its cells
    carry nbgrader ids (a copy whose notebook metadata was lost: graded with --assignment, not as the lecture's)."""
    meta = nb.metadata.get("grader")
    if isinstance(meta, dict) and meta.get("assignment"):
        return True
    return any(
        isinstance(c.get("metadata", {}).get("nbgrader"), dict) and c.metadata.nbgrader.get("grade_id")
        for c in nb.cells
    )


def recognise(nb: nbformat.NotebookNode, path: object, rubric: rubrics.Rubric) -> Recognised:
    """Map a lecture-style notebook onto the lecture's `rubric` (`grader.assignment.lecture()`'s), or raise
    `UnknownAssignment`."""
    notebook = _read_notebook(nb, rubric)
    starts = _starts(notebook, rubric)
    wanted = notebook.wanted
    forward = _forward_names(notebook.cells, wanted, starts.get(1, (notebook.length, ""))[0], notebook.calls)
    found_forward = sum(1 for w in wanted if w in forward)
    if found_forward < len(wanted) // 2 or (1 not in starts and not _forward_pass_alone(forward)):
        raise UnknownAssignment(
            f"{path}: the notebook's metadata names no assignment, and it does not look like the lecture's backprop "
            f"notebook either ({'no Exercise 1 cell' if 1 not in starts else 'too few of its tensors'} found); "
            "pass --assignment NAME to grade it as one of ours"
        )
    sections = _sections(notebook, rubric, starts)
    gradients = _gradients(notebook, rubric, sections, forward)
    last = max((s.cells[-1] for s in sections), default=-1)
    notes = _notes(notebook, sections, gradients, forward)
    return Recognised(tuple(sections), tuple(forward.items()), tuple(gradients), last, tuple(notes))


@dataclass(frozen=True)
class _Notebook:
    """A notebook as recognition reads it: its code cells, and what each assigns and checks."""

    cells: list[Cell]
    """Its code cells (`cells.read`)."""
    length: int
    """How many cells it has (of every kind): where the last section ends at the latest."""
    wanted: list[str]
    """The lecture's names it should have: the parameters and the batch, the graded tensors, the loss."""
    checkers: set[str]
    """The functions it defines to check a gradient (`cmp`, renamed or not)."""
    calls: dict[int, list[CheckCall]]
    """Cell index -> its check calls."""
    stores: dict[int, list[str]]
    """Cell index -> the names its statements assign."""

    def answers(self, cell: Cell, allowed: set[str]) -> bool:
        """Whether `cell` assigns or checks a gradient of one of `allowed` (the lecture's tensors, as `name_key`s)."""
        return any(gradient_key(n) in allowed for n in self.stores[cell.index]) or any(
            name_key(k.tensor) in allowed for k in self.calls[cell.index]
        )

    def after_forward(self, index: int) -> bool:
        """Whether at least half of the lecture's tensors are assigned before the cell at `index`."""
        return len(_forward_names(self.cells, self.wanted, index)) >= len(self.wanted) // 2


def _read_notebook(nb: nbformat.NotebookNode, rubric: rubrics.Rubric) -> _Notebook:
    """`nb` as recognition reads it, looking for the lecture's names in `rubric`."""
    cells = read(nb)
    wanted = list(dict.fromkeys([*LEAVES, *(v.of for ex in rubric.exercises for v in ex.variables), rubric.loss]))
    keys = {name_key(w) for w in wanted}
    checkers = checkers_in(cells)
    calls = {c.index: check_calls(c, checkers, keys) for c in cells}
    stores = {c.index: [n for s in (c.tree.body if c.tree else []) for n in stored(s)] for c in cells}
    return _Notebook(cells, len(nb.cells), wanted, checkers, calls, stores)


def _ex1_keys(rubric: rubrics.Rubric) -> set[str]:
    """The tensors (`name_key`s) whose gradients only Exercise 1 computes: its chain but logits and hprebn, which
    Exercises 2 and 3 compute again."""
    return {name_key(v.of) for v in rubric.exercises[0].variables} - {"logits", "hprebn"}


def _starts(notebook: _Notebook, rubric: rubrics.Rubric) -> dict[int, tuple[int, str]]:
    """Exercise number -> (index of its first cell, how it was found): by their `# Exercise N` comments (or markdown
    headings); else by what the cells compute."""
    ex1_keys = _ex1_keys(rubric)
    starts = _marked_starts(notebook)
    if 1 not in starts:
        first = next(
            (c for c in notebook.cells if notebook.answers(c, ex1_keys) and notebook.after_forward(c.index)), None
        )
        if first is not None:
            starts[1] = (first.index, f"its gradients, from {first.label}")
    if 4 not in starts and 1 in starts:  # Exercise 4 begins with the cell of the training loop
        named = _forward_names(notebook.cells, notebook.wanted, starts[1][0])
        parameters = {named.get(p, p) for p in LEAVES[:7]} | {"parameters"}
        loop = next((c for c in notebook.cells if c.index > starts[1][0] and _trains(c, parameters)), None)
        if loop is not None:
            starts[4] = (loop.index, f"its training loop, in {loop.label}")
    if 1 in starts:
        end = starts.get(4, (notebook.length, ""))[0]
        chain = [c.index for c in notebook.cells if starts[1][0] <= c.index < end and notebook.answers(c, ex1_keys)]
        for k, key in ((2, "logits"), (3, "hprebn")):
            found = None if k in starts else _computed_again(notebook, rubric, starts, chain, k, key)
            if found is not None:
                starts[k] = (found.index, f"its gradient of {key}, in {found.label}")
    return starts


def _marked_starts(notebook: _Notebook) -> dict[int, tuple[int, str]]:
    """The exercises' starts by their markers. Exercise 1 begins at the first of its markers with most of the forward
    pass before it (a summary at the top, or a comment in the forward cell that mentions "Exercise 1", is not where it
    begins); the others, only where Exercise 1 is found so, each at its first marker after every start found."""
    starts: dict[int, tuple[int, str]] = {}
    for c in notebook.cells:
        if c.marker == 1 and notebook.after_forward(c.index):
            starts[1] = (c.index, f"`Exercise 1` in or above {c.label}")
            break
    for c in notebook.cells:
        if (
            c.marker
            and c.marker > 1
            and c.marker not in starts
            and 1 in starts
            and all(c.index > s for s, _ in starts.values())
        ):
            starts[c.marker] = (c.index, f"`Exercise {c.marker}` in or above {c.label}")
    return starts


def _computed_again(
    notebook: _Notebook, rubric: rubrics.Rubric, starts: dict[int, tuple[int, str]], chain: list[int], k: int, key: str
) -> Cell | None:
    """The first cell of Exercise `k` (2 or 3) found by what it computes: the gradient of `key` (`logits`, `hprebn`),
    one gradient of Exercise 1's `chain` (its cells), again, in one go. Learners who work one gradient per cell compute
    dlogits and dhprebn alone inside Exercise 1 too: such a cell begins Exercise 2 (3) only once Exercise 1 is past that
    step of the chain, or (Exercise 1 left half done) when no cell of the chain follows and it reads no gradient of the
    chain (dlogits from softmax, dhprebn from dhpreact alone)."""
    ex1_keys = _ex1_keys(rubric)
    by_index = {c.index: c for c in notebook.cells}
    after = max(s for kk, (s, _) in starts.items() if kk < k)
    until = min((s for s, _ in starts.values() if s > after), default=notebook.length)
    later = {name_key(v.of) for v in rubric.exercises[0].variables[_position(rubric, key) + 1 :]} & ex1_keys
    return next(
        (
            c
            for c in notebook.cells
            if after < c.index < until
            and notebook.answers(c, {key})
            and not notebook.answers(c, ex1_keys)
            and (
                any(i < c.index and notebook.answers(by_index[i], later) for i in chain)
                or (not any(i > c.index for i in chain) and _in_one_go(c, ex1_keys - {"hpreact"}))
            )
        ),
        None,
    )


def _sections(notebook: _Notebook, rubric: rubrics.Rubric, starts: dict[int, tuple[int, str]]) -> list[Section]:
    """Exercises 1-3, those found, in the order of their starts: each from its start up to its last cell that answers
    or checks, before the next exercise's start (an exercise with no such cell is left out)."""
    order = sorted(starts.items(), key=lambda kv: kv[1][0])
    sections = []
    for k, (start, how) in order:
        if k == 4:
            continue
        end = next((s for kk, (s, _) in order if s > start), notebook.length)
        ex = rubric.exercises[k - 1]
        mine = {name_key(v.of) for v in ex.variables}
        in_section = [c for c in notebook.cells if start <= c.index < end]
        needed = [c.index for c in in_section if notebook.answers(c, mine) or notebook.calls[c.index]]
        if not needed:
            continue
        sections.append(Section(ex.id, tuple(c.index for c in in_section if c.index <= needed[-1]), how))
    return sections


def _gradients(
    notebook: _Notebook, rubric: rubrics.Rubric, sections: list[Section], forward: dict[str, str]
) -> list[Gradient]:
    """One per graded variable of the lecture rubric, in its order, found in its exercise's section."""
    style = _style(notebook.stores, notebook.calls)
    gradients = []
    for ex in rubric.exercises:
        section = next((s for s in sections if s.exercise == ex.id), None)
        for v in ex.variables:
            gradients.append(_gradient(ex.id, v.of, section, notebook.calls, notebook.stores, forward, style))
    return gradients


def _notes(
    notebook: _Notebook, sections: list[Section], gradients: list[Gradient], forward: dict[str, str]
) -> list[str]:
    """How the mapping was made, and what could not be found, for the report."""
    notes = [
        "graded as the lecture's own notebook (it names no assignment): "
        + (
            "; ".join(f"Exercise {s.exercise[2:]} in {cell_range(s.cells)} (found by {s.found_by})" for s in sections)
            or "it has the lecture's forward pass, and no gradient of Exercise 1 yet"
        )
    ]
    by_cmp = sum(g.how == "cmp" for g in gradients)
    by_name = sum(g.how == "name" for g in gradients)
    notes.append(
        f"gradients matched to the lecture's tensors: {by_cmp} by the tensor passed to a check call "
        f"({', '.join(sorted(notebook.checkers)) or 'cmp'}), {by_name} by their names"
    )
    found_ids = {s.exercise for s in sections}
    lost = [g for g in gradients if not g.how and g.exercise in found_ids]
    if lost:
        notes.append(
            f"{len(lost)} gradient{'s' if len(lost) > 1 else ''} not found: "
            + ", ".join(f"{g.of} ({g.exercise})" for g in lost)
            + " (no check call names the tensor, and no d<name> or d_<name> "
            "is assigned in its exercise)"
        )
    renamed = [(ours, theirs) for ours, theirs in forward.items() if ours != theirs]
    if renamed:
        notes.append(
            "the notebook's own names for the lecture's tensors: " + ", ".join(f"{t} for {o}" for o, t in renamed)
        )
    absent = [w for w in notebook.wanted if w not in forward]
    if absent:
        notes.append(f"not found in the forward pass (before Exercise 1): {', '.join(absent)}")
    return notes


def _in_one_go(cell: Cell, chain: set[str]) -> bool:
    """Whether the cell reads no gradient of `chain` (the lecture's names): it computes its own from the forward
    tensors (Exercise 2's dlogits from softmax; Exercise 3's dhprebn from dhpreact, the one it is given)."""
    return cell.tree is not None and not any(
        isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and gradient_key(n.id) in chain for n in walk(cell.tree)
    )


def _position(rubric: rubrics.Rubric, of: str) -> int:
    """Where the gradient of `of` comes in Exercise 1's chain (from the loss back)."""
    return next(i for i, v in enumerate(rubric.exercises[0].variables) if name_key(v.of) == name_key(of))


def _forward_pass_alone(forward: dict[str, str]) -> bool:
    """Whether the lecture's forward pass is there, its loss and the tensors of every layer (a notebook with no
    answers yet is still the lecture's)."""
    return all(w in forward for w in (*LEAVES, "hprebn", "bnraw", "hpreact", "h", "logits", "probs", "loss"))


def _trains(cell: Cell, parameters: set[str]) -> bool:
    """Whether the cell has a loop that updates the parameters (a training loop: `p.data += -lr * grad`,
    `W1 -= lr * dW1`, `p.data.add_(...)`, `optimizer.step()`); a loop that builds the data set updates none."""
    for loop in ast.walk(cell.tree) if cell.tree else ():
        if not isinstance(loop, (ast.For, ast.While)):
            continue
        # names that stand for a parameter inside the loop: the lecture's, and loop variables over `parameters`
        params = set(parameters)
        for inner in [loop, *walk(loop)]:
            if isinstance(inner, ast.For) and any(
                isinstance(n, ast.Name) and n.id in parameters for n in ast.walk(inner.iter)
            ):
                params |= {n.id for n in ast.walk(inner.target) if isinstance(n, ast.Name)}
        for node in walk(loop):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "step"
                and not node.args
            ):
                return True  # an optimizer's
            target = (
                node.target
                if isinstance(node, ast.AugAssign)
                else node.func.value
                if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("add_", "sub_", "copy_")
                else None
            )
            if isinstance(node, ast.Assign):
                target = next((t for t in node.targets if isinstance(t, ast.Attribute) and t.attr == "data"), None)
                # `W1 = W1 - lr * dW1`: a parameter computed from itself
                if target is None and any(
                    isinstance(t, ast.Name)
                    and t.id in params
                    and any(isinstance(n, ast.Name) and n.id == t.id for n in ast.walk(node.value))
                    for t in node.targets
                ):
                    return True
            while isinstance(target, (ast.Attribute, ast.Subscript)):
                if isinstance(target, ast.Attribute) and target.attr == "data":
                    return True
                target = target.value
            if isinstance(target, ast.Name) and target.id in params:
                return True
    return False


def _forward_names(
    cells: list[Cell], wanted: list[str], before: int, calls: dict[int, list[CheckCall]] | None = None
) -> dict[str, str]:
    """The lecture's name -> the notebook's, for the tensors assigned before Exercise 1 (the last assignment wins,
    a name spelled exactly as in the lecture first); then, for a lecture tensor not found by its name, the tensor a
    check call labelled with the lecture's name passes (`cmp('bndiff2', dbndiffsq, bndiffsq)`): the label says
    which lecture tensor it stands for, the third argument which of the notebook's it is."""
    assigned: list[str] = []
    for c in cells:
        if c.index < before and c.tree is not None:
            assigned += [n for s in c.tree.body for n in stored(s)]
    named = set(assigned)
    out = {}
    for w in wanted:
        if w in named:
            out[w] = w
            continue
        candidates = [n for n in assigned if name_key(n) == name_key(w)]
        if candidates:
            out[w] = candidates[-1]
    wanted_keys = {name_key(w) for w in wanted}
    for call in (k for i in sorted(calls or {}) for k in (calls or {})[i]):
        labelled = next((w for w in wanted if call.label is not None and name_key(call.label) == name_key(w)), None)
        if (
            labelled is not None
            and labelled not in out
            and call.tensor in named
            and name_key(call.tensor) not in wanted_keys
            and call.tensor not in out.values()
        ):
            out[labelled] = call.tensor
    return out


def _style(stores: dict[int, list[str]], calls: dict[int, list[CheckCall]]) -> str:
    names = [n for ns in stores.values() for n in ns] + [k.gradient for ks in calls.values() for k in ks]
    underscored = sum(n.startswith("d_") for n in names)
    plain = sum(n.startswith("d") and not n.startswith("d_") for n in names)
    return "d_" if underscored > plain else "d"


def _gradient(
    exercise: str,
    of: str,
    section: Section | None,
    calls: dict[int, list[CheckCall]],
    stores: dict[int, list[str]],
    forward: dict[str, str],
    style: str,
) -> Gradient:
    guess = style + forward.get(of, of)
    if section is None:
        return Gradient(exercise, of, guess, "")
    checked = [
        k
        for i in section.cells
        for k in calls[i]
        if name_key(k.tensor) in (name_key(of), name_key(forward.get(of, of)))
    ]
    if checked:
        return Gradient(exercise, of, checked[-1].gradient, "cmp")
    named = [n for i in section.cells for n in stores[i] if gradient_key(n) == name_key(of)]
    if named:
        return Gradient(exercise, of, named[-1], "name")
    return Gradient(exercise, of, guess, "")


def rubric_for(rec: Recognised, rubric: rubrics.Rubric) -> rubrics.Rubric:
    """The lecture's `rubric` with the notebook's own gradient names, so that messages name its variables."""
    names = {(g.exercise, g.of): g.name for g in rec.gradients}
    exercises = tuple(
        dataclasses.replace(
            ex, variables=tuple(dataclasses.replace(v, name=names[(ex.id, v.of)]) for v in ex.variables)
        )
        for ex in rubric.exercises
    )
    return dataclasses.replace(rubric, exercises=exercises)
