"""Rewriting one cell of a lecture notebook for the run: safe and quick to run here, its lines where they were.

Guarantees, for each cell the run executes:

* no shell, no network, no GPU: shell escapes (`!wget`, `%pip`) become `None`, shell cells `pass`, `.cuda()`
  `.cpu()`; a module not installed here is a no-op stand-in (`tqdm`, `google.colab`);
* the data set is the one given with --data, under the names in `DATA_FILES`, wherever the notebook read it from;
* before Exercise 1, PyTorch's own backward pass is left out; in an exercise, the notebook's own checks are,
  each replaced by a copy of the gradients it checked (`own_checks`);
* an edit keeps the cell's line count, so the line numbers in errors are the notebook's own;
* every change is named in a note for the report.

Pure functions of the cell: nothing here runs its code (a module is looked up, never imported).
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass

from grader.lecture.cells import GRAD_ATTRIBUTES, Cell, walk
from grader.lecture.own_checks import check_statements, is_check

DATA_FILES = ("names.txt", "data/names.txt")
"""Where the run finds the data set (both hold the file given with --data)."""
STAND_IN = "_grader_stand_in"
COPY = "_grader_copy"
# (`import torch` inside the function: in the notebook's namespace, `torch` may be unbound (`import torch as t`)
# or something else; and this cell runs before the notebook's)
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
SHELL_LINE_MAGICS = frozenset(
    {"pip", "conda", "mamba", "cd", "sx", "system", "run", "load", "env", "bookmark", "sh", "bash", "writefile"}
)

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


def _shell_call(node: ast.AST) -> str | None:
    """For a call IPython made of a shell escape (`!cmd`, `x = !cmd`, `%pip ...`): the escape as written."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "get_ipython"
    ):
        return None
    args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if node.func.attr in ("system", "getoutput") and args:
        return "!" + args[0]
    if node.func.attr == "run_line_magic" and args and args[0] in SHELL_LINE_MAGICS:
        return f"%{args[0]} {args[1] if len(args) > 1 else ''}".strip()
    return None


def _is_autograd(stmt: ast.stmt) -> bool:
    """A statement of PyTorch's own backward pass (`loss.backward()`, `t.retain_grad()`, `p.grad = None`)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
        return False
    return any(isinstance(n, ast.Attribute) and n.attr in GRAD_ATTRIBUTES for n in [stmt, *walk(stmt)])


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


def _span(node: ast.AST | _Span) -> _Span:
    """Where `node` is in its cell's text."""
    if isinstance(node, _Span):
        return node
    # every edit is of a statement or an expression that `ast.parse` made, which gives each its end too
    assert isinstance(node, (ast.stmt, ast.expr)) and node.end_lineno is not None and node.end_col_offset is not None
    return _Span(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)


def _edit(text: str, edits: list[tuple[ast.AST | _Span, str]]) -> str:
    """`text` with each span replaced (the line count kept, so line numbers in errors stay right).
    Spans inside another edited span are dropped: the outer edit wins."""
    lines = text.split("\n")
    replacement: dict[tuple[int, int, int, int], str] = {}
    for node, new in edits:  # (the first edit of a span wins)
        span = _span(node)
        replacement.setdefault((span.lineno, span.col_offset, span.end_lineno, span.end_col_offset), new)
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
    return mode is None or (
        isinstance(mode, ast.Constant) and isinstance(mode.value, str) and not set(mode.value) & set("wax+")
    )


def rewrite_cell(cell: Cell, role: str, checkers: set[str], keys: set[str]) -> tuple[str, list[str], bool, str]:
    """What the run executes for `cell` (role `before` Exercise 1, or `exercise`), what changed, whether the
    stand-in is needed, and the lines of the notebook's own checks left out (`lines 3-5`, for one note on all cells)."""
    notes = [f"{cell.label}: `{s[:60]}` was not run (no shell or network while grading)" for s in cell.shell]
    if cell.tree is None:
        return cell.source, notes, False, ""
    stripped = [s for s in cell.tree.body if (_is_autograd(s) if role == "before" else is_check(s, checkers, keys))]
    edits = _left_out(cell, role, stripped, checkers, keys)
    lines = _lines(stripped)
    if stripped and role == "before":
        notes.append(
            f"{cell.label}: {lines} not run: PyTorch's own backward pass (the grader asks autograd itself, "
            "from your tensors)"
        )
    skipped = {id(n) for s in stripped for n in ast.walk(s)}
    stand_in = False
    for node in ast.walk(cell.tree):
        edit = None if id(node) in skipped else _node_edit(node, role)
        if edit is not None:
            edits.append((edit.where, edit.new))
            notes.append(f"{cell.label}: {edit.note}")
            stand_in |= edit.stand_in
    return _edit(cell.source, edits), notes, stand_in, lines if role == "exercise" else ""


def _left_out(
    cell: Cell, role: str, stripped: list[ast.stmt], checkers: set[str], keys: set[str]
) -> list[tuple[ast.AST | _Span, str]]:
    """The edits that leave the `stripped` statements out: each becomes `pass`, or in an exercise the copies of the
    gradients its check calls named."""
    # a check call leaves the run, but the gradient it checked is recorded as it was then (a later change in place,
    # through another name that is the same tensor, does not reach the copy): the grader grades what was checked
    snapshots = {id(s): names for s, names in check_statements(cell, checkers, keys)} if role == "exercise" else {}
    return [
        (s, "; ".join(f"{name} = {COPY}(lambda: {call.gradient})" for call, name in snapshots.get(id(s), [])) or "pass")
        for s in stripped
    ]


def _lines(stripped: list[ast.stmt]) -> str:
    """`line 3` or `lines 3-5`: where the statements are in their cell (empty for none)."""
    if not stripped:
        return ""
    if len(stripped) == 1:
        return f"line {stripped[0].lineno}"
    return f"lines {stripped[0].lineno}-{stripped[-1].end_lineno}"


@dataclass(frozen=True)
class _NodeEdit:
    """The edit of one node of a cell."""

    where: ast.AST | _Span
    """What it replaces."""
    new: str
    """The text put there."""
    note: str
    """What it did, for the report (after the cell's label)."""
    stand_in: bool = False
    """Whether the new text needs the stand-in for missing modules."""


def _node_edit(node: ast.AST, role: str) -> _NodeEdit | None:
    """The edit of one node that is not left out, if it needs one: a shell escape, an import of a missing module, a
    `.cuda()`; before Exercise 1, the data set read from a path of its own."""
    edit = _shell_edit(node) or _import_edit(node) or _cuda_edit(node)
    if edit is None and role == "before":
        edit = _data_path_edit(node) or _opened_data_edit(node)
    return edit


def _shell_edit(node: ast.AST) -> _NodeEdit | None:
    """A shell escape (`!wget ...`, `%pip install ...`): `None`, not run."""
    shell = _shell_call(node)
    if shell is None:
        return None
    return _NodeEdit(
        node, "None", f"`{shell[:60]}` was not run (no shell or network while grading; the data set comes from --data)"
    )


def _import_edit(node: ast.AST) -> _NodeEdit | None:
    """An import of a module not installed here: its names stand in as the no-op `STAND_IN`."""
    if isinstance(node, ast.ImportFrom):
        module = node.module
        gone = (node.level > 0 or _missing(module or "")) and module != "__future__"
        names = [a.asname or a.name for a in node.names if a.name != "*"]
        shown = f"from {'.' * node.level}{module or ''} import ..."
    elif isinstance(node, ast.Import):
        gone = any(_missing(a.name) for a in node.names)
        names = [a.asname or a.name.split(".")[0] for a in node.names]
        shown = "import " + ", ".join(a.name for a in node.names)
    else:
        return None
    if not (gone and names):
        return None
    note = f"`{shown}`: not installed here; {', '.join(names)} stand{'s' if len(names) == 1 else ''} in as a no-op"
    return _NodeEdit(node, " = ".join(names) + f" = {STAND_IN}", note, stand_in=True)


def _cuda_edit(node: ast.AST) -> _NodeEdit | None:
    """`x.cuda()`: `x.cpu()`."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "cuda"
        and not node.args
    ):
        return None
    f = _span(node.func)  # just the name: `x.cuda()` -> `x.cpu()`, whatever `x` is
    where = _Span(f.end_lineno, f.end_col_offset - 4, f.end_lineno, f.end_col_offset)
    return _NodeEdit(where, "cpu", "`.cuda()` ran as `.cpu()` (no GPU while grading)")


def _data_path_edit(node: ast.AST) -> _NodeEdit | None:
    """A string that is a path of the data set other than the run's (`'/content/names.txt'`)."""
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and _is_data_path(node.value)):
        return None
    return _NodeEdit(node, repr("names.txt"), f"reads {node.value!r}: it read the data set given with --data instead")


def _opened_data_edit(node: ast.AST) -> _NodeEdit | None:
    """`open('words.txt')`: a text file read under another name is the data set."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "open"
        and node.args
        and _opened_for_reading(node)
    ):
        return None
    arg = node.args[0]
    if not (
        isinstance(arg, ast.Constant)
        and isinstance(arg.value, str)
        and arg.value.endswith(".txt")
        and not _is_data_path(arg.value)
        and arg.value.removeprefix("./") not in DATA_FILES
    ):
        return None
    return _NodeEdit(arg, repr("names.txt"), f"reads {arg.value!r}: it read the data set given with --data instead")


def _is_data_path(value: str) -> bool:
    """A path of the names data set other than the ones the run provides (`/content/names.txt`, `C:\\...`)."""
    return "\n" not in value and value.lower().endswith("names.txt") and value.removeprefix("./") not in DATA_FILES
