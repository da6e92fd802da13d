"""Lecture notebooks: the lecture's own makemore part 4 notebook, graded as learners keep it.

Such a notebook carries no metadata of ours. It is recognised from its code, read top to bottom:

recognise (which cells are which exercise, placed by the check calls and the order of the chain, which
of its names are the lecture's tensors, which variable holds each gradient) -> plan (the cells the child
runs: up to Exercise 3, made safe and quick to run here, each check call replaced by a record of the
gradient as that call saw it) -> [the run: `grade.py`; the reference and the score: `lecture_grading.py`]
-> saved checks (whether the notebook's own saved `cmp` printouts agree with the grader).

Pure functions of the notebook: nothing here runs its code.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import nbformat
from IPython.core.inputtransformer2 import TransformerManager

from grader import rubric as rubrics
from grader.errors import UnknownAssignment
from grader.plan import Capture, Plan, PlannedCell
from grader.scan import python_body

LEAVES = ("C", "W1", "b1", "W2", "b2", "bngain", "bnbias", "Xb", "Yb")
"""The tensors the grader's reference needs from the run: the parameters and the minibatch."""
FORWARD = "#forward"
"""Id of the capture that takes the forward pass's tensors, just before Exercise 1."""
DATA_FILES = ("names.txt", "data/names.txt")
"""Where the run finds the data set (both hold the file given with --data)."""
STAND_IN = "_grader_stand_in"
CHECKED = "_grader_checked_"
"""Prefix of the variables in which the run records each gradient as a check call saw it."""
COPY = "_grader_copy"
COPY_SOURCE = f'''\
def {COPY}(value):
    """The grader's copy of a gradient as a check call saw it; None where it could not be read (as cmp would fail)."""
    import torch

    try:
        value = value()
    except Exception:
        return None
    return value.detach().clone() if type(value) is torch.Tensor else value
'''
GRAD_ATTRIBUTES = frozenset({"backward", "retain_grad", "grad", "autograd"})
# (`[ \t]`, not `\s`, before the word: `\s` also takes line breaks, and every line start of a long run of blank
# lines would then scan to its end: minutes for a cell of them)
MARKER = re.compile(r"^[ \t#*>]*exercise\s*([1-4])\b", re.IGNORECASE | re.MULTILINE)
SHELL_CELL_MAGICS = frozenset({"bash", "sh", "shell", "script", "system", "writefile", "html", "javascript", "js"})
SHELL_LINE_MAGICS = frozenset({"pip", "conda", "mamba", "cd", "sx", "system", "run", "load", "env", "bookmark",
                               "sh", "bash", "writefile"})
_PARSING = threading.Lock()  # (CPython 3.11's ast is not thread-safe)


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


# --- reading cells -------------------------------------------------------------------------------


@dataclass
class _Cell:
    index: int
    number: int  # 1-based position among all cells, as messages name them
    source: str  # with shell escapes neutralised, magics translated: plain Python
    tree: ast.Module | None
    shell: tuple[str, ...]  # a shell cell magic that replaced the whole cell (`%%bash`), if any
    marker: int | None

    @property
    def label(self) -> str:
        return f"cell {self.number}"


def _key(name: str) -> str:
    """Names compared loosely: `bn_var_inv` is the lecture's `bnvar_inv`."""
    return name.replace("_", "").lower()


def _gradient_key(name: str) -> str | None:
    """`dbn_gain` and `d_bngain` -> `bngain`; None for a name that does not start with d."""
    if name.startswith("d_") and len(name) > 2:
        return _key(name[2:])
    if name.startswith("d") and len(name) > 1:
        return _key(name[1:])
    return None


def _neutralised(source: str) -> tuple[str, tuple[str, ...]]:
    """A shell cell (`%%bash`) as `pass`, and a `%%time`/`%%capture` cell as its plain body; the shell cell's
    first line, if it was one. (Line shell escapes, `!wget` and `%pip`, are found in the syntax tree.)"""
    lines = source.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if first.startswith("%%") and first[2:].split(" ")[0] in SHELL_CELL_MAGICS:
        return "pass\n", (first,)
    return python_body(source), ()


def _shell_call(node: ast.AST) -> str | None:
    """For a call IPython made of a shell escape (`!cmd`, `x = !cmd`, `%pip ...`): the escape as written."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Call) and isinstance(node.func.value.func, ast.Name)
            and node.func.value.func.id == "get_ipython"):
        return None
    args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if node.func.attr in ("system", "getoutput") and args:
        return "!" + args[0]
    if node.func.attr == "run_line_magic" and args and args[0] in SHELL_LINE_MAGICS:
        return f"%{args[0]} {args[1] if len(args) > 1 else ''}".strip()
    return None


def _read(nb: nbformat.NotebookNode) -> list[_Cell]:
    """The notebook's cells as the stages here read them (recognise, plan and saved_checks: parsed once)."""
    return list(_read_cells(tuple((c.cell_type, c.source if isinstance(c.source, str) else "".join(c.source))
                                  for c in nb.cells)))


@functools.lru_cache(maxsize=16)
def _read_cells(cells_in: tuple[tuple[str, str], ...]) -> tuple[_Cell, ...]:
    cells = []
    pending_marker = None  # a markdown heading "Exercise N" marks the next code cell
    for index, (cell_type, text) in enumerate(cells_in):
        if cell_type == "markdown":
            found = MARKER.search(text)
            pending_marker = int(found.group(1)) if found else pending_marker
            continue
        if cell_type != "code":
            continue
        plain, shell = _neutralised(text)
        try:
            with _PARSING:
                translated = TransformerManager().transform_cell(plain)
                tree = ast.parse(translated)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            translated, tree = plain, None
        marker = _comment_marker(text) or pending_marker
        pending_marker = None
        cells.append(_Cell(index, index + 1, translated, tree, shell, marker))
    return tuple(cells)  # (shared by the callers of _read: never changed)


def _comment_marker(text: str) -> int | None:
    """N, for the first comment line of a code cell that starts `# Exercise N`."""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            found = MARKER.match(line)
            if found:
                return int(found.group(1))
    return None


def _walk(node: ast.AST):
    """Every node below `node`, in source order, not descending into function and class bodies."""
    todo = list(reversed(list(ast.iter_child_nodes(node))))  # (a list, not recursion: code can nest deeper than the stack)
    while todo:
        child = todo.pop()
        yield child
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            todo += reversed(list(ast.iter_child_nodes(child)))


def _stored(node: ast.AST) -> list[str]:
    """Names `node` assigns (loop variables aside), outside function bodies."""
    loops = {id(n) for s in [node, *_walk(node)] if isinstance(s, (ast.For, ast.comprehension))
             for n in ast.walk(s.target)}
    return [n.id for n in [node, *_walk(node)] if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            and id(n) not in loops]


@dataclass(frozen=True)
class _Call:
    cell: int  # index in nb.cells
    label: str | None  # the string first argument, if there is one
    gradient: str  # the second argument's name
    tensor: str  # the third argument's name


def _checkers(cells: list[_Cell]) -> set[str]:
    """Functions the notebook defines to compare a gradient with autograd's (the lecture's `cmp`, renamed or not)."""
    out = set()
    for c in cells:
        for node in ast.walk(c.tree) if c.tree else ():
            # (`.grad` looked for below functions only: below every node, the walks add up to the square of a cell's size)
            if isinstance(node, ast.FunctionDef) and len(node.args.args) >= 3 and _reads_grad(node):
                out.add(node.name)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda) and \
                    len(node.value.args.args) >= 3 and _reads_grad(node):  # `cmp = lambda s, dt, t: ...`
                out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return out


def _reads_grad(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "grad" for n in ast.walk(node))


def _calls(cell: _Cell, checkers: set[str], tensors: set[str]) -> list[_Call]:
    """The check calls of a cell, in order: `cmp('probs', dprobs, probs)` and the like."""
    return _calls_in(cell.tree, cell.index, checkers, tensors) if cell.tree else []


def _calls_in(tree: ast.AST, index: int, checkers: set[str], tensors: set[str]) -> list[_Call]:
    """The check calls below `tree` (of the cell at `index`), in source order."""
    out = []
    for node in _walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 3):
            continue
        label, gradient, tensor = node.args[:3]
        if not (isinstance(gradient, ast.Name) and isinstance(tensor, ast.Name)):
            continue
        labelled = isinstance(label, ast.Constant) and isinstance(label.value, str)
        if node.func.id in checkers or (labelled and _key(tensor.id) in tensors):
            out.append(_Call(index, label.value if labelled else None, gradient.id, tensor.id))
    return out


def _snapshots(cell: _Cell, checkers: set[str], keys: set[str]) -> list[tuple[ast.stmt, list[tuple[_Call, str]]]]:
    """The check statements of an exercise cell (those the run leaves out), each with its calls that name one of
    the lecture's tensors and the variable the run records that call's gradient in (`_grader_checked_<cell>_<k>`,
    k counting the cell's check calls)."""
    if cell.tree is None:
        return []
    out, k = [], 0
    for stmt in cell.tree.body:
        calls = _calls_in(ast.Module([stmt], []), cell.index, checkers, keys)
        if _is_check(stmt, checkers, keys):
            out.append((stmt, [(call, f"{CHECKED}{cell.index}_{k + j}") for j, call in enumerate(calls)
                               if _key(call.tensor) in keys]))
        k += len(calls)
    return out


def _is_check(stmt: ast.stmt, checkers: set[str], keys: set[str]) -> bool:
    """A statement of a learner's own checking, in an exercise: it calls a checker or touches autograd
    (`.grad`, `retain_grad()`, `loss.backward()`), and assigns no gradient (a name `d<tensor>`). A
    gradient assigned from `.grad` stays: the scan flags it."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
        return False
    nodes = [stmt, *_walk(stmt)]
    checks = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in checkers for n in nodes) or \
        any(isinstance(n, ast.Attribute) and n.attr in GRAD_ATTRIBUTES for n in nodes)
    return checks and not any(_gradient_key(n) in keys for n in _stored(stmt))


def _is_autograd(stmt: ast.stmt) -> bool:
    """A statement of PyTorch's own backward pass (`loss.backward()`, `t.retain_grad()`, `p.grad = None`)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
        return False
    return any(isinstance(n, ast.Attribute) and n.attr in GRAD_ATTRIBUTES for n in [stmt, *_walk(stmt)])


# --- recognising ---------------------------------------------------------------------------------


def is_ours(nb: nbformat.NotebookNode) -> bool:
    """Whether the notebook comes from one of our released notebooks: it names an assignment, or its cells
    carry nbgrader ids (a copy whose notebook metadata was lost: graded with --assignment, not as the lecture's)."""
    meta = nb.metadata.get("grader")
    if isinstance(meta, dict) and meta.get("assignment"):
        return True
    return any(isinstance(c.get("metadata", {}).get("nbgrader"), dict) and c.metadata.nbgrader.get("grade_id")
               for c in nb.cells)


def recognise(nb: nbformat.NotebookNode, path: object) -> Recognised:
    """Map a lecture-style notebook onto the lecture rubric, or raise `UnknownAssignment`."""
    rubric = rubrics.load(rubrics.LECTURE)
    cells = _read(nb)
    wanted = list(dict.fromkeys([*LEAVES, *(v.of for ex in rubric.exercises for v in ex.variables), rubric.loss]))
    keys = {_key(w) for w in wanted}
    checkers = _checkers(cells)
    calls = {c.index: _calls(c, checkers, keys) for c in cells}
    stores = {c.index: [n for s in (c.tree.body if c.tree else []) for n in _stored(s)] for c in cells}

    ex1_keys = {_key(v.of) for v in rubric.exercises[0].variables} - {"logits", "hprebn"}
    by_index = {c.index: c for c in cells}

    def answers(c: _Cell, allowed: set[str]) -> bool:
        return any(_gradient_key(n) in allowed for n in stores[c.index]) or \
            any(_key(k.tensor) in allowed for k in calls[c.index])

    # Sections: by their `# Exercise N` comments (or markdown headings); else by what the cells compute.
    # Exercise 1 begins at the first of its markers with most of the forward pass before it (a summary at the
    # top, or a comment in the forward cell that mentions "Exercise 1", is not where it begins).
    starts: dict[int, tuple[int, str]] = {}
    for c in cells:
        if c.marker == 1 and len(_forward_names(cells, wanted, c.index)) >= len(wanted) // 2:
            starts[1] = (c.index, f"`Exercise 1` in or above {c.label}")
            break
    for c in cells:
        if c.marker and c.marker > 1 and c.marker not in starts and 1 in starts \
                and all(c.index > s for s, _ in starts.values()):
            starts[c.marker] = (c.index, f"`Exercise {c.marker}` in or above {c.label}")
    if 1 not in starts:
        first = next((c for c in cells if answers(c, ex1_keys)
                      and len(_forward_names(cells, wanted, c.index)) >= len(wanted) // 2), None)
        if first is not None:
            starts[1] = (first.index, f"its gradients, from {first.label}")
    if 4 not in starts and 1 in starts:  # Exercise 4 begins with the cell of the training loop
        named = _forward_names(cells, wanted, starts[1][0])
        parameters = {named.get(p, p) for p in LEAVES[:7]} | {"parameters"}
        loop = next((c for c in cells if c.index > starts[1][0] and _trains(c, parameters)), None)
        if loop is not None:
            starts[4] = (loop.index, f"its training loop, in {loop.label}")
    if 1 in starts:
        # Exercises 2 and 3 each compute one gradient of Exercise 1's chain again, in one go. Learners who work one
        # gradient per cell compute dlogits and dhprebn alone inside Exercise 1 too: such a cell begins Exercise 2
        # (3) only once Exercise 1 is past that step of the chain, or (Exercise 1 left half done) when no cell of the
        # chain follows and it reads no gradient of the chain (dlogits from softmax, dhprebn from dhpreact alone).
        chain = [c.index for c in cells if c.index >= starts[1][0] and answers(c, ex1_keys)
                 and c.index < starts.get(4, (len(nb.cells), ""))[0]]
        for k, key in ((2, "logits"), (3, "hprebn")):
            if k in starts:
                continue
            after = max(s for kk, (s, _) in starts.items() if kk < k)
            until = min((s for s, _ in starts.values() if s > after), default=len(nb.cells))
            later = {_key(v.of) for v in rubric.exercises[0].variables[_position(rubric, key) + 1:]} & ex1_keys
            found = next((c for c in cells if after < c.index < until and answers(c, {key})
                          and not answers(c, ex1_keys)
                          and (any(i < c.index and answers(by_index[i], later) for i in chain)
                               or (not any(i > c.index for i in chain) and _in_one_go(c, ex1_keys - {"hpreact"})))),
                         None)
            if found is not None:
                starts[k] = (found.index, f"its gradient of {key}, in {found.label}")

    forward = _forward_names(cells, wanted, starts.get(1, (len(nb.cells), ""))[0])
    found_forward = sum(1 for w in wanted if w in forward)
    if found_forward < len(wanted) // 2 or (1 not in starts and not _forward_pass_alone(forward)):
        raise UnknownAssignment(
            f"{path}: the notebook's metadata names no assignment, and it does not look like the lecture's backprop "
            f"notebook either ({'no Exercise 1 cell' if 1 not in starts else 'too few of its tensors'} found); "
            "pass --assignment NAME to grade it as one of ours")

    order = sorted(starts.items(), key=lambda kv: kv[1][0])
    sections, gradients, notes = [], [], []
    style = _style(stores, calls)
    for k, (start, how) in order:
        if k == 4:
            continue
        end = next((s for kk, (s, _) in order if s > start), len(nb.cells))
        ex = rubric.exercises[k - 1]
        mine = {_key(v.of) for v in ex.variables}
        in_section = [c for c in cells if start <= c.index < end]
        needed = [c.index for c in in_section if answers(c, mine) or calls[c.index]]
        if not needed:
            continue
        sections.append(Section(ex.id, tuple(c.index for c in in_section if c.index <= needed[-1]), how))
    found_ids = {s.exercise for s in sections}
    for ex in rubric.exercises:
        section = next((s for s in sections if s.exercise == ex.id), None)
        for v in ex.variables:
            gradients.append(_gradient(ex.id, v.of, section, calls, stores, forward, style))
    last = max((s.cells[-1] for s in sections), default=-1)

    notes.append("graded as the lecture's own notebook (it names no assignment): " + ("; ".join(
        f"Exercise {s.exercise[2:]} in {_cell_range(s.cells)} (found by {s.found_by})" for s in sections) or
        "it has the lecture's forward pass, and no gradient of Exercise 1 yet"))
    by_cmp = sum(g.how == "cmp" for g in gradients)
    by_name = sum(g.how == "name" for g in gradients)
    notes.append(f"gradients matched to the lecture's tensors: {by_cmp} by the tensor passed to a check call "
                 f"({', '.join(sorted(checkers)) or 'cmp'}), {by_name} by their names")
    lost = [g for g in gradients if not g.how and g.exercise in found_ids]
    if lost:
        notes.append(f"{len(lost)} gradient{'s' if len(lost) > 1 else ''} not found: " + ", ".join(
            f"{g.of} ({g.exercise})" for g in lost) + " (no check call names the tensor, and no d<name> or d_<name> "
            "is assigned in its exercise)")
    renamed = [(ours, theirs) for ours, theirs in forward.items() if ours != theirs]
    if renamed:
        notes.append("the notebook's own names for the lecture's tensors: " + ", ".join(f"{t} for {o}" for o, t in renamed))
    absent = [w for w in wanted if w not in forward]
    if absent:
        notes.append(f"not found in the forward pass (before Exercise 1): {', '.join(absent)}")
    return Recognised(tuple(sections), tuple(forward.items()), tuple(gradients), last, tuple(notes))


def _in_one_go(cell: _Cell, chain: set[str]) -> bool:
    """Whether the cell reads no gradient of `chain` (the lecture's names): it computes its own from the forward
    tensors (Exercise 2's dlogits from softmax; Exercise 3's dhprebn from dhpreact, the one it is given)."""
    return cell.tree is not None and not any(
        isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and _gradient_key(n.id) in chain for n in _walk(cell.tree))


def _position(rubric: rubrics.Rubric, of: str) -> int:
    """Where the gradient of `of` comes in Exercise 1's chain (from the loss back)."""
    return next(i for i, v in enumerate(rubric.exercises[0].variables) if _key(v.of) == _key(of))


def _forward_pass_alone(forward: dict[str, str]) -> bool:
    """Whether the lecture's forward pass is there, its loss and the tensors of every layer (a notebook with no
    answers yet is still the lecture's)."""
    return all(w in forward for w in (*LEAVES, "hprebn", "bnraw", "hpreact", "h", "logits", "probs", "loss"))


def _trains(cell: _Cell, parameters: set[str]) -> bool:
    """Whether the cell has a loop that updates the parameters (a training loop: `p.data += -lr * grad`,
    `W1 -= lr * dW1`, `p.data.add_(...)`, `optimizer.step()`); a loop that builds the data set updates none."""
    for loop in ast.walk(cell.tree) if cell.tree else ():
        if not isinstance(loop, (ast.For, ast.While)):
            continue
        # names that stand for a parameter inside the loop: the lecture's, and loop variables over `parameters`
        params = set(parameters)
        for inner in [loop, *_walk(loop)]:
            if isinstance(inner, ast.For) and any(isinstance(n, ast.Name) and n.id in parameters
                                                  for n in ast.walk(inner.iter)):
                params |= {n.id for n in ast.walk(inner.target) if isinstance(n, ast.Name)}
        for node in _walk(loop):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "step" \
                    and not node.args:
                return True  # an optimizer's
            target = node.target if isinstance(node, ast.AugAssign) else \
                node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("add_", "sub_", "copy_") else None
            if isinstance(node, ast.Assign):
                target = next((t for t in node.targets if isinstance(t, ast.Attribute) and t.attr == "data"), None)
                # `W1 = W1 - lr * dW1`: a parameter computed from itself
                if target is None and any(isinstance(t, ast.Name) and t.id in params and any(
                        isinstance(n, ast.Name) and n.id == t.id for n in ast.walk(node.value)) for t in node.targets):
                    return True
            while isinstance(target, (ast.Attribute, ast.Subscript)):
                if isinstance(target, ast.Attribute) and target.attr == "data":
                    return True
                target = target.value
            if isinstance(target, ast.Name) and target.id in params:
                return True
    return False


def _cell_range(indices: tuple[int, ...]) -> str:
    first, last = indices[0] + 1, indices[-1] + 1
    return f"cell {first}" if first == last else f"cells {first}-{last}"


def _forward_names(cells: list[_Cell], wanted: list[str], before: int) -> dict[str, str]:
    """The lecture's name -> the notebook's, for the tensors assigned before Exercise 1 (the last assignment wins,
    a name spelled exactly as in the lecture first)."""
    assigned: list[str] = []
    for c in cells:
        if c.index < before and c.tree is not None:
            assigned += [n for s in c.tree.body for n in _stored(s)]
    named = set(assigned)
    out = {}
    for w in wanted:
        if w in named:
            out[w] = w
            continue
        candidates = [n for n in assigned if _key(n) == _key(w)]
        if candidates:
            out[w] = candidates[-1]
    return out


def _style(stores: dict[int, list[str]], calls: dict[int, list[_Call]]) -> str:
    names = [n for ns in stores.values() for n in ns] + [k.gradient for ks in calls.values() for k in ks]
    underscored = sum(n.startswith("d_") for n in names)
    plain = sum(n.startswith("d") and not n.startswith("d_") for n in names)
    return "d_" if underscored > plain else "d"


def _gradient(exercise: str, of: str, section: Section | None, calls: dict[int, list[_Call]],
              stores: dict[int, list[str]], forward: dict[str, str], style: str) -> Gradient:
    guess = style + forward.get(of, of)
    if section is None:
        return Gradient(exercise, of, guess, "")
    checked = [k for i in section.cells for k in calls[i] if _key(k.tensor) == _key(of)]
    if checked:
        return Gradient(exercise, of, checked[-1].gradient, "cmp")
    named = [n for i in section.cells for n in stores[i] if _gradient_key(n) == _key(of)]
    if named:
        return Gradient(exercise, of, named[-1], "name")
    return Gradient(exercise, of, guess, "")


def rubric_for(rec: Recognised) -> rubrics.Rubric:
    """The lecture rubric with the notebook's own gradient names, so that messages name its variables."""
    rubric = rubrics.load(rubrics.LECTURE)
    names = {(g.exercise, g.of): g.name for g in rec.gradients}
    exercises = tuple(
        dataclasses.replace(ex, variables=tuple(dataclasses.replace(v, name=names[(ex.id, v.of)]) for v in ex.variables))
        for ex in rubric.exercises)
    return dataclasses.replace(rubric, exercises=exercises)


# --- planning the run ----------------------------------------------------------------------------

STAND_IN_SOURCE = f'''\
class _GraderStandIn:
    """Stands in for a module that is not installed where the grader runs: every attribute is itself,
    and a call returns its first argument (`tqdm(range(n))`, `ic(x)`, `drive.mount(path)`)."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return args[0] if args else None


{STAND_IN} = _GraderStandIn()
'''


def _missing(module: str) -> bool:
    """Whether `module` cannot be imported here (without importing anything: only top-level names are looked up)."""
    if module == "google.colab" or module.startswith("google.colab."):
        return True  # Colab's own package
    top = module.split(".")[0]
    try:
        return not top or importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        return True


@dataclass(frozen=True)
class _Span:
    """Where in a cell's text an edit goes (lines from 1, columns in UTF-8 bytes, as `ast` counts them)."""

    lineno: int
    col_offset: int
    end_lineno: int
    end_col_offset: int


def _edit(text: str, edits: list[tuple[ast.AST | _Span, str]]) -> str:
    """`text` with each span replaced (the line count kept, so line numbers in errors stay right).
    Spans inside another edited span are dropped: the outer edit wins."""
    lines = text.split("\n")
    replacement: dict[tuple[int, int, int, int], str] = {}
    for node, new in edits:  # (the first edit of a span wins)
        replacement.setdefault((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset), new)
    done: list[tuple[tuple[int, int], tuple[int, int]]] = []
    furthest = (0, 0)
    # In order of their beginnings, longest first, every kept span begins before this one: this one lies inside one of
    # them exactly when it ends no later than the furthest end so far (linear: a cell can hold many thousands of edits).
    for first, col, last, end_col in sorted(replacement, key=lambda k: (k[0], k[1], -k[2], -k[3])):
        begin, end = (first, col), (last, end_col)
        if done and end <= furthest:
            continue
        done.append((begin, end))
        furthest = max(furthest, end)
    for (first, col), (last, end_col) in sorted(done, reverse=True):
        new = replacement[(first, col, last, end_col)]
        head = lines[first - 1].encode()[:col].decode(errors="replace")
        tail = lines[last - 1].encode()[end_col:].decode(errors="replace")
        lines[first - 1 : last] = [head + new + tail] + [""] * (last - first)
    return "\n".join(lines)


def _opened_for_reading(call: ast.Call) -> bool:
    """`open(path)` or `open(path, "r")`: not a file the notebook writes."""
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return mode is None or (isinstance(mode, ast.Constant) and isinstance(mode.value, str) and
                            not set(mode.value) & set("wax+"))


def _rewrite(cell: _Cell, role: str, checkers: set[str], keys: set[str]) -> tuple[str, list[str], bool, str]:
    """What the run executes for `cell` (role `before` Exercise 1, or `exercise`), what changed, whether the
    stand-in is needed, and the lines of the notebook's own checks left out (`lines 3-5`, for one note on all cells)."""
    notes = [f"{cell.label}: `{s[:60]}` was not run (no shell or network while grading)" for s in cell.shell]
    if cell.tree is None:
        return cell.source, notes, False, ""
    edits: list[tuple[ast.AST | _Span, str]] = []
    stand_in = False
    stripped = [s for s in cell.tree.body if (_is_autograd(s) if role == "before" else _is_check(s, checkers, keys))]
    # a check call leaves the run, but the gradient it checked is recorded as it was then (a later change in place,
    # through another name that is the same tensor, does not reach the copy): the grader grades what was checked
    snapshots = {id(s): names for s, names in _snapshots(cell, checkers, keys)} if role == "exercise" else {}
    for s in stripped:
        edits.append((s, "; ".join(f"{name} = {COPY}(lambda: {call.gradient})" for call, name in snapshots.get(id(s), []))
                      or "pass"))
    lines = "" if not stripped else f"line {stripped[0].lineno}" if len(stripped) == 1 else \
        f"lines {stripped[0].lineno}-{stripped[-1].end_lineno}"
    if stripped and role == "before":
        notes.append(f"{cell.label}: {lines} not run: PyTorch's own backward pass (the grader asks autograd itself, "
                     "from your tensors)")
    skipped = {id(n) for s in stripped for n in ast.walk(s)}
    for node in ast.walk(cell.tree):
        if id(node) in skipped:
            continue
        shell = _shell_call(node)
        if shell is not None:
            edits.append((node, "None"))
            notes.append(f"{cell.label}: `{shell[:60]}` was not run (no shell or network while grading; the data "
                         "set comes from --data)")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if isinstance(node, ast.ImportFrom):
                gone = (node.level > 0 or _missing(module or "")) and module != "__future__"
                names = [a.asname or a.name for a in node.names if a.name != "*"]
                shown = f"from {'.' * node.level}{module or ''} import ..."
            else:
                gone = any(_missing(a.name) for a in node.names)
                names = [a.asname or a.name.split(".")[0] for a in node.names]
                shown = "import " + ", ".join(a.name for a in node.names)
            if gone and names:
                edits.append((node, " = ".join(names) + f" = {STAND_IN}"))
                stand_in = True
                notes.append(f"{cell.label}: `{shown}`: not installed here; {', '.join(names)} stand"
                             f"{'s' if len(names) == 1 else ''} in as a no-op")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "cuda" \
                and not node.args:
            f = node.func  # just the name: `x.cuda()` -> `x.cpu()`, whatever `x` is
            edits.append((_Span(f.end_lineno, f.end_col_offset - 4, f.end_lineno, f.end_col_offset), "cpu"))
            notes.append(f"{cell.label}: `.cuda()` ran as `.cpu()` (no GPU while grading)")
        elif role == "before" and isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and _is_data_path(node.value):
            edits.append((node, repr("names.txt")))
            notes.append(f"{cell.label}: reads {node.value!r}: it read the data set given with --data instead")
        elif role == "before" and isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "open" and node.args and _opened_for_reading(node):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.endswith(".txt") \
                    and not _is_data_path(arg.value) and arg.value.removeprefix("./") not in DATA_FILES:
                edits.append((arg, repr("names.txt")))
                notes.append(f"{cell.label}: reads {arg.value!r}: it read the data set given with --data instead")
    return _edit(cell.source, edits), notes, stand_in, lines if role == "exercise" else ""


def _is_data_path(value: str) -> bool:
    """A path of the names data set other than the ones the run provides (`/content/names.txt`, `C:\\...`)."""
    return "\n" not in value and value.lower().endswith("names.txt") and value.removeprefix("./") not in DATA_FILES


def plan(nb: nbformat.NotebookNode, rec: Recognised, rubric: rubrics.Rubric) -> Plan:
    """The run of a lecture notebook: its cells up to Exercise 3, all with autograd refused (the forward
    pass without PyTorch's backward pass, the exercises without their check calls)."""
    cells = _read(nb)
    checkers = _checkers(cells)
    keys = {_key(ours) for ours, _ in rec.forward} | {_key(g.of) for g in rec.gradients}
    first = rec.sections[0].cells[0] if rec.sections else len(nb.cells)
    section_of = {i: s.exercise for s in rec.sections for i in range(s.cells[0], s.cells[-1] + 1)}
    planned: list[PlannedCell] = []
    positions: dict[int, int] = {}
    notes: list[str] = list(rec.notes)
    needs_stand_in = False
    checked_lines: list[tuple[_Cell, str]] = []
    for c in cells:
        if c.index > rec.last:
            continue
        role = "before" if c.index < first else "exercise"
        source, changed, stand_in, checked = _rewrite(c, role, checkers, keys)
        notes += changed
        if checked:
            checked_lines.append((c, checked))
        needs_stand_in |= stand_in
        positions[c.index] = len(planned)
        if role == "before":  # autograd refused here too: no gradient can be taken early and kept for later
            planned.append(PlannedCell(c.label, source, no_grad=True, guarded=True))
        else:
            exercise = section_of.get(c.index) or _section_before(rec, c.index)
            planned.append(PlannedCell(f"{c.label} ({exercise})", source, no_grad=False, guarded=True, grade_id=exercise))
    if checked_lines:  # one note for all cells (one gradient per cell: dozens of them)
        where = f"{checked_lines[0][0].label}, {checked_lines[0][1]}" if len(checked_lines) == 1 else \
            "cells " + _numbers([c.number for c, _ in checked_lines])
        notes.append(f"your checks against autograd's gradients ({where}) were not run: the grader compares every "
                     "gradient itself, as each check saw it")
    skipped = [c for c in cells if c.index > rec.last]
    if skipped and not rec.sections:
        notes.append("nothing was run: there is no answer to grade yet")
    elif skipped:
        loops = [(c, c.source.splitlines()[n.lineno - 1].strip()) for c in skipped if c.tree
                 for n in ast.walk(c.tree) if isinstance(n, (ast.For, ast.While))]
        # the training loop: the one over `max_steps` or a large literal, if there is one (read in the loop's
        # first 200 characters: the pattern takes time quadratic in a line's length)
        loops.sort(key=lambda cl: not re.search(r"range\(.*(steps|\d{4,})", cl[1][:200]))
        what = f", among them the loop `{loops[0][1][:60]}` in {loops[0][0].label}" if loops else ""
        notes.append(f"{_cell_range((skipped[0].index, skipped[-1].index))} not run{what}: lecture notebooks are "
                     "graded on Exercises 1-3")
    if needs_stand_in:
        planned.insert(0, PlannedCell("the grader's stand-in for missing modules", STAND_IN_SOURCE, no_grad=False,
                                      guarded=False))
        positions = {i: p + 1 for i, p in positions.items()}
    recorded = checks(nb, rec)
    copies = any(names for c in cells if first <= c.index <= rec.last for _, names in _snapshots(c, checkers, keys))
    if copies:  # (guarded like the notebook's cells: it only defines the function its check statements call)
        planned.insert(0, PlannedCell("the grader's record of your checks", COPY_SOURCE, no_grad=False, guarded=True))
        positions = {i: p + 1 for i, p in positions.items()}

    forward_names = tuple(dict.fromkeys(theirs for _, theirs in rec.forward))
    starts = sorted(positions[s.cells[0]] for s in rec.sections)
    captures = [Capture(FORWARD, forward_names, starts[0] if starts else len(planned), starts[0] if starts else len(planned))]
    unfound = []
    for ex in rubric.exercises:
        section = next((s for s in rec.sections if s.exercise == ex.id), None)
        if section is None:
            unfound.append((ex.id, "", f"no cells for Exercise {ex.id[2:]} were found (no `# Exercise {ex.id[2:]}` "
                                       "comment, and no cell computing its gradient after Exercise 1)"))
            continue
        start = positions[section.cells[0]]
        later = [p for p in starts if p > start]
        snapshots = tuple(k.snapshot for k in recorded if k.exercise == ex.id)
        captures.append(Capture(ex.id, tuple(v.name for v in ex.variables) + snapshots, start,
                                later[0] if later else len(planned)))
        for g in rec.gradients:
            if g.exercise == ex.id and not g.how:
                unfound.append((ex.id, g.name, f"not found in Exercise {ex.id[2:]} (no check call names {g.of}; "
                                               f"no d{g.of} or d_{g.of} is assigned)"))
    return Plan(tuple(planned), tuple(captures), tuple(notes), tuple(unfound))


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
    cells = _read(nb)
    checkers = _checkers(cells)
    keys = {_key(ours) for ours, _ in rec.forward} | {_key(g.of) for g in rec.gradients}
    section_of = {i: s.exercise for s in rec.sections for i in range(s.cells[0], s.cells[-1] + 1)}
    found: dict[tuple[str, str], Check] = {}
    for c in cells:
        exercise = section_of.get(c.index)
        if exercise is None:
            continue
        for _, names in _snapshots(c, checkers, keys):
            for call, snapshot in names:
                gradient = next((g for g in rec.gradients if g.exercise == exercise and g.name == call.gradient
                                 and _key(g.of) == _key(call.tensor)), None)
                if gradient is not None:
                    found[(exercise, gradient.name)] = Check(exercise, gradient.name, snapshot, c.label, "")
    aliases = _aliases([c for c in cells if c.index in section_of])
    return tuple(dataclasses.replace(k, alias=aliases.get(k.name, "")) for k in found.values())


def _aliases(cells: list[_Cell]) -> dict[str, str]:
    """Name -> `other = name` for each `other = name` (one tensor, two names) after which `other` is changed in place
    (`other += ...`, `other[i] = ...`, `other.add_(...)`)."""
    out: dict[str, str] = {}
    bound: dict[str, str] = {}  # other -> name, for the plain `other = name` seen so far
    for c in cells:
        for stmt in c.tree.body if c.tree else []:
            for node in [stmt, *_walk(stmt)]:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                        and isinstance(node.value, ast.Name):
                    bound[node.targets[0].id] = node.value.id
                    continue
                if isinstance(node, ast.Assign):  # rebound: no longer the same tensor as before
                    for name in [t.id for t in node.targets if isinstance(t, ast.Name)]:
                        bound.pop(name, None)
                target = node.target if isinstance(node, ast.AugAssign) else None
                if isinstance(node, ast.Assign):
                    target = next((t for t in node.targets if isinstance(t, ast.Subscript)), None)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.endswith("_") \
                        and not node.func.attr.startswith("_"):
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
_SAVED_PART = re.compile(r"\s*(?P<name>exact|approx\w*)\s*(?::\s*)?(?:tensor\()?(?P<value>True|False)\b\)?", re.IGNORECASE)


def _printouts(text: str) -> Iterator[tuple[str, bool]]:
    """(label, approximate) of each line of `text` as the lecture's cmp prints it:
    `logprobs        | exact: True  | approximate: True  | maxdiff: 0.0`."""
    for line in text.splitlines():
        parts = line.split("|", 3)
        if len(parts) < 3:
            continue
        exact, approx = _SAVED_PART.match(parts[1]), _SAVED_PART.match(parts[2])
        if exact and exact["name"].lower() == "exact" and not parts[1][exact.end():].strip() \
                and approx and approx["name"].lower().startswith("approx"):
            yield parts[0].strip(), approx["value"].lower() == "true"


def saved_checks(nb: nbformat.NotebookNode, rec: Recognised, graded: dict[tuple[str, str], bool]) -> tuple[SavedCheck, ...]:
    """The last saved `cmp` printout of each graded variable, beside the grader's `approximate` for it.

    A printout is matched to a variable through the check call in the cell's source whose label it
    prints (labels have typos; the tensor passed to the call says which variable it is).
    """
    cells = {c.index: c for c in _read(nb)}
    checkers = _checkers(list(cells.values()))
    tensors = {_key(ours) for ours, _ in rec.forward}
    names = {(g.exercise, _key(g.of)): g.name for g in rec.gradients}
    found: dict[tuple[str, str], bool] = {}
    for section in rec.sections:
        for i in section.cells:
            by_label = {k.label.strip(): _key(k.tensor) for k in _calls(cells[i], checkers, tensors) if k.label}
            text = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                           for o in nb.cells[i].get("outputs", []) if o.get("output_type") == "stream")
            for label, approximate in _printouts(text):
                tensor = by_label.get(label)
                name = names.get((section.exercise, tensor)) if tensor else None
                if name is not None:
                    found[(section.exercise, name)] = approximate
    return tuple(SavedCheck(ex, name, saved, graded[(ex, name)]) for (ex, name), saved in found.items()
                 if (ex, name) in graded)


def saved_note(nb: nbformat.NotebookNode, checks: tuple[SavedCheck, ...]) -> str:
    """One line on how the saved printouts compare with the grader's verdicts."""
    if not checks:
        return ""
    disagree = [c for c in checks if not c.agrees]
    counts = [c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
    stale = " (the saved outputs come from cells run out of order: some may be older than the code)" \
        if counts != sorted(counts) else ""
    if not disagree:
        return f"your saved cmp printouts agree with the grader on all {len(checks)} checks they show"
    shown = ", ".join(f"{c.variable} (saved approximate: {c.saved_approximate}, graded: {c.graded_approximate})"
                      for c in disagree)
    return (f"your saved cmp printouts disagree with the grader on {len(disagree)} of {len(checks)} checks: {shown}; "
            f"was the cell edited after it ran?{stale}")


# --- the reference's input -----------------------------------------------------------------------


def leaves(tensors: dict[str, object]) -> bytes:
    """The parameters and minibatch as the lecture reference reads them (its `leaves` parameter):
    safetensors bytes, so that the same tensors give the same parameter (and the reference's caches hit)."""
    from safetensors.torch import save

    return save({k: t.detach().contiguous() for k, t in tensors.items()})


def example_leaves(n_hidden: int = 64, batch: int = 32) -> dict[str, object]:
    """Parameters and a minibatch of the lecture's shapes (for the warm-up and the picture of the graph)."""
    import torch

    g = torch.Generator().manual_seed(1)
    return {
        "C": torch.randn((27, 10), generator=g), "W1": torch.randn((30, n_hidden), generator=g) * 0.3,
        "b1": torch.randn(n_hidden, generator=g) * 0.1, "W2": torch.randn((n_hidden, 27), generator=g) * 0.1,
        "b2": torch.randn(27, generator=g) * 0.1, "bngain": torch.randn((1, n_hidden), generator=g) * 0.1 + 1,
        "bnbias": torch.randn((1, n_hidden), generator=g) * 0.1,
        "Xb": torch.randint(0, 27, (batch, 3), generator=g), "Yb": torch.randint(0, 27, (batch,), generator=g),
    }


def warm_up_source() -> str:
    """What the worker runs once before forking runs: the lecture's forward pass on example tensors."""
    from grader import notebook
    from grader.notebook import grade_id

    released = notebook.read(rubrics.load(rubrics.LECTURE).released)
    forward = next(c.source for c in released.cells if grade_id(c) == "forward")
    tensors = "\n".join(f"{k} = _t[{k!r}]" for k in LEAVES)
    return ("from grader.lecture import example_leaves\n_t = example_leaves()\n" + tensors +
            "\nn = Xb.shape[0]\nimport torch\nimport torch.nn.functional as F\n" + forward +
            "\nF.cross_entropy(logits, Yb); F.softmax(logits, 1); F.one_hot(Yb, 27)\n")
