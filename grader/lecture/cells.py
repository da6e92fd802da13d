"""Reading a lecture notebook's cells, and the syntax-tree helpers every stage of `grader.lecture` shares.

Guarantees:

* each code cell is parsed once per notebook (the stages ask again and get the same cells): shell cells
  (`%%bash`) read as `pass`, `%%time`/`%%capture` cells as their body, IPython's magics translated to Python;
  a cell that does not parse has no tree: the stages read nothing from it (and the run shows its error);
* a cell knows the exercise its `# Exercise N` comment, or the markdown heading above it, gives it;
* `walk` goes in source order without recursion (code can nest deeper than the stack) and never into
  function or class bodies (what a cell defines is not what it runs).

Pure functions of the notebook: nothing here runs its code. The public names are what the other modules of
`grader.lecture` read cells with, not the package's interface (its `__init__` lists that); the names with an
underscore are this module's alone.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import nbformat

from grader.scan import as_python, python_body

GRAD_ATTRIBUTES = frozenset({"backward", "retain_grad", "grad", "autograd"})
"""Attributes through which code reaches autograd (`t.grad`, `loss.backward()`, `torch.autograd`): a statement that
names one is left out of the run where autograd is not the notebook's to use (`rewrite`, `own_checks`)."""
# (`[ \t]`, not `\s`, before the word: `\s` also takes line breaks, and every line start of a long run of blank
# lines would then scan to its end: minutes for a cell of them)
MARKER = re.compile(r"^[ \t#*>]*exercise\s*([1-4])\b", re.IGNORECASE | re.MULTILINE)
SHELL_CELL_MAGICS = frozenset({"bash", "sh", "shell", "script", "system", "writefile", "html", "javascript", "js"})


@dataclass
class Cell:
    """One code cell as every stage reads it (`read`): parsed once, and shared, so never changed."""

    index: int
    """Its index in `nb.cells`."""
    number: int
    """Its 1-based position among all cells, as messages name them."""
    source: str
    """Its text with shell escapes neutralised and magics translated: plain Python."""
    tree: ast.Module | None
    """`source` parsed; None where it does not parse (the stages then read nothing from it)."""
    shell: tuple[str, ...]
    """The first line of a shell cell magic that replaced the whole cell (`%%bash`), if any."""
    marker: int | None
    """N of the `# Exercise N` comment in it, or of the markdown heading above it; else None."""

    @property
    def label(self) -> str:
        """The cell as messages name it: `cell 12`."""
        return f"cell {self.number}"


def name_key(name: str) -> str:
    """Names compared loosely, underscores and case ignored: `bn_var_inv` is the lecture's `bnvar_inv`."""
    return name.replace("_", "").lower()


def gradient_key(name: str) -> str | None:
    """The `name_key` of the tensor a gradient's name is of: `dbn_gain` and `d_bngain` -> `bngain`; None for a name
    that does not start with d."""
    if name.startswith("d_") and len(name) > 2:
        return name_key(name[2:])
    if name.startswith("d") and len(name) > 1:
        return name_key(name[1:])
    return None


def _neutralised(source: str) -> tuple[str, tuple[str, ...]]:
    """A shell cell (`%%bash`) as `pass`, and a `%%time`/`%%capture` cell as its plain body; the shell cell's
    first line, if it was one. (Line shell escapes, `!wget` and `%pip`, are found in the syntax tree.)"""
    lines = source.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if first.startswith("%%") and first[2:].split(" ")[0] in SHELL_CELL_MAGICS:
        return "pass\n", (first,)
    return python_body(source), ()


def read(nb: nbformat.NotebookNode) -> list[Cell]:
    """The notebook's code cells, in order, as the stages here read them (recognise, plan and saved_checks): each
    parsed once per notebook, the same `Cell` objects each time, never to be changed."""
    return list(
        _read_cells(
            tuple((c.cell_type, c.source if isinstance(c.source, str) else "".join(c.source)) for c in nb.cells)
        )
    )


@functools.lru_cache(maxsize=16)
def _read_cells(cells_in: tuple[tuple[str, str], ...]) -> tuple[Cell, ...]:
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
        translated, tree = as_python(plain)
        marker = _comment_marker(text) or pending_marker
        pending_marker = None
        cells.append(Cell(index, index + 1, translated, tree, shell, marker))
    return tuple(cells)  # (shared by the callers of read: never changed)


def _comment_marker(text: str) -> int | None:
    """N, for the first comment line of a code cell that starts `# Exercise N`."""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            found = MARKER.match(line)
            if found:
                return int(found.group(1))
    return None


def walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below `node`, in source order, not descending into function and class bodies."""
    todo = list(
        reversed(list(ast.iter_child_nodes(node)))
    )  # (a list, not recursion: code can nest deeper than the stack)
    while todo:
        child = todo.pop()
        yield child
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            todo += reversed(list(ast.iter_child_nodes(child)))


def stored(node: ast.AST) -> list[str]:
    """Names `node` assigns (loop variables aside), outside function bodies."""
    loops = {
        id(n) for s in [node, *walk(node)] if isinstance(s, (ast.For, ast.comprehension)) for n in ast.walk(s.target)
    }
    return [
        n.id
        for n in [node, *walk(node)]
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and id(n) not in loops
    ]


@dataclass(frozen=True)
class CheckCall:
    """One check call, `cmp('probs', dprobs, probs)` (`check_calls`): its gradient and its tensor are plain names."""

    cell: int
    """The index in `nb.cells` of its cell."""
    label: str | None
    """Its first argument, where that is a string."""
    gradient: str
    """Its second argument's name: the notebook's gradient variable."""
    tensor: str
    """Its third argument's name: the notebook's tensor."""


def checkers_in(cells: list[Cell]) -> set[str]:
    """Functions the notebook defines to compare a gradient with autograd's (the lecture's `cmp`, renamed or not)."""
    out = set()
    for c in cells:
        for node in ast.walk(c.tree) if c.tree else ():
            # (`.grad` looked for below functions only: below every node, the walks add up to the square of a
            # cell's size)
            if isinstance(node, ast.FunctionDef) and len(node.args.args) >= 3 and _reads_grad(node):
                out.add(node.name)
            elif (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Lambda)
                and len(node.value.args.args) >= 3
                and _reads_grad(node)
            ):  # `cmp = lambda s, dt, t: ...`
                out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return out


def _reads_grad(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "grad" for n in ast.walk(node))


def check_calls(cell: Cell, checkers: set[str], tensors: set[str]) -> list[CheckCall]:
    """The check calls of a cell, in source order, outside function bodies: each call of one of `checkers`, and each
    call with a string label whose tensor's `name_key` is in `tensors` (`cmp('probs', dprobs, probs)`)."""
    return check_calls_in(cell.tree, cell.index, checkers, tensors) if cell.tree else []


def check_calls_in(tree: ast.AST, index: int, checkers: set[str], tensors: set[str]) -> list[CheckCall]:
    """The check calls below `tree` (of the cell at `index`), in source order."""
    out = []
    for node in walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 3):
            continue
        label, gradient, tensor = node.args[:3]
        if not (isinstance(gradient, ast.Name) and isinstance(tensor, ast.Name)):
            continue
        text = label.value if isinstance(label, ast.Constant) and isinstance(label.value, str) else None
        if node.func.id in checkers or (text is not None and name_key(tensor.id) in tensors):
            out.append(CheckCall(index, text, gradient.id, tensor.id))
    return out


def cell_range(indices: tuple[int, ...]) -> str:
    """`cell 12` or `cells 12-15`: the first and last of `indices` (in `nb.cells`, in order) as messages number them."""
    first, last = indices[0] + 1, indices[-1] + 1
    return f"cell {first}" if first == last else f"cells {first}-{last}"


_ALWAYS_THERE = frozenset(dir(__import__("builtins"))) | {"get_ipython", "display", "In", "Out", "exit", "quit"}
"""Names a cell can read without any cell assigning them (Python's builtins, IPython's own)."""


def first_unassigned(nb: nbformat.NotebookNode, index: int) -> tuple[str, int] | None:
    """(name, line) for the first name the notebook's cell at `index` reads that no line above it assigns: not any
    earlier cell (in any way: assignment, import, definition, loop), nor an earlier statement of its own. Generous on
    purpose: a name assigned anywhere above, even in a function, counts as assigned."""

    def defined(tree: ast.AST) -> set[str]:
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                names.update(node.names)
        return names

    cells = read(nb)
    cell = next((c for c in cells if c.index == index), None)
    if cell is None or cell.tree is None:
        return None
    known = set(_ALWAYS_THERE)
    for c in cells:
        if c.index < index and c.tree is not None:
            if any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for n in ast.walk(c.tree)):
                return None  # (a star import: what it defines is not in the text)
            known |= defined(c.tree)
    for statement in cell.tree.body:
        here = known | defined(statement)
        used = [n for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
        for name in sorted(used, key=lambda n: (n.lineno, n.col_offset)):
            if name.id not in here:
                return name.id, name.lineno
        known = here
    return None


def assigning_line(nb: nbformat.NotebookNode, name: str, before: int) -> tuple[int, int, str] | None:
    """(cell index, line, the line's text) of the last top-level statement above cell `before` that assigns
    `name`; None where none does."""
    for c in reversed([c for c in read(nb) if c.index < before and c.tree is not None]):
        assert c.tree is not None
        for statement in reversed(c.tree.body):
            if name in stored(statement):
                return c.index, statement.lineno, c.source.splitlines()[statement.lineno - 1].strip()
    return None
